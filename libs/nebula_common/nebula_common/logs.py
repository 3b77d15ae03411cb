"""JSON (or text) logging for every role, with secrets scrubbed."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .workers import worker_index

_STANDARD = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}

REDACTED = "[redacted]"

# Bearer tokens and key-looking values never reach a log line, whoever logs them.
_SECRET = re.compile(
    r"(?i)((?:authorization[\"'=: ]+)?bearer\s+|api[_-]?key[\"'=: ]+|authorization[\"'=: ]+"
    r"|(?:password|passwd|secret|token)[\"']?=[\"']?)"
    r"[^\s\"',&]+"
)
# Hugging Face access tokens, wherever they appear (an env dump, a URL, an error).
_HF_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{16,}")

# Names (of a log field, a header, a flag, an env variable) whose value is a secret.
# ``token`` is a whole word: ``hf_token`` is a secret, ``prompt_tokens`` a count.
_SECRET_NAME = re.compile(
    r"(?i)(?:^|[_-])(?:api[_-]?key|apikey|authorization|cookie|credentials?|passw(?:or)?d"
    r"|token|secret|(?:secret|access|private)[_-]?key)$")


# A word every pattern above needs: text without one is returned untouched, cheaply.
_TRIGGER = re.compile("key|bearer|authoriz|passw|secret|token|hf_")
_names: dict[str, bool] = {}


def scrub(text: str) -> str:
    # Nearly every value is a plain id or name; the case-blind patterns cost ten times more.
    # Each pattern needs a separator, so an alphanumeric value (a request id) holds none.
    if text.isalnum() or _TRIGGER.search(text.lower()) is None:
        return text
    return _HF_TOKEN.sub(REDACTED, _SECRET.sub(lambda m: m.group(1) + REDACTED, text))


_SHORT = 64
_scrubbed: dict[str, str] = {}


def scrub_value(text: str) -> str:
    """:func:`scrub` for a log field's value, remembered for short ones.

    An access line's values repeat (model, replica, path, policy reason) and most are not
    alphanumeric, so each would go through the lower-casing and the search on every request.
    """
    if text.isalnum():
        return text
    done = _scrubbed.get(text)
    if done is None:
        done = scrub(text)
        # Only clean values are kept (a secret is not held on to), and not a flood of them.
        if done is text and len(text) <= _SHORT and len(_scrubbed) < 4096:
            _scrubbed[text] = done
    return done


def secret_name(name: str) -> bool:
    """True when a field, flag (``--api-key``) or variable (``HF_TOKEN``) holds a secret."""
    known = _names.get(name)
    if known is None:
        known = bool(_SECRET_NAME.search(name.lstrip("-")))
        if len(_names) < 4096:  # names are a small set; a flood of odd ones is not cached
            _names[name] = known
    return known


def redact_argv(argv: Sequence[str]) -> list[str]:
    """``argv`` with the values of secret flags (``--api-key X``, ``--api-key=X``) replaced."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append(REDACTED)
            hide_next = False
            continue
        name, eq, _value = arg.partition("=")
        if name.startswith("-") and secret_name(name):
            if eq:
                out.append(f"{name}={REDACTED}")
                continue
            hide_next = True
        out.append(scrub(arg))
    return out


def command_line(argv: Sequence[str]) -> str:
    """``argv`` as one line to log, secret flag values hidden."""
    return " ".join(redact_argv(argv))


_AS_THEY_ARE = frozenset({int, float, bool})


