"""The sim's latency settings and injected faults, changeable at run time (POST /sim/faults)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

FaultValue = float | int | bool


@dataclass
class Faults:
    """Latency settings and injected faults; all changeable at run time (POST /sim/faults)."""

    ttft_ms: float = 0.0
    itl_ms: float = 0.0
    prefill_ms_per_token: float = 0.0
    fail_rate: float = 0.0
    crash_after: int = 0  # 0 = never; else exit when that request arrives
    hang: bool = False
    hang_health: bool = False
    stream_cut_after: int = 0  # 0 = never; else drop the connection after N frames
    max_concurrency: int = 0  # 0 = unlimited
    embeddings_unsupported: bool = False  # /v1/embeddings: 500, as llama.cpp without embeddings
    crlf_frames: bool = False  # SSE frames end with \r\n\r\n instead of \n\n
    kv_admission: bool = False  # requests also wait while --kv-cache-tokens is full

    _INTS = ("crash_after", "stream_cut_after", "max_concurrency")
    _BOOLS = ("hang", "hang_health", "embeddings_unsupported", "crlf_frames", "kv_admission")

    def validated(self, patch: object) -> dict[str, FaultValue]:
        """Check a partial update; returns the typed values or raises ValueError."""
        if not isinstance(patch, dict):
            raise ValueError("body must be a JSON object")
        names = {f.name for f in fields(self)}
        out: dict[str, FaultValue] = {}
        for key, value in patch.items():
            if key not in names:
                raise ValueError(f"unknown fault {key!r}; known: {sorted(names)}")
            if key in self._BOOLS:
                if not isinstance(value, bool):
                    raise ValueError(f"{key} must be true or false")
                out[key] = value
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"{key} must be a non-negative number")
            if key in self._INTS:
                if int(value) != value:
                    raise ValueError(f"{key} must be an integer")
                out[key] = int(value)
            else:
                out[key] = float(value)
        if out.get("fail_rate", 0.0) > 1.0:
            raise ValueError("fail_rate must be between 0 and 1")
        return out

    def apply(self, values: dict[str, FaultValue]) -> None:
        """Set already validated values (from :meth:`validated`)."""
        for key, value in values.items():
            setattr(self, key, value)

    def as_dict(self) -> dict[str, FaultValue]:
        return asdict(self)
