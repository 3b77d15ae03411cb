"""nomad/nebula.nomad: parses as HCL2 and describes the documented topology.

There is no Nomad binary here; python-hcl2 parses the job and the tests read its meaning:
groups and tasks, static ports, the GPU device, service checks, variables, templates
rendered from Nomad's service discovery, update and restart stanzas.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.deploy.deploylib import (
    PORTS,
    REPO,
    ROLES,
    block_list,
    blocks,
    env_vars_read,
    load_nomad,
    parse_dockerfile,
)

JOB_FILE = REPO / "nomad" / "nebula.nomad"
ROLE_PORT = {"scheduler": PORTS["scheduler"], "node": PORTS["node"], "router": PORTS["router"],
             "gateway": PORTS["gateway"]}


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return load_nomad(JOB_FILE)


@pytest.fixture(scope="module")
def job(doc: dict[str, Any]) -> dict[str, Any]:
    jobs = blocks(doc, "job")
    assert list(jobs) == ["nebula"]
    return jobs["nebula"]


@pytest.fixture(scope="module")
def groups(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return blocks(job, "group")


def only_task(group: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The group's one long-running task; others may only be prestart steps."""
    tasks = blocks(group, "task")
    main = {name: t for name, t in tasks.items() if not block_list(t, "lifecycle")}
    assert len(main) == 1, list(tasks)
    return next(iter(main.items()))


def static_ports(group: dict[str, Any]) -> dict[str, int]:
    (network,) = block_list(group, "network")
    return {label: body["static"] for label, body in blocks(network, "port").items()}


def rendered_env(task: dict[str, Any]) -> dict[str, str]:
    """Variables a task gets: its env block plus `env = true` templates' KEY=value lines."""
    env = {}
    for block in block_list(task, "env"):
        env.update(block)
    for template in block_list(task, "template"):
        if template.get("env") is True:
            for line in template["data"].splitlines():
                key, sep, value = line.partition("=")
                if sep and re.fullmatch(r"[A-Z_][A-Z0-9_]*", key):
                    env[key] = value
    return env


def test_variables(doc: dict[str, Any]) -> None:
    variables = blocks(doc, "variable")
    for name in ("scheduler_image", "node_image", "router_image", "gateway_image", "etcd_image",
                 "model", "model_uid", "engine", "replicas", "etcd_endpoints", "node_count"):
        assert name in variables, name
        assert "default" in variables[name], f"variable {name} needs a default"
    assert variables["model"]["default"] == "Qwen/Qwen2.5-0.5B-Instruct"
    assert variables["engine"]["default"] == "vllm"
    assert variables["replicas"]["type"] == "number"
    assert variables["etcd_endpoints"]["default"] == ""
    assert variables["etcd_image"]["default"].startswith("quay.io/coreos/etcd:v3.5.")


def test_groups_and_tasks(job: dict[str, Any], groups: dict[str, dict[str, Any]]) -> None:
    assert job["type"] == "service"
    assert set(groups) == {"etcd", *ROLES}
    for name, group in groups.items():
        task_name, task = only_task(group)
        assert task_name == name
        assert task["driver"] == "docker"
        (config,) = block_list(task, "config")
        assert config["image"] == f"${{var.{name}_image}}"
        assert block_list(group, "restart"), f"{name}: restart stanza"


def test_bundled_etcd_only_without_external_endpoints(groups: dict[str, dict[str, Any]]) -> None:
    assert groups["etcd"]["count"] == '${var.etcd_endpoints == "" ? 1 : 0}'
    assert static_ports(groups["etcd"])["client"] == PORTS["etcd"]
    (disk,) = block_list(groups["etcd"], "ephemeral_disk")
    assert disk["sticky"] is True
    _, task = only_task(groups["etcd"])
    (config,) = block_list(task, "config")
    assert any(a.startswith("--data-dir=/alloc/data") for a in config["args"])


