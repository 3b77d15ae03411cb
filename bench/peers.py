"""The peers that ``make bench-peers`` measures beside Nebula, on the same nginx stand-in.

- vllm-router (Rust, PyPI ``vllm-router``) in front of one worker, round robin: the
  peer of the router alone.
- LiteLLM's proxy (PyPI ``litellm[proxy]``) with one model to an OpenAI-compatible
  ``api_base``, no database, no callbacks, access log off: the peer of gateway + router.

Both live in their own virtual environment (``make peers``: ``.cache/peers-venv`` from
``requirements/peers.lock``), so their pins never meet the main venv's. The config
writing is pure and unit-tested; :func:`start_vllm_router` and :func:`start_litellm`
spawn through the bench's cluster, so each runs in its own process group (its CPU is
counted like Nebula's) and ``Bench.close`` stops it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from devtools.cluster import REPO, free_port

from .harness import Bench
from .standin import MODEL, STREAM_AGENT

PEERS_VENV = REPO / ".cache" / "peers-venv"
VLLM_ROUTER = "vllm-router"
LITELLM = "litellm"
PEERS = (VLLM_ROUTER, LITELLM)
# LiteLLM calls the engine with the openai SDK, which sends its own User-Agent, so the
# streamed answer is a second model name whose calls carry the stand-in's stream agent.
LITELLM_STREAM_MODEL = f"{MODEL}-stream"
# A cold LiteLLM import takes 10-20 s on a busy 2-core box.
START_TIMEOUT_S = 120.0


LOCK = REPO / "requirements" / "peers.lock"


def pinned_versions(lock_text: str, names: tuple[str, ...] = PEERS) -> dict[str, str]:
    """``{"vllm-router": "0.1.17", ...}`` from the lock's ``name==version`` lines."""
    pins: dict[str, str] = {}
    for line in lock_text.splitlines():
        name, sep, version = line.split("#", 1)[0].strip().partition("==")
        if sep and name.lower() in names:
            pins[name.lower()] = version.strip()
    return pins


def peer_binary(name: str, venv: Path = PEERS_VENV) -> Path:
    """The peer's console script in its venv; a one-line error when it is not installed."""
    binary = venv / "bin" / name
    if not binary.exists():
        raise RuntimeError(f"{binary} is missing: run `make peers` first")
    return binary


def vllm_router_argv(binary: Path, port: int, worker_url: str, metrics_port: int) -> list[str]:
    """vllm-router in front of one worker, round robin, as its README's regular mode.

    Its Prometheus listener cannot be switched off, so it gets a free port of its own.
    """
    return [str(binary), "--host", "127.0.0.1", "--port", str(port),
            "--worker-urls", worker_url, "--policy", "round_robin",
            "--prometheus-host", "127.0.0.1", "--prometheus-port", str(metrics_port),
            "--log-level", "warning"]


def litellm_config(api_base: str, model: str = MODEL,
                   stream_model: str = LITELLM_STREAM_MODEL) -> dict[str, Any]:
    """LiteLLM's ``config.yaml`` (as JSON, which YAML reads) for one OpenAI backend.

    ``model`` and ``stream_model`` are the same deployment; the second sends the
    stand-in's streaming User-Agent (see :data:`LITELLM_STREAM_MODEL`). Logging,
    callbacks and spend logs off, no database (no ``database_url``, no master key).
    """
    def deployment(name: str, headers: dict[str, str]) -> dict[str, Any]:
        params: dict[str, Any] = {"model": f"openai/{model}", "api_base": api_base,
                                  "api_key": "none"}
        if headers:
            params["extra_headers"] = headers
        return {"model_name": name, "litellm_params": params}

    return {
        "model_list": [deployment(model, {}),
                       deployment(stream_model, {"User-Agent": STREAM_AGENT})],
        "litellm_settings": {"callbacks": [], "success_callback": [], "failure_callback": [],
                             "turn_off_message_logging": True, "set_verbose": False,
                             "request_timeout": 600},
        "general_settings": {"disable_spend_logs": True, "disable_error_logs": True},
    }


def uvicorn_log_config() -> dict[str, Any]:
    """A ``logging.dictConfig`` for LiteLLM's uvicorn: warnings only, no access log line."""
    return {
        "version": 1, "disable_existing_loggers": False,
        "handlers": {"stderr": {"class": "logging.StreamHandler"}},
        "loggers": {name: {"handlers": ["stderr"], "level": "WARNING", "propagate": False}
                    for name in ("uvicorn", "uvicorn.error", "uvicorn.access")},
    }


# Offline and quiet: the bundled model cost map instead of fetching one, errors only.
LITELLM_ENV = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR",
               "LITELLM_DONT_SHOW_FEEDBACK_BOX": "true", "DISABLE_SCHEMA_UPDATE": "true"}


def litellm_argv(binary: Path, config: Path, log_config: Path, port: int) -> list[str]:
    """One uvicorn worker (its default is 4): one process, as the router and gateway run."""
    return [str(binary), "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
            "--num_workers", "1", "--log_config", str(log_config)]


def client_model(peer: str, stream: bool) -> str:
    """The model name a client sends to ``peer`` for the stand-in's (streamed) answer."""
    return LITELLM_STREAM_MODEL if peer == LITELLM and stream else MODEL


def start_vllm_router(bench: Bench, worker_url: str, name: str = VLLM_ROUTER) -> str:
    """Start vllm-router (process ``name``) in front of ``worker_url``; returns its base URL
    once healthy."""
    port = free_port()
    proc = bench.cluster.spawn(name, vllm_router_argv(
        peer_binary(VLLM_ROUTER), port, worker_url, free_port()))
    url = f"http://127.0.0.1:{port}"
    bench.wait_http(proc, f"{url}/health", START_TIMEOUT_S)
    return url


def start_litellm(bench: Bench, api_base: str) -> str:
    """Start LiteLLM's proxy with the one-backend config; returns its base URL once live."""
    run_dir = bench.run_dir / LITELLM
    run_dir.mkdir(parents=True, exist_ok=True)
    config = run_dir / "config.yaml"
    config.write_text(json.dumps(litellm_config(api_base), indent=1))
    log_config = run_dir / "log_config.json"
    log_config.write_text(json.dumps(uvicorn_log_config(), indent=1))
    port = free_port()
    proc = bench.cluster.spawn(LITELLM, litellm_argv(peer_binary("litellm"), config,
                                                     log_config, port), env=LITELLM_ENV)
    url = f"http://127.0.0.1:{port}"
    bench.wait_http(proc, f"{url}/health/liveliness", START_TIMEOUT_S)
    return url
