"""Request ids: 32 hex digits, as ``uuid.uuid4().hex`` prints them, made without a syscall."""

from __future__ import annotations

from random import getrandbits


def new_request_id() -> str:
    """A fresh id for a request that came without one.

    ``uuid4`` reads the kernel's random source on every call (a ``getrandom`` syscall per
    request on the hot path); an id only has to be unique, not unguessable, so the random
    module's generator does (it is reseeded in every forked worker).
    """
    return f"{getrandbits(128):032x}"