def test_static_ports_as_documented(groups: dict[str, dict[str, Any]]) -> None:
    for role, port in ROLE_PORT.items():
        assert static_ports(groups[role])["http"] == port, role
    assert static_ports(groups["node"])["engine"] == PORTS["engine"]
    for role in ("router", "gateway", "node"):
        constraints = block_list(groups[role], "constraint")
        assert {"operator": "distinct_hosts", "value": "true"} in constraints, role


def test_service_registrations_with_http_health_checks(groups: dict[str, dict[str, Any]]) -> None:
    for name, group in groups.items():
        (service,) = block_list(group, "service")
        assert service["name"] == f"nebula-{name}"
        assert service["provider"] == "nomad"
        assert service["port"] in static_ports(group)
        (check,) = block_list(service, "check")
        assert check["type"] == "http"
        assert check["path"] == ("/health" if name == "etcd" else "/healthz")


def test_node_group_runs_on_gpu_clients(groups: dict[str, dict[str, Any]]) -> None:
    node = groups["node"]
    assert node["count"] == "${var.node_count}"
    _, task = only_task(node)
    (resources,) = block_list(task, "resources")
    devices = blocks(resources, "device")
    assert list(devices) == ["nvidia/gpu"]
    assert devices["nvidia/gpu"]["count"] == "${var.gpus_per_node}"
    (config,) = block_list(task, "config")
    assert config["network_mode"] == "host", "engines bind the client's ports"
    assert config["shm_size"] >= 2 ** 30, "vLLM needs shared memory"
    env = rendered_env(task)
    assert env["NEBULA_ADVERTISE_HOST"] == "${attr.unique.network.ip-address}"
    assert env["NEBULA_NODE_ID"] == "${node.unique.name}"
    assert int(task["kill_timeout"].rstrip("s")) >= 30, "time to stop the engines"
    (update,) = block_list(node, "update")
    assert update["health_check"] == "checks" and update["auto_revert"] is True


def test_router_and_gateway_run_workers(doc: dict[str, Any],
                                        groups: dict[str, dict[str, Any]]) -> None:
    for role in ("router", "gateway"):
        _, task = only_task(groups[role])
        assert rendered_env(task)["NEBULA_WORKERS"] == "${var.workers}", role
        (resources,) = block_list(task, "resources")
        assert "var.workers" in str(resources["cpu"]), "cpu grows with the workers"


def test_update_stanza(job: dict[str, Any]) -> None:
    (update,) = block_list(job, "update")
    assert update["health_check"] == "checks"
    assert update["max_parallel"] == 1
    assert update["auto_revert"] is True


ETCD_CLIENTS = {"scheduler": "nebula-scheduler", "router": "nebula-router", "node": "nebula-node"}


def test_endpoints_rendered_from_service_discovery(groups: dict[str, dict[str, Any]]) -> None:
    for role in ETCD_CLIENTS:
        _, task = only_task(groups[role])
        etcd = rendered_env(task)["NEBULA_ETCD_ENDPOINTS"]
        assert "${var.etcd_endpoints}" in etcd, role
        assert 'nomadService "nebula-etcd"' in etcd, role
    _, gateway = only_task(groups["gateway"])
    routers = rendered_env(gateway)["NEBULA_ROUTER_URL"]
    assert 'nomadService "nebula-router"' in routers and "http://" in routers
    for role in ROLES:
        _, task = only_task(groups[role])
        for template in block_list(task, "template"):
            assert template["change_mode"] == "restart", f"{role}: re-render restarts the task"


def test_scheduler_places_the_model_from_variables(groups: dict[str, dict[str, Any]]) -> None:
    _, task = only_task(groups["scheduler"])
    env = rendered_env(task)
    assert env["NEBULA_MODEL_NAME"] == "${var.model}"
    assert env["NEBULA_MODEL_UID"] == "${var.model_uid}"
    assert env["NEBULA_ENGINE"] == "${var.engine}"
    assert env["NEBULA_REPLICAS"] == "${var.replicas}"
    assert env["NEBULA_PORT"] == str(PORTS["engine"])


