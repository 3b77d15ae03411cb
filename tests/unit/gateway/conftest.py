"""Fixtures for the gateway's unit tests: OpenAI's schema checker, loaded once."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.openai_schema import SchemaChecker, load_spec
from tests.support.openai_schema import checker as shared_checker


@pytest.fixture(scope="session")
def openai_spec() -> dict[str, Any]:
    return load_spec()


@pytest.fixture(scope="session")
def checker() -> SchemaChecker:
    return shared_checker()
