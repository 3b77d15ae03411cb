"""SSE frames and their ``data`` payloads (any line-ending style). Pure functions."""

from __future__ import annotations

from collections.abc import Iterator


def normalise(data: bytes) -> bytes:
    """``data`` with every line ending (``\\r\\n``, ``\\r``) as ``\\n``."""
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")


def frames(data: bytes) -> Iterator[tuple[bytes, str | None]]:
    """Each complete frame of ``data`` as (its bytes, ended by ``\\n\\n``; its data).

    The data is the frame's ``data:`` lines joined; None for a frame without one (a
    comment, a bare ``event:``), which a caller passes on as it came.
    """
    for frame in normalise(data).split(b"\n\n"):
        if not frame.strip():
            continue
        lines = [line[5:].removeprefix(b" ") for line in frame.split(b"\n")
                 if line.startswith(b"data:")]
        text = b"\n".join(lines).decode("utf-8", "replace") if lines else None
        yield frame + b"\n\n", text


def payloads(data: bytes) -> Iterator[str | None]:
    """The data of each frame of ``data`` (see :func:`frames`)."""
    for _frame, text in frames(data):
        yield text
