"""``nebula-sim`` command line: flags -> SimEngine -> Quart app on Hypercorn."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from nebula_common.config import Parser, fail
from nebula_common.logs import setup_logging
from nebula_common.service import run_app

from .app import create_app
from .engine import SimEngine
from .faults import Faults

PROG = "nebula-sim"
log = logging.getLogger("nebula.sim")


def build_parser() -> Parser:
    p = Parser(prog=PROG, description="vLLM-compatible engine simulator")
    p.add_flag("--host", default="127.0.0.1", help="address to listen on")
    p.add_flag("--port", default=10814, type=int, help="port to listen on")
    p.add_argument("--listen", default=None, help="HOST:PORT; overrides --host/--port")
    p.add_flag("--model-name", default=None, help="served model id (required)")
    p.add_argument("--model", dest="model_alias", default=None, help="alias of --model-name")
    p.add_argument("--served-model-name", nargs="+", action="extend", default=[],
                   help="extra names the model answers to")
    p.add_flag("--max-model-len", default=32768, type=int, help="context window in tokens")
    p.add_flag("--output-tokens", default=16, type=int,
               help="tokens generated when the request sets no limit")
    p.add_flag("--ttft-ms", default=0.0, type=float, help="time to first token (ms)")
    p.add_flag("--itl-ms", default=0.0, type=float, help="inter-token latency (ms)")
    p.add_flag("--prefill-ms-per-token", default=0.0, type=float,
               help="extra time to first token per uncached prompt token (ms)")
    p.add_flag("--max-concurrency", default=0, type=int,
               help="requests run at once; the rest wait (0 = unlimited)")
    p.add_flag("--kv-admission", action="store_true",
               help="requests also wait while the running ones hold --kv-cache-tokens "
                    "(prompt + output tokens each), as a real engine's KV cache fills")
    p.add_flag("--prefix-cache-blocks", default=4096, type=int,
               help="prefix-cache capacity in blocks (0 disables)")
    p.add_flag("--prefix-block-chars", default=64, type=int,
               help="characters per prefix-cache block (64 = 16 tokens)")
    p.add_flag("--kv-cache-tokens", default=262144, type=int,
               help="simulated KV-cache size in tokens (for kv_cache_usage_perc)")
    p.add_flag("--embedding-dim", default=384, type=int, help="default embedding size")
    p.add_flag("--fail-rate", default=0.0, type=float,
               help="fraction of requests answered 500")
    p.add_flag("--crash-after", default=0, type=int,
               help="exit hard when this request number arrives (0 = never)")
    p.add_flag("--hang", action="store_true", help="accept requests, never answer")
    p.add_flag("--hang-health", action="store_true", help="with --hang, /health hangs too")
    p.add_flag("--stream-cut-after", default=0, type=int,
               help="drop streaming connections after N frames (0 = never)")
    p.add_flag("--embeddings-unsupported", action="store_true",
               help="answer /v1/embeddings 500, as llama.cpp's server not started for them")
    p.add_flag("--crlf-frames", action="store_true", help="end SSE lines with CRLF")
    p.add_flag("--seed", default=0, type=int, help="seed of the fail-rate RNG")
    p.add_flag("--log-level", default="info", help="debug, info, warning or error")
    p.add_flag("--log-format", default="json", choices=["json", "text"], help="log format")
    return p


def engine_from_args(a: argparse.Namespace, parser: Parser) -> SimEngine:
    """Validate flags (one-line error on a bad one) and build the engine."""
    model = a.model_name or a.model_alias or (a.served_model_name or [None])[0]
    if not model:
        parser.error("--model-name is required")
    names = [model, *(n for n in a.served_model_name if n != model)]
    for flag in ("ttft_ms", "itl_ms", "prefill_ms_per_token", "max_concurrency",
                 "prefix_cache_blocks", "crash_after", "stream_cut_after", "output_tokens"):
        if getattr(a, flag) < 0:
            parser.error(f"--{flag.replace('_', '-')} must not be negative")
    if not 0.0 <= a.fail_rate <= 1.0:
        parser.error("--fail-rate must be between 0 and 1")
    if a.max_model_len < 1 or a.embedding_dim < 1 or a.kv_cache_tokens < 1:
        parser.error("--max-model-len, --embedding-dim and --kv-cache-tokens must be positive")
    if a.prefix_block_chars < 4 or a.prefix_block_chars % 4:
        parser.error("--prefix-block-chars must be a positive multiple of 4")
    faults = Faults(ttft_ms=a.ttft_ms, itl_ms=a.itl_ms,
                    prefill_ms_per_token=a.prefill_ms_per_token, fail_rate=a.fail_rate,
                    crash_after=a.crash_after, hang=a.hang, hang_health=a.hang_health,
                    stream_cut_after=a.stream_cut_after, max_concurrency=a.max_concurrency,
                    embeddings_unsupported=a.embeddings_unsupported, crlf_frames=a.crlf_frames,
                    kv_admission=a.kv_admission)
    return SimEngine(model=model, served_names=names, max_model_len=a.max_model_len,
                     output_tokens=a.output_tokens, faults=faults,
                     prefix_cache_blocks=a.prefix_cache_blocks,
                     prefix_block_chars=a.prefix_block_chars,
                     kv_cache_tokens=a.kv_cache_tokens, embedding_dim=a.embedding_dim,
                     seed=a.seed)


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    engine = engine_from_args(args, parser)
    setup_logging("sim", args.log_level, args.log_format)
    host = args.host
    listen = args.listen or (f"[{host}]:{args.port}" if ":" in host else f"{host}:{args.port}")
    if not args.listen and not 0 < args.port < 65536:
        fail(PROG, f"--port {args.port} is not a valid port")
    app = create_app(engine)

    async def started() -> None:  # after the bind, so a busy port prints only its error
        log.info("nebula-sim serving %s on %s (ttft_ms=%s itl_ms=%s max_concurrency=%s)",
                 ",".join(engine.served_names), listen, args.ttft_ms, args.itl_ms,
                 args.max_concurrency)

    run_app(app, listen=listen, prog=PROG, before=started)


if __name__ == "__main__":
    main()
