"""The peers' configs, the side-by-side paths and their ratios (bench/peers.py, report.py,
run.py), and one real request through each peer on the nginx stand-in."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from bench import peers
from bench.harness import Bench
from bench.report import (
    Sample,
    aggregate,
    find_row,
    hop,
    path_label,
    peer_pairs,
    per_cpu_ratios,
    ratio_table_rows,
    request_table_rows,
    server_path,
    side_by_side_text,
)
from bench.run import Hop, check_paths, default_server, parse_args, server_list
from bench.standin import MODEL, STREAM_AGENT, nginx_binary
from tests.support import needs


def test_pinned_versions_reads_the_lock():
    text = "# comment\nvllm-router==0.1.17\nLiteLLM==1.76.3  # the proxy\nlitellm-enterprise==9\n"
    assert peers.pinned_versions(text) == {"vllm-router": "0.1.17", "litellm": "1.76.3"}
    pins = peers.pinned_versions(peers.LOCK.read_text())
    assert set(pins) == {"vllm-router", "litellm"}
    # Issue 17: LiteLLM releases after 1.106 pin packages this machine cannot install.
    major, minor = (int(x) for x in pins["litellm"].split(".")[:2])
    assert (major, minor) <= (1, 76)


def test_litellm_config_is_one_backend_in_yaml_without_db_or_callbacks():
    text = json.dumps(peers.litellm_config("http://127.0.0.1:9/v1"))
    config = yaml.safe_load(text)  # what LiteLLM reads config.yaml with
    models = {m["model_name"]: m["litellm_params"] for m in config["model_list"]}
    assert set(models) == {MODEL, peers.LITELLM_STREAM_MODEL}
    for params in models.values():
        assert params["model"] == f"openai/{MODEL}"
        assert params["api_base"] == "http://127.0.0.1:9/v1"
    assert "extra_headers" not in models[MODEL]
    assert models[peers.LITELLM_STREAM_MODEL]["extra_headers"] == {"User-Agent": STREAM_AGENT}
    settings = config["litellm_settings"]
    assert settings["callbacks"] == settings["success_callback"] == []
    assert "database_url" not in config["general_settings"]
    assert "master_key" not in config["general_settings"]


def test_peer_command_lines():
    argv = peers.vllm_router_argv(Path("/x/vllm-router"), 81, "http://127.0.0.1:80", 82)
    assert argv[0] == "/x/vllm-router"
    assert argv[argv.index("--worker-urls") + 1] == "http://127.0.0.1:80"
    assert argv[argv.index("--policy") + 1] == "round_robin"
    assert argv[argv.index("--port") + 1] == "81"
    assert argv[argv.index("--prometheus-port") + 1] == "82"
    argv = peers.litellm_argv(Path("/x/litellm"), Path("c.yaml"), Path("l.json"), 83)
    assert argv[argv.index("--num_workers") + 1] == "1"
    assert argv[argv.index("--log_config") + 1] == "l.json"
    assert peers.client_model(peers.LITELLM, stream=True) == peers.LITELLM_STREAM_MODEL
    assert peers.client_model(peers.LITELLM, stream=False) == MODEL
    assert peers.client_model(peers.VLLM_ROUTER, stream=True) == MODEL


def test_peer_binary_names_the_make_target(tmp_path):
    with pytest.raises(RuntimeError, match="make peers"):
        peers.peer_binary("vllm-router", venv=tmp_path)


def test_paths_hops_and_labels():
    assert hop("direct") == "direct"
    assert hop("router") == hop(server_path("router", "granian")) == hop("vllm-router") == "router"
    assert hop("gateway") == hop("gateway@uvicorn") == hop("litellm") == "gateway"
    assert path_label("router") == "router"
    assert path_label("router", "uvicorn") == "router (uvicorn)"
    assert path_label("gateway@granian", "uvicorn") == "gateway+router (granian)"
    assert path_label("direct", "uvicorn") == "direct"
    assert path_label("litellm") == "LiteLLM"


def run_sample(scenario, path, rnd, requests, router=0.0, gateway=0.0):
    return Sample(scenario, path, rnd, requests, 5.0, 1.0, 2.0, 0,
                  {"router": router, "gateway": gateway})


def side_by_side_round(rnd, nebula_router_cpu):
    return [
        run_sample("chat c64", "direct", rnd, 10_000),
        run_sample("chat c64", "vllm-router", rnd, 6_000, router=1.0),
        run_sample("chat c64", "router", rnd, 2_000, router=nebula_router_cpu),
        run_sample("chat c64", "router@granian", rnd, 3_000, router=1.0),
        run_sample("chat c64", "litellm", rnd, 100, gateway=2.0),
        run_sample("chat c64", "gateway", rnd, 1_000, router=1.0, gateway=1.0),
    ]


def test_aggregate_orders_paths_and_charges_peers_as_their_hop():
    rows = aggregate(side_by_side_round(0, 1.0))
    assert [r.path for r in rows] == ["direct", "router", "router@granian", "vllm-router",
                                      "gateway", "litellm"]
    litellm = find_row(rows, "chat c64", "litellm")
    assert litellm.per_cpu_gateway.median == litellm.per_cpu_both.median == 50
    assert math.isnan(litellm.per_cpu_router.median)  # LiteLLM has no router of its own
    assert find_row(rows, "chat c64", "vllm-router").per_cpu_router.median == 6_000
    labels = [r[1] for r in request_table_rows(rows, "uvicorn")]
    assert labels == ["direct", "router (uvicorn)", "router (granian)", "vllm-router",
                      "gateway+router (uvicorn)", "LiteLLM"]


def test_peer_pairs_and_per_round_ratios():
    samples = side_by_side_round(0, 1.0) + side_by_side_round(1, 2.0) + side_by_side_round(2, 4.0)
    pairs = peer_pairs(s.path for s in samples)
    assert pairs == [("router", "vllm-router"), ("router@granian", "vllm-router"),
                     ("gateway", "litellm"), ("gateway", "vllm-router")]
    ratios = {(r.numerator, r.denominator): r for r in per_cpu_ratios(samples, pairs)}
    # router: 2,000 / 1, 2, 4 CPU-s against vllm-router's 6,000 in the same round
    rr = ratios[("router", "vllm-router")].ratios
    assert (rr.median, rr.low, rr.high, rr.n) == (pytest.approx(1 / 6), pytest.approx(1 / 12),
                                                  pytest.approx(1 / 3), 3)
    assert ratios[("gateway", "litellm")].ratios.median == 10  # 500 / 50
    assert ratios[("gateway", "vllm-router")].ratios.median == pytest.approx(500 / 6000)
    table = {row[1]: row for row in ratio_table_rows(list(ratios.values()))}
    router = table["router / vllm-router"]
    assert router[2:] == ["0.17x", "0.08..0.33", "3", ">= 0.50x", "MISS"]
    assert table["router (granian) / vllm-router"][-1] == "PASS"  # 3,000 / 6,000
    assert table["gateway+router / LiteLLM"][-2:] == ["-", "-"]  # no target against LiteLLM
    assert table["gateway+router / vllm-router"][-2:] == [">= 0.25x", "MISS"]


def test_ratios_skip_rounds_without_a_peer_figure():
    samples = [run_sample("chat c1", "router", 0, 100, router=1.0),
               run_sample("chat c1", "vllm-router", 0, 100, router=0.0),  # no CPU: NaN
               run_sample("chat c1", "router", 1, 100, router=1.0)]  # no peer this round
    assert per_cpu_ratios(samples, [("router", "vllm-router")]) == []


def test_server_options():
    assert server_list(" uvicorn, granian,uvicorn ") == ["uvicorn", "granian"]
    assert default_server("--http-server hypercorn --x 1") == "hypercorn"
    assert default_server("--http-server=granian") == "granian"
    args = parse_args(["--compare-servers"])
    assert server_list(args.servers) == ["hypercorn", "uvicorn", "granian"]
    assert not args.peers and parse_args(["--peers"]).peers
    with pytest.raises(SystemExit):
        parse_args(["--servers", "tornado"])


def test_side_by_side_text():
    alone = side_by_side_text([], "uvicorn", {}, "")
    assert "make bench-peers" in alone and "`uvicorn`" in alone
    text = side_by_side_text(["hypercorn", "uvicorn"], "uvicorn",
                             {"vllm-router": "0.1.17", "litellm": "1.76.3"}, "RATIO TABLE")
    assert "hypercorn" in text and "0.1.17" in text and "1.76.3" in text
    assert "RATIO TABLE" in text and "min..max" in text


def test_each_peer_answers_on_the_nginx_stand_in(tmp_path):
    """One plain and one streamed request through vllm-router and LiteLLM (make peers)."""
    needs.binary("nginx", "make bench-tools installs it (Debian's nginx-light)", nginx_binary())
    for name in peers.PEERS:
        needs.binary(name, "make peers installs it", str(peers.peer_binary(name)))
    bench = Bench(tmp_path)
    try:
        standin = bench.start_nginx(MODEL)
        chat = "/v1/chat/completions"
        hops = [Hop(peers.VLLM_ROUTER,
                    {MODEL: peers.start_vllm_router(bench, standin.base_url) + chat}, {}),
                Hop(peers.LITELLM,
                    {MODEL: peers.start_litellm(bench, standin.base_url + "/v1") + chat}, {},
                    stream_model=peers.LITELLM_STREAM_MODEL)]
        said: list[str] = []
        check_paths(hops, said.append)  # raises unless each answers 200 and streams to [DONE]
        assert "vllm-router, litellm" in said[0]
    finally:
        bench.close()


def test_paced_ratios_carry_no_target():
    from bench.report import Ratio
    from bench.stats import spread as spread_of

    spread = spread_of([0.3])
    assert Ratio("paced10ms c64", "router", "vllm-router", spread).target is None
    assert Ratio("stream64 c64", "router", "vllm-router", spread).target == 0.5
    assert Ratio("chat c1", "router", "vllm-router", spread).target is None
