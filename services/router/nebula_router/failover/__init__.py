"""Mid-stream failover: resume a broken SSE stream on another replica (issue 13).

Pure logic, no IO; the proxy does the IO. One module per concern:

- :mod:`.record`: the raw bytes already forwarded to the client (bounded, never parsed on
  the happy path);
- :mod:`.events`: SSE frames as data payloads;
- :mod:`.reassembly`: what the client already got, per choice, parsed from the record
  only once a stream broke;
- :mod:`.continuation`: the request that carries the partial answer to another replica
  (or why none can be exact);
- :mod:`.targets`: which replicas can take a continuation, and the request each is sent;
- :mod:`.chatml`: a chat stream continued through ``/v1/completions`` on the ChatML
  template (llama.cpp);
- :mod:`.rewrite`: the resumed stream's chunks, rewritten so the client sees one stream.
"""

from __future__ import annotations

from .continuation import Continuation, NotResumable, plan_continuation
from .reassembly import ChoiceState, StreamState, reassemble
from .record import DEFAULT_LIMIT, Recorder
from .rewrite import Rewriter
from .targets import Target, Targets, can_continue, refusal

__all__ = ["DEFAULT_LIMIT", "ChoiceState", "Continuation", "NotResumable", "Recorder",
           "Rewriter", "StreamState", "Target", "Targets", "can_continue",
           "plan_continuation", "reassemble", "refusal"]
