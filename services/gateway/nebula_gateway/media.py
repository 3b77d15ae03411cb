"""Which media URLs a client may hand an engine: pure, no IO.

A multimodal engine fetches the URL of an image (or video, audio, file) part
itself, from the GPU host: left open, any caller could make it reach metadata
addresses or internal services. ``data:`` URLs carry their bytes inline (bounded
by the body limit) and are always allowed; an ``http(s)`` URL only to a host of
``--media-allow``; every other scheme never. The default allows no remote fetch.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

MARKER = b'_url"'
"""In the raw body of every request that names a media URL (image_url, file_url, ...):
bodies without it skip the walk."""

_CHAT_PARTS = ("image_url", "video_url", "audio_url")
_RESPONSES_PARTS = {"input_image": "image_url", "input_file": "file_url"}


@dataclass(frozen=True)
class MediaPolicy:
    """Allowed ``(scheme, host)`` pairs; a host ``*.example.com`` takes subdomains, ``*`` any."""

    allow: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, text: str | None) -> MediaPolicy:
        """``--media-allow``: comma-separated ``[http://|https://]host`` (https when bare)."""
        allow: list[tuple[str, str]] = []
        for raw in (text or "").split(","):
            entry = raw.strip().lower().rstrip("/")
            if not entry:
                continue
            scheme, sep, host = entry.partition("://")
            if not sep:
                scheme, host = "https", entry
            if scheme not in ("http", "https") or not host or any(c in host for c in "/?#@ "):
                raise ValueError(f"{raw.strip()!r} is not [http://|https://]host")
            allow.append((scheme, host))
        return cls(tuple(allow))

    def allows_host(self, scheme: str, host: str) -> bool:
        for allowed_scheme, pattern in self.allow:
            if allowed_scheme != scheme:
                continue
            if pattern == "*" or host == pattern or (
                    pattern.startswith("*.") and host.endswith(pattern[1:])):
                return True
        return False

    def refusal(self, url: Any) -> str | None:
        """Why ``url`` may not go to an engine, or None."""
        if not isinstance(url, str):
            return " must be a string"
        if url[:5].lower() == "data:":
            return None
        try:
            parts = urlsplit(url.strip())
            host = (parts.hostname or "").lower()
        except ValueError:
            return " is not a URL"
        if parts.scheme not in ("http", "https"):
            return " must be a data: URL" + (" or an allowed http(s) URL" if self.allow else "")
        if parts.username is not None or parts.password is not None:
            return " must not carry credentials"
        if not self.allow:
            return (" must be a data: URL: this gateway lets engines fetch no remote media "
                    "(see --media-allow)")
        if not self.allows_host(parts.scheme, host):
            return f": host {host!r} is not allowed for {parts.scheme} media (see --media-allow)"
        return None


def media_urls(path: str, body: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """Every client-supplied media URL of a validated body, with its param."""
    if path == "/v1/chat/completions":
        for i, message in enumerate(body.get("messages") or ()):
            content = message.get("content") if isinstance(message, dict) else None
            for j, part in _parts(content):
                kind = part.get("type")
                if kind in _CHAT_PARTS:
                    value = part.get(kind)
                    if isinstance(value, dict):
                        yield f"messages[{i}].content[{j}].{kind}.url", value.get("url")
                    else:
                        yield f"messages[{i}].content[{j}].{kind}", value
    elif path == "/v1/responses":
        items = body.get("input")
        for i, item in enumerate(items if isinstance(items, list) else ()):
            if not isinstance(item, dict):
                continue
            for member in ("content", "output"):
                for j, part in _parts(item.get(member)):
                    field = _RESPONSES_PARTS.get(str(part.get("type")))
                    if field is not None and part.get(field) is not None:
                        yield f"input[{i}].{member}[{j}].{field}", part[field]


def _parts(content: Any) -> Iterator[tuple[int, dict[str, Any]]]:
    if isinstance(content, list):
        for j, part in enumerate(content):
            if isinstance(part, dict):
                yield j, part


def media_problem(path: str, body: dict[str, Any], policy: MediaPolicy
                  ) -> tuple[str, str] | None:
    """The first refused media URL as ``(param, message)``, or None."""
    for param, url in media_urls(path, body):
        problem = policy.refusal(url)
        if problem is not None:
            return param, param + problem
    return None
