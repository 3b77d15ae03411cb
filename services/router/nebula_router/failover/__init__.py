"""Mid-stream failover: resume a broken SSE stream on another replica (issue 13).

Pure logic, no IO; the proxy does the IO. One module per concern:

- :mod:`.record`: the raw bytes already forwarded to the client (bounded, never parsed on
  the happy path);
- :mod:`.events`: SSE frames as data payloads;
- :mod:`.reassembly`: what the client already got, per choice, parsed from the record
  only once a stream broke;
- :mod:`.continuation`: the request that carries the partial answer to another replica
  (or why none can be exact);
- :mod:`.rewrite`: the resumed stream's chunks, rewritten so the client sees one stream.
"""

from __future__ import annotations

from .continuation import Continuation, NotResumable, plan_continuation
from .reassembly import ChoiceState, StreamState, reassemble
from .record import DEFAULT_LIMIT, Recorder
from .rewrite import Rewriter

__all__ = ["DEFAULT_LIMIT", "ChoiceState", "Continuation", "NotResumable", "Recorder",
           "Rewriter", "StreamState", "plan_continuation", "reassemble"]
