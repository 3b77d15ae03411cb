"""What the suite needs installed: ``make test`` installs all of it, so a missing piece is a
broken install and fails the tests that need it, with the reason and the fix, never a skip."""

from __future__ import annotations

import importlib.util
import shutil

import pytest


def binary(name: str, install: str, found: str | None = None) -> str:
    """The path of the program ``name`` (or ``found``, a path the caller located itself)."""
    path = found or shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed; {install}", pytrace=False)
    return path


def module(name: str, install: str) -> None:
    """Fail unless the Python module ``name`` can be imported from this interpreter."""
    if importlib.util.find_spec(name) is None:
        pytest.fail(f"the Python module {name} is not installed; {install}", pytrace=False)
