"""Fixtures for the sim unit tests: validate against OpenAI's schema components."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.support.openai_schema import checker


@pytest.fixture(scope="session")
def openai_validate() -> Callable[[str, Any], None]:
    """``validate(schema_name, instance)`` against components.schemas of OpenAI's spec."""
    return checker().check