def clean(value: Any, depth: int = 0) -> Any:
    """A log field's value with secrets scrubbed; in mappings, secret keys' values hidden."""
    if type(value) is str:
        return scrub_value(value)
    if value is None or isinstance(value, int | float):  # bool is an int
        return value
    # (lists first: the Mapping test is an ABC's, slower, and a list is never one)
    if depth < 4 and isinstance(value, list | tuple):
        if all(type(v) is str for v in value):
            if any(v[:1] == "-" for v in value):
                return redact_argv(value)  # a list of words may be a command line
            return [scrub_value(v) for v in value]  # words with no flag (replica ids)
        return [clean(v, depth + 1) for v in value]
    if depth < 4 and isinstance(value, Mapping):
        return {k: REDACTED if isinstance(k, str) and secret_name(k) else clean(v, depth + 1)
                for k, v in value.items()}
    return scrub(str(value))  # what json's default=str would print, scrubbed


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The ``extra=`` fields of ``record``, scrubbed (secret names show only ``[redacted]``)."""
    return scrubbed_fields({k: v for k, v in record.__dict__.items()
                            if k not in _STANDARD and k[:1] != "_"})


def scrubbed_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Log fields scrubbed: runs for every access-log line, so plain values go shortest."""
    out: dict[str, Any] = {}
    for key, value in fields.items():
        if secret_name(key):
            out[key] = REDACTED
        elif type(value) is str:
            out[key] = scrub_value(value)
        elif value is None or type(value) in _AS_THEY_ARE:  # clean()'s own, without its call
            out[key] = value
        else:
            out[key] = clean(value)
    return out


