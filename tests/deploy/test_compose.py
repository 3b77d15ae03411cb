"""compose.yaml and compose.cpu.yaml: valid Compose, and they mean what the docs say.

There is no Docker engine here: the files are validated against the Compose specification's
JSON schema (tests/schemas/compose-spec.json, Apache-2.0), then the merged GPU and CPU
deployments are checked for the topology, ports, GPU reservation, healthchecks and environment
they promise.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.deploy.deploylib import (
    COMPOSE_SCHEMA,
    PORTS,
    REPO,
    ROLES,
    Reset,
    blocks,
    env_vars_read,
    interpolation_defaults,
    load_compose,
    load_nomad,
    merge_compose,
    parse_dockerfile,
    published_ports,
    strip_tags,
)

BASE = REPO / "compose.yaml"
CPU = REPO / "compose.cpu.yaml"
Validator = jsonschema.Draft7Validator
SCRIPT = {role: f"nebula-{role}" for role in ROLES}


@pytest.fixture(scope="module")
def schema() -> Validator:
    if not COMPOSE_SCHEMA.exists():
        pytest.fail(f"{COMPOSE_SCHEMA} is missing from the repository")
    spec = json.loads(COMPOSE_SCHEMA.read_text())
    # The spec declares draft-07 (its "$schema" URL lacks the "#" jsonschema looks up).
    jsonschema.Draft7Validator.check_schema(spec)
    return jsonschema.Draft7Validator(spec)


@pytest.fixture(scope="module")
def gpu() -> dict[str, Any]:
    return strip_tags(load_compose(BASE))


@pytest.fixture(scope="module")
def cpu() -> dict[str, Any]:
    return merge_compose(load_compose(BASE), load_compose(CPU))


def deployments(gpu: dict[str, Any], cpu: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [("gpu", gpu), ("cpu", cpu)]


@pytest.mark.parametrize("path", [BASE, CPU], ids=lambda p: p.name)
def test_file_validates_against_compose_spec(path: Path, schema: Validator) -> None:
    schema.validate(strip_tags(load_compose(path)))


def test_merged_cpu_deployment_validates(cpu: dict[str, Any], schema: Validator) -> None:
    schema.validate(cpu)


def test_schema_rejects_a_broken_file(gpu: dict[str, Any], schema: Validator) -> None:
    """The validation above can fail: a misspelt key is refused."""
    broken = json.loads(json.dumps(gpu))
    broken["services"]["router"]["healthcheck"]["intervall"] = "5s"
    with pytest.raises(jsonschema.ValidationError):
        schema.validate(broken)


def test_every_role_and_the_infrastructure_is_there(gpu: dict[str, Any]) -> None:
    services = gpu["services"]
    for name in (*ROLES, "etcd", "prometheus", "grafana"):
        assert name in services, name
    for name in (*ROLES, "etcd", "prometheus"):
        assert "profiles" not in services[name], f"{name} must start by default"
    # Grafana's image cannot be built offline: `--profile grafana` starts it where it can be had.
    assert services["grafana"]["profiles"] == ["grafana"]
    assert services["etcd"]["image"].startswith("quay.io/coreos/etcd:v3.5.")
    assert any(v.endswith(":/etcd-data") for v in services["etcd"]["volumes"])
    for name in ("prometheus", "grafana", "etcd"):
        image = services[name]["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name} image is not pinned"


def test_tracing_collector_is_behind_a_profile(gpu: dict[str, Any]) -> None:
    tracers = [n for n, s in gpu["services"].items() if "tracing" in s.get("profiles", [])]
    assert tracers, "no service in the tracing profile"
    for role in ROLES:
        env = gpu["services"][role]["environment"]
        # Settable from the shell; empty by default, which keeps tracing off.
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "${OTEL_EXPORTER_OTLP_ENDPOINT:-}"
        assert all(d not in tracers for d in gpu["services"][role].get("depends_on", {}))


def test_roles_build_from_their_dockerfiles(gpu: dict[str, Any], cpu: dict[str, Any]) -> None:
    for kind, doc in deployments(gpu, cpu):
        for role in ROLES:
            build = doc["services"][role]["build"]
            context = REPO / build["context"]
            dockerfile = context / build["dockerfile"]
            assert context.resolve() == REPO, f"{kind}/{role}: context is the repository root"
            assert dockerfile.is_file(), f"{kind}/{role}: {dockerfile} missing"
            stages = [s.name for s in parse_dockerfile(dockerfile)[1]]
            if "target" in build:
                assert build["target"] in stages, f"{kind}/{role}: no stage {build['target']}"
    assert gpu["services"]["node"]["build"]["target"] == "gpu"
    assert cpu["services"]["node"]["build"]["target"] == "cpu"


def test_node_reserves_gpus_only_in_the_gpu_deployment(gpu: dict[str, Any],
                                                       cpu: dict[str, Any]) -> None:
    node = gpu["services"]["node"]
    (device,) = node["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert any(v.endswith(":/data/huggingface") for v in node["volumes"]), "HF cache volume"
    assert node["environment"]["HF_HOME"] == "/data/huggingface"
    assert node.get("ipc") == "host" or node.get("shm_size"), "vLLM needs shared memory"
    for name, service in gpu["services"].items():
        if name != "node":
            assert "devices" not in json.dumps(service.get("deploy", {})), name
    assert "deploy" not in cpu["services"]["node"]
    assert "nvidia" not in json.dumps(cpu["services"])


def test_cpu_override_resets_the_gpu_reservation() -> None:
    override = load_compose(CPU)
    assert isinstance(override["services"]["node"]["deploy"], Reset)


def test_model_engine_and_replicas_are_variables(gpu: dict[str, Any],
                                                 cpu: dict[str, Any]) -> None:
    env = gpu["services"]["scheduler"]["environment"]
    assert env["NEBULA_MODEL_NAME"] == "${NEBULA_MODEL:-Qwen/Qwen2.5-0.5B-Instruct}"
    assert env["NEBULA_ENGINE"] == "${NEBULA_ENGINE:-vllm}"
    assert env["NEBULA_REPLICAS"] == "${NEBULA_REPLICAS:-1}"
    assert interpolation_defaults(env["NEBULA_MODEL_UID"])
    assert interpolation_defaults(env["NEBULA_PORT"]) == str(PORTS["engine"])
    cpu_env = cpu["services"]["scheduler"]["environment"]
    assert interpolation_defaults(cpu_env["NEBULA_ENGINE"]) == "llamacpp"
    assert interpolation_defaults(cpu_env["NEBULA_MODEL_NAME"]) == "SmolLM2-135M-Instruct"


def test_router_and_gateway_run_workers(gpu: dict[str, Any]) -> None:
    for role in ("router", "gateway"):
        env = gpu["services"][role]["environment"]
        assert interpolation_defaults(env["NEBULA_WORKERS"]) == "2", role


def test_ports_as_documented_and_all_on_loopback(gpu: dict[str, Any],
                                                cpu: dict[str, Any]) -> None:
    """Safe by default: every port, the gateway's included, is published on 127.0.0.1; the
    gateway alone can be published wider, by NEBULA_PUBLISH_ADDRESS."""
    expected = {"etcd": {PORTS["etcd"]}, "node": {PORTS["engine"]},
                "router": {PORTS["router"]}, "gateway": {PORTS["gateway"]},
                "prometheus": {PORTS["prometheus"]}, "grafana": {PORTS["grafana"]}}
    for kind, doc in deployments(gpu, cpu):
        for name, service in doc["services"].items():
            ports = published_ports(service)
            for ip, published, target in ports:
                assert published == target, f"{kind}/{name}: {published}->{target}"
                assert ip == "127.0.0.1", f"{kind}/{name}: port {published} is public"
            if name in expected:
                assert {p for _, p, _ in ports} == expected[name], f"{kind}/{name}"
        for role, port in (("scheduler", 10815), ("node", 10816), ("router", 18081),
                           ("gateway", 8081)):
            listen = doc["services"][role]["environment"]["NEBULA_LISTEN"]
            assert listen == f"0.0.0.0:{port}", f"{kind}/{role} listens on {listen}"


def test_healthchecks_and_startup_order(gpu: dict[str, Any], cpu: dict[str, Any]) -> None:
    for kind, doc in deployments(gpu, cpu):
        services = doc["services"]
        for name, service in services.items():
            one_shot = service.get("restart") == "no"
            check = service.get("healthcheck")
            assert one_shot or (check and check["test"][0] in ("CMD", "CMD-SHELL")), \
                f"{kind}/{name}"
            for dep, cond in service.get("depends_on", {}).items():
                assert dep in services, f"{kind}/{name} depends on unknown {dep}"
                expected = ("service_completed_successfully" if services[dep].get("restart")
                            == "no" else "service_healthy")
                assert cond["condition"] == expected, f"{kind}/{name} -> {dep}"
        for role in ROLES:
            test = " ".join(services[role]["healthcheck"]["test"])
            port = services[role]["environment"]["NEBULA_LISTEN"].rpartition(":")[2]
            assert f"127.0.0.1:{port}/healthz" in test, f"{kind}/{role}: {test}"
        assert "etcdctl" in services["etcd"]["healthcheck"]["test"]
        # etcd first, then its auth bootstrap, then every role that talks to etcd.
        assert "etcd" in services["etcd-auth"]["depends_on"]
        for role in ("scheduler", "node", "router"):
            assert "etcd-auth" in services[role]["depends_on"], role
        assert "router" in services["gateway"]["depends_on"]


def test_every_etcd_client_has_its_own_user(gpu: dict[str, Any]) -> None:
    services = gpu["services"]
    users = set()
    for role in ("scheduler", "node", "router"):
        env = services[role]["environment"]
        user = env["NEBULA_ETCD_USERNAME"]
        assert env["NEBULA_ETCD_PASSWORD_FILE"] == f"/run/nebula/etcd/{user}"
        assert "etcd-credentials:/run/nebula/etcd:ro" in services[role]["volumes"], role
        users.add(user)
    assert users == {"nebula-scheduler", "nebula-node", "nebula-router"}
    assert "NEBULA_ETCD_USERNAME" not in services["gateway"]["environment"]


def test_services_reach_each_other_by_compose_names(gpu: dict[str, Any]) -> None:
    services = gpu["services"]
    for role in ROLES:
        assert services[role]["environment"]["NEBULA_ETCD_ENDPOINTS"] == "etcd:2379"
    assert services["gateway"]["environment"]["NEBULA_ROUTER_URL"] == "http://router:18081"
    node_env = services["node"]["environment"]
    assert node_env["NEBULA_ADVERTISE_HOST"] in (services["node"].get("hostname"), "node")


def test_grafana_and_prometheus_mount_the_provisioned_files(gpu: dict[str, Any]) -> None:
    for name in ("prometheus", "grafana"):
        for volume in gpu["services"][name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (REPO / source).exists(), f"{name} mounts missing {source}"
    grafana = " ".join(gpu["services"]["grafana"]["volumes"])
    assert "deploy/grafana/provisioning:/etc/grafana/provisioning" in grafana
    assert "deploy/grafana/dashboards:/etc/grafana/dashboards" in grafana


@pytest.mark.parametrize("role", ROLES)
def test_every_nebula_variable_is_read_by_the_service(role: str, gpu: dict[str, Any],
                                                      cpu: dict[str, Any]) -> None:
    known = env_vars_read(SCRIPT[role])
    assert "NEBULA_LISTEN" in known  # the --help parse itself works
    for kind, doc in deployments(gpu, cpu):
        env = doc["services"][role]["environment"]
        assert isinstance(env, dict), "environment as a mapping (merged by key)"
        unknown = {k for k in env if k.startswith("NEBULA_")} - known
        assert not unknown, f"{kind}/{role} sets variables nebula-{role} does not read: {unknown}"


@pytest.mark.parametrize("path", [BASE, CPU], ids=lambda p: p.name)
def test_every_interpolated_variable_has_a_default(path: Path) -> None:
    """`docker compose up` with no .env works: each ${VAR} names its default."""
    text = "\n".join(line for line in path.read_text().splitlines()
                     if not line.lstrip().startswith("#"))
    for match in re.finditer(r"(?<!\$)\$\{([^}]*)\}", text):  # $${X} is the container's
        assert ":-" in match.group(1), f"{path.name}: ${{{match.group(1)}}} has no default"


def test_images_match_the_nomad_job_defaults(gpu: dict[str, Any]) -> None:
    variables = blocks(load_nomad(REPO / "nomad" / "nebula.nomad"), "variable")
    for role in ROLES:
        assert variables[f"{role}_image"]["default"] == gpu["services"][role]["image"], role
    assert variables["etcd_image"]["default"] == gpu["services"]["etcd"]["image"]


@pytest.mark.parametrize("password, starts", [
    (None, False), ("", False), ("admin", False), ("a-long-secret", True)])
def test_grafana_has_no_default_admin_password(gpu: dict[str, Any], tmp_path: Path,
                                               password: str | None, starts: bool) -> None:
    """Grafana's entrypoint, run as the container would run it (``$$`` is Compose's ``$``):
    without a real password it stops with one line; with one it hands over to /run.sh
    (absent here, so the shell's "not found" proves the guard let it through)."""
    import os
    import subprocess
    grafana = gpu["services"]["grafana"]
    assert interpolation_defaults(grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"]) == ""
    argv = [part.replace("$$", "$") for part in grafana["entrypoint"]]
    env = {k: v for k, v in os.environ.items() if k != "GF_SECURITY_ADMIN_PASSWORD"}
    if password is not None:
        env["GF_SECURITY_ADMIN_PASSWORD"] = password
    out = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=10)
    if starts:
        assert out.returncode == 127 and "/run.sh" in out.stderr, out
    else:
        assert out.returncode == 78, out
        assert out.stderr.strip() == ("grafana: set GRAFANA_ADMIN_PASSWORD (not empty, not admin) "
                                      "to start it")
