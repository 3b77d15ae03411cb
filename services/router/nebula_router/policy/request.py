"""What a routing policy reads from a request: declared needs, and the keys read for them.

Every plugin declares its :class:`Need` flags; the pipeline unions them and the
proxy reads only those (parsing the prompt costs, so nobody pays for it unless a
plugin asked). Header names are constants here so the proxy's one pass over the
headers and the plugins agree on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Flag, auto
from typing import Any

SESSION_HEADER = b"x-session-id"
TENANT_HEADER = b"x-nebula-tenant"
"""The API key's name, set by the gateway (the tenant a request is billed to)."""
PRIORITY_HEADER = b"x-nebula-priority"
MODEL_UID_HEADER = b"x-nebula-model-uid"
"""The uid of the model the gateway authorised: the router routes on exactly that model."""


class Need(Flag):
    """Request facts a plugin uses; the proxy extracts the union of its pipeline's."""

    NONE = 0
    PREFIX = auto()
    """The leading prompt text (parsed from the body)."""
    SESSION = auto()
    """The ``x-session-id`` header."""
    SESSION_USER = auto()
    """The body's ``user`` as the session key when there is no ``x-session-id``."""
    TENANT = auto()
    """The ``x-nebula-tenant`` header."""
    PRIORITY = auto()
    """The ``x-nebula-priority`` header, as sent (the plugin that reads it gives it meaning)."""


def need_names(needs: Need) -> list[str]:
    """``Need.PREFIX | Need.SESSION`` -> ``["prefix", "session"]`` (for /debug/policy)."""
    return [n.name.lower() for n in Need if n in needs and n.name]


@dataclass(slots=True)
class RouteKeys:
    """What one request offers the policy (each None when absent or not needed)."""

    session: str | None = None
    prefix: str | None = None
    tenant: str | None = None
    priority: str | None = None


class KeyReader:
    """Fills :class:`RouteKeys` with what ``needs`` asks for, and nothing else.

    The flags are turned into plain booleans once: the proxy consults them on
    every request and ``Flag`` membership is slow by comparison.
    """

    __slots__ = ("body", "more_headers", "prefix", "prefix_chars", "priority", "session",
                 "session_user", "tenant")

    def __init__(self, needs: Need, prefix_chars: int = 1024):
        self.session = Need.SESSION in needs
        self.session_user = Need.SESSION_USER in needs
        self.prefix = Need.PREFIX in needs
        self.tenant = Need.TENANT in needs
        self.priority = Need.PRIORITY in needs
        self.more_headers = self.tenant or self.priority
        """Headers beyond the session's are read: the proxy compares names against them."""
        self.body = self.prefix or self.session_user
        """Something is read from the parsed body: :meth:`from_body` has work to do."""
        self.prefix_chars = prefix_chars

    def from_body(self, keys: RouteKeys, body: dict[str, Any]) -> None:
        """Complete ``keys`` (header values already set) from the parsed JSON body."""
        if self.session_user and not keys.session:
            user = body.get("user")
            keys.session = user if isinstance(user, str) and user else None
        if self.prefix:
            keys.prefix = prefix_text(body, self.prefix_chars)


def _content_text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: keep the text ones
        return "".join(p.get("text", "") for p in content
                       if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def prefix_text(body: dict[str, Any], max_chars: int) -> str | None:
    """The leading prompt, chat-template independent.

    Chat: system/developer messages plus the first other message (the start of a
    conversation, shared by every later turn); completions/responses: the first
    ``max_chars`` characters of ``prompt``/``input``.
    """
    messages = body.get("messages")
    if isinstance(messages, list) and messages:
        parts: list[str] = []
        for m in messages:
            if not isinstance(m, dict):
                continue
            role = m.get("role")
            parts.append(f"{role}:{_content_text(m.get('content'))}")
            if role not in ("system", "developer"):
                break
        text = "\n".join(parts)
        return text[:max_chars] if text else None
    for field_name in ("prompt", "input"):
        value = body.get(field_name)
        if isinstance(value, list) and value:
            value = value[0] if isinstance(value[0], str) else _content_text(value)
        if isinstance(value, str) and value:
            return value[:max_chars]
    return None
