"""Markers of the deployment-bundle tests."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "slow: installs packages into a fresh virtualenv (about a minute or more)")