_HEAD_KEYS = frozenset({"ts", "level", "service", "worker", "logger", "msg", "exc"})
# Built once: json.dumps with any argument builds an encoder per call (a line per request).
_encode = json.JSONEncoder(default=str, separators=(",", ":")).encode


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg and any ``extra=`` fields."""

    def __init__(self, service: str):
        super().__init__()
        self.service = service
        worker = worker_index()  # one of --workers N: say which
        self.worker = {} if worker is None else {"worker": worker}
        self.heads: dict[tuple[str, str, str], str] = {}

    def format(self, record: logging.LogRecord) -> str:
        exc = scrub(self.formatException(record.exc_info)) if record.exc_info else None
        return self.format_fields(record.created, record.levelname, record.name,
                                  record.getMessage(), extra_fields(record), exc)

    def format_fields(self, created: float, level: str, name: str, msg: str,
                      fields: dict[str, Any], exc: str | None = None) -> str:
        """The line for a message and its (already scrubbed) fields."""
        if exc is None and _HEAD_KEYS.isdisjoint(fields):
            return self._line(created, level, name, msg, fields)
        entry: dict[str, Any] = {
            "ts": round(created, 3),
            "level": level.lower(),
            "service": self.service,
            **self.worker,
            "logger": name,
            "msg": scrub(msg),
        }
        entry.update(fields)
        if exc is not None:
            entry["exc"] = exc
        return _encode(entry)

    def _line(self, created: float, level: str, name: str, msg: str,
              fields: dict[str, Any]) -> str:
        """The same line, with what follows ``ts`` up to the fields encoded once per
        (level, logger, message): an access log writes one ``request`` line per request."""
        key = (level, name, msg)
        head = self.heads.get(key)
        if head is None:
            head = _encode({"level": level.lower(), "service": self.service, **self.worker,
                            "logger": name, "msg": scrub(msg)})[1:-1]
            if len(self.heads) < 256:  # messages with values in them are not kept
                self.heads[key] = head
        rest = _encode(fields)[1:]  # "...}", or "}" for no fields
        return f'{{"ts":{round(created, 3)!r},{head}{"," if len(rest) > 1 else ""}{rest}'


class TextFormatter(logging.Formatter):
    def __init__(self, service: str):
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        exc = self.formatException(record.exc_info) if record.exc_info else None
        return self.format_fields(record.created, record.levelname, record.name,
                                  record.getMessage(), extra_fields(record), exc)

    def format_fields(self, created: float, level: str, name: str, msg: str,
                      fields: dict[str, Any], exc: str | None = None) -> str:
        extras = " ".join(f"{k}={v}" for k, v in fields.items())
        stamp = time.strftime("%H:%M:%S", time.localtime(created))
        line = f"{stamp} {level.lower():7} {self.service}: {msg}"
        if extras:
            line += " " + extras
        if exc is not None:
            line += "\n" + exc
        return scrub(line)


Unformatted = tuple[Callable[..., str], float, str, str, dict[str, Any]]
"""An access line still to be formatted: the formatter's ``format_fields``, the time, the
logger, the message and the fields (:meth:`AccessLog.write`)."""


def _formatted(line: str | Unformatted) -> str:
    if isinstance(line, str):
        return line
    format_fields, created, name, msg, fields = line
    try:
        return format_fields(created, "info", name, msg, scrubbed_fields(fields))
    except Exception as exc:  # one odd value must not lose the batch's other lines
        return format_fields(created, "error", name, "access line not formatted",
                             {"error": scrub(f"{type(exc).__name__}: {exc}")})


class BatchedHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes its lines in batches: one write per ``interval`` seconds, not one per line.

    For the access logs, one line per request: a write to stderr per request was a
    tenth of the router's CPU at 64 connections (make bench). Lines reach the stream
    at most ``interval`` later, at once past ``max_lines``, and at exit
    (``logging.shutdown`` flushes every handler); outside an event loop each line is
    written as it comes. An access line may come unformatted (:meth:`AccessLog.write`):
    it is formatted with the batch, where the formatter's code and data are still in the
    CPU's caches from the line before (make bench: half the access log's cost per request).
    """

    def __init__(self, stream: Any, interval: float = 0.05, max_lines: int = 512):
        super().__init__(stream)
        self.interval, self.max_lines = interval, max_lines
        self.lines: list[str | Unformatted] = []
        self.timer: asyncio.TimerHandle | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self.add(line)

    def add(self, line: str | Unformatted) -> None:
        """Queue one line (formatted, or to be formatted when the batch is written)."""
        self.lines.append(line)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None or len(self.lines) >= self.max_lines:
            self._write()
        elif self.timer is None:
            self.timer = loop.call_later(self.interval, self.flush)

    def flush(self) -> None:
        self.acquire()
        try:
            self._write()
        finally:
            self.release()

    def _write(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.lines:
            text = "\n".join([_formatted(line) for line in self.lines]) + "\n"
            self.lines.clear()
            self.stream.write(text)
        super().flush()


class AccessLog:
    """One line per request, without a ``LogRecord`` when the logger writes in batches.

    ``logger.info("request", extra=...)`` walks the stack for the caller, builds a record of
    some twenty attributes, takes two locks and copies the fields back out of the record:
    about a tenth of the router's CPU per proxied request (``bench/findings.md``). When the
    access logger's only handler is the :class:`BatchedHandler` :func:`setup_logging`
    gives it, :meth:`write` hands it the fields, which it formats with its batch, with the
    same formatter and scrubbing; otherwise (tests capturing logs, a handler of the
    operator's) the line goes through ``logging`` as usual.
    """

    def __init__(self, name: str) -> None:
        self.logger = logging.getLogger(name)

    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)

    def write(self, fields: dict[str, Any], msg: str = "request") -> None:
        """Log one line of ``fields``, which are the log's from now on: the caller builds
        them for this line and does not change them (they may be formatted later)."""
        logger = self.logger
        handlers = logger.handlers
        handler = handlers[0] if len(handlers) == 1 else None
        if not (isinstance(handler, BatchedHandler) and handler.level <= logging.INFO
                and not logger.filters and not handler.filters
                and isinstance(handler.formatter, JsonFormatter | TextFormatter)):
            logger.info(msg, extra=fields)
            return
        line = (handler.formatter.format_fields, time.time(), logger.name, msg, fields)
        handler.acquire()  # as Handler.handle holds it around emit()
        try:
            handler.add(line)
        finally:
            handler.release()


def setup_logging(service: str, level: str = "info", fmt: str = "json") -> None:
    """Route every logger to stderr in the chosen format; ``nebula.<service>.access``
    (one line per request) in batches (:class:`BatchedHandler`)."""
    formatter = JsonFormatter(service) if fmt == "json" else TextFormatter(service)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    batched = BatchedHandler(sys.stderr)
    batched.setFormatter(formatter)
    access = logging.getLogger(f"nebula.{service}.access")
    access.handlers[:] = [batched]
    access.propagate = False
    # Third-party chatter that would drown one-line-per-request logs.
    for noisy in ("hypercorn.access", "uvicorn.error", "aetcd", "grpc", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
