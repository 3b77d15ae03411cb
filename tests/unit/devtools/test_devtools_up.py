"""devtools.up's pure parts: port overrides, the model uid, what it prints at the end."""

from __future__ import annotations

from pathlib import Path

import pytest

from devtools import up


def test_chosen_ports_override_only_what_is_named() -> None:
    ports = up.chosen_ports(["gateway=8091", "etcd=2479"])
    assert ports == {**up.PORTS, "gateway": 8091, "etcd": 2479}
    assert up.chosen_ports([]) == up.PORTS


@pytest.mark.parametrize("spec", ["gateway", "gw=8091", "gateway=", "gateway=x",
                                  "gateway=0", "gateway=65536"])
def test_chosen_ports_reject_bad_specs(spec: str) -> None:
    with pytest.raises(ValueError, match=spec):
        up.chosen_ports([spec])


def test_chosen_ports_reject_two_services_on_one_port() -> None:
    with pytest.raises(ValueError, match="two services on one port: 18081"):
        up.chosen_ports(["gateway=18081"])


def test_model_uid_matches_the_seed() -> None:
    assert up.model_uid("Qwen/Qwen2.5-0.5B-Instruct") == "qwen2_5_0_5b"
    assert up.model_uid("SmolLM2-135M-Instruct") == "smollm2_135m"


def test_usage_names_the_ports_and_run_dir_in_use(tmp_path: Path) -> None:
    seed = up.usage("m", dict(up.PORTS), up.RUN_DIR)
    assert "gateway http://127.0.0.1:8081" in seed and "Stop: make down " in seed
    assert "--etcd-endpoints" not in seed
    moved = up.usage("m", up.chosen_ports(["gateway=8091", "etcd=2479"]), tmp_path)
    assert "curl -s http://127.0.0.1:8091/v1/models" in moved
    assert f"make down RUN_DIR={tmp_path}" in moved
    assert "nebula status --etcd-endpoints 127.0.0.1:2479" in moved


def test_already_up_reads_the_pidfile(tmp_path: Path) -> None:
    assert not up.already_up(tmp_path)
    (tmp_path / "pids.json").write_text("not json")
    assert not up.already_up(tmp_path)
    (tmp_path / "pids.json").write_text('{"etcd": 999999999}')
    assert not up.already_up(tmp_path)


def test_usage_lists_embeddings_where_the_engine_serves_them() -> None:
    assert "/v1/embeddings" in up.usage("m", dict(up.PORTS), up.RUN_DIR, embeddings=True)
    assert "/v1/embeddings" not in up.usage("m", dict(up.PORTS), up.RUN_DIR)
    assert up.EMBEDS == {"llamacpp", "sim"} and "--embedding True" in up.ENGINE_ARGS["llamacpp"]


def test_request_path_workers_leave_cores_to_the_engine() -> None:
    assert [up.request_path_workers(n) for n in (1, 2, 3, 4, 8, 64)] == [1, 1, 1, 2, 4, 4]
