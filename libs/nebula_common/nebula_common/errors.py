"""How an exception reads where a person sees it (a log line, a status field, /readyz).

Imports nothing of Nebula's, so the lowest modules (the etcd store) can use it.
"""

from __future__ import annotations


def error_text(exc: BaseException) -> str:
    """What an exception says; its type's name when it says nothing (a TimeoutError)."""
    return str(exc) or type(exc).__name__