@pytest.mark.parametrize("role", ROLES)
def test_every_nebula_variable_is_read_by_the_service(role: str,
                                                      groups: dict[str, dict[str, Any]]) -> None:
    _, task = only_task(groups[role])
    env = rendered_env(task)
    assert env["NEBULA_LISTEN"] == f"0.0.0.0:{ROLE_PORT[role]}"
    unknown = {k for k in env if k.startswith("NEBULA_")} - env_vars_read(f"nebula-{role}")
    assert not unknown, f"{role} task sets variables nebula-{role} does not read: {unknown}"


def test_node_image_default_is_the_gpu_target(doc: dict[str, Any]) -> None:
    stages = [s.name for s in parse_dockerfile(REPO / "services/node/Dockerfile")[1]]
    assert "gpu" in stages
    assert blocks(doc, "variable")["node_image"]["default"].endswith("-gpu")


def test_readme_explains_how_to_run_it() -> None:
    text = (REPO / "nomad" / "README.md").read_text()
    for needle in ("nomad job run", "nvidia", "docker", "etcd_endpoints", "service discovery"):
        assert needle.lower() in text.lower(), needle


def test_etcd_serves_tls_to_clients_with_certificates(groups: dict[str, dict[str, Any]]) -> None:
    _, task = only_task(groups["etcd"])
    (config,) = block_list(task, "config")
    args = config["args"]
    assert "--listen-client-urls=https://0.0.0.0:2379" in args
    assert "--client-cert-auth=true" in args
    for flag in ("--cert-file=", "--key-file=", "--trusted-ca-file="):
        (path,) = [a.split("=", 1)[1] for a in args if a.startswith(flag)]
        rendered = {t["destination"] for t in block_list(task, "template")}
        assert path.removeprefix("/") in rendered, f"{flag} {path} is rendered from secrets"
    (service,) = block_list(groups["etcd"], "service")
    (check,) = block_list(service, "check")
    assert check["port"] == "metrics" and check["path"] == "/health"


@pytest.mark.parametrize("role", sorted(ETCD_CLIENTS))
def test_each_etcd_client_logs_in_as_its_own_user(role: str,
                                                  groups: dict[str, dict[str, Any]]) -> None:
    _, task = only_task(groups[role])
    env = rendered_env(task)
    assert env["NEBULA_ETCD_USERNAME"] == ETCD_CLIENTS[role]
    rendered = {t["destination"]: t for t in block_list(task, "template")}
    for var in ("NEBULA_ETCD_PASSWORD_FILE", "NEBULA_ETCD_CA_CERT", "NEBULA_ETCD_CERT",
                "NEBULA_ETCD_KEY"):
        path = env[var].removeprefix("/")
        assert path.startswith("secrets/") and path in rendered, (role, var)
        assert rendered[path]["perms"] == "0600"
        assert 'nomadVar "nomad/jobs/nebula"' in rendered[path]["data"]


def test_etcd_auth_runs_before_the_scheduler(groups: dict[str, dict[str, Any]]) -> None:
    task = blocks(groups["scheduler"], "task")["etcd-auth"]
    (hook,) = block_list(task, "lifecycle")
    assert hook["hook"] == "prestart" and hook["sidecar"] is False
    (config,) = block_list(task, "config")
    assert config["entrypoint"] == ["nebula-etcd-auth"]
    users = {t["destination"] for t in block_list(task, "template")}
    for user in ("root", *ETCD_CLIENTS.values()):
        assert f"secrets/etcd-users/{user}" in users, user


def test_the_gateway_has_no_etcd_access(groups: dict[str, dict[str, Any]]) -> None:
    _, task = only_task(groups["gateway"])
    assert not any(k.startswith("NEBULA_ETCD") for k in rendered_env(task))
