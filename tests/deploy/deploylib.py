"""Readers for the deployment bundle, shared by the tests under tests/deploy/.

Compose files (with Compose's ``!reset``/``!override`` tags and its merge rules), Dockerfiles
(stages and instructions), the Nomad job (python-hcl2 output without quoting noise), the
flags each role reads (from its real ``--help``) and the Grafana dashboards' PromQL.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = REPO / "tests" / "schemas"
COMPOSE_SCHEMA = SCHEMAS / "compose-spec.json"
BIN = Path(__import__("sys").executable).parent

ROLES = ("scheduler", "node", "router", "gateway")
# Documented ports (docs/architecture.md section 2).
PORTS = {"etcd": 2379, "engine": 10814, "scheduler": 10815, "node": 10816, "router": 18081,
         "gateway": 8081, "prometheus": 9090, "grafana": 3000}

# Dashboard panels that only have data on a host with NVIDIA GPUs: the live PromQL test skips
# them by (dashboard uid, panel title).
GPU_PANELS = {
    ("nebula-fleet", "GPU memory used"),
    ("nebula-fleet", "GPU memory used ratio"),
}


# ---- compose ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Reset:
    """Compose's ``!reset`` tag: remove the value inherited from the files before."""

    value: Any = None


@dataclass(frozen=True)
class Override:
    """Compose's ``!override`` tag: replace the inherited value instead of merging."""

    value: Any = None


class ComposeLoader(yaml.SafeLoader):
    """Safe YAML loader that understands Compose's merge tags."""


def _tagged(cls: type) -> Any:
    def construct(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
        if isinstance(node, yaml.MappingNode):
            return cls(loader.construct_mapping(node, deep=True))
        if isinstance(node, yaml.SequenceNode):
            return cls(loader.construct_sequence(node, deep=True))
        return cls(loader.construct_scalar(node) or None)
    return construct


ComposeLoader.add_constructor("!reset", _tagged(Reset))
ComposeLoader.add_constructor("!override", _tagged(Override))


def load_compose(path: Path) -> dict[str, Any]:
    with open(path) as fh:
        return yaml.load(fh, Loader=ComposeLoader)  # a SafeLoader subclass


def strip_tags(doc: Any) -> Any:
    """The document as plain YAML data (what the schema sees): tags replaced by their value."""
    if isinstance(doc, Reset | Override):
        return strip_tags(doc.value)
    if isinstance(doc, dict):
        return {k: strip_tags(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [strip_tags(v) for v in doc]
    return doc


# Sequences that Compose replaces instead of appending (docs: "Merge and override").
_REPLACED_SEQUENCES = {"command", "entrypoint", "test", "profiles"}
# Sequences merged by a key (volumes and devices by their target; ports are appended).
_UNIQUE_BY = {"volumes": lambda v: v.split(":")[1] if isinstance(v, str) and ":" in v else
              (v.get("target") if isinstance(v, dict) else v)}


def merge_compose(base: Any, override: Any, key: str = "") -> Any:
    """Merge two Compose documents the way ``docker compose -f a -f b`` does (the parts used)."""
    if isinstance(override, Reset):
        return None
    if isinstance(override, Override):
        return strip_tags(override.value)
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for k, v in override.items():
            if isinstance(v, Reset):
                merged.pop(k, None)
            elif k in merged:
                merged[k] = merge_compose(merged[k], v, k)
            else:
                merged[k] = strip_tags(v)
        return merged
    if isinstance(base, list) and isinstance(override, list) and key not in _REPLACED_SEQUENCES:
        ident = _UNIQUE_BY.get(key, lambda v: json.dumps(v, sort_keys=True))
        out = {ident(v): v for v in base}
        out.update({ident(v): v for v in strip_tags(override)})
        return list(out.values())
    return copy.deepcopy(strip_tags(override))


def published_ports(service: dict[str, Any]) -> list[tuple[str, int, int]]:
    """``(host_ip, published, target)`` for each short-syntax port of a service."""
    result = []
    for spec in service.get("ports", []):
        parts = interpolation_defaults(str(spec)).split(":")
        if len(parts) == 3:
            ip, pub, target = parts
        elif len(parts) == 2:
            ip, (pub, target) = "", parts
        else:
            ip, pub, target = "", parts[0], parts[0]
        result.append((ip, int(pub), int(target.split("/")[0])))
    return result


def interpolation_defaults(value: str) -> str:
    """Replace ``${VAR:-default}`` and ``${VAR}`` with the default (or empty), like an empty env."""
    return re.sub(r"\$\{([A-Z0-9_]+)(?::?-([^}]*))?\}", lambda m: m.group(2) or "", value)


# ---- roles' flags ----------------------------------------------------------------------------
_help_cache: dict[str, str] = {}


def role_help(script: str) -> str:
    """The ``--help`` text of a console script in this virtualenv (cached)."""
    if script not in _help_cache:
        out = subprocess.run([str(BIN / script), "--help"], capture_output=True, text=True,
                             timeout=60, check=True)
        _help_cache[script] = out.stdout
    return _help_cache[script]


def env_vars_read(script: str) -> set[str]:
    """Every ``NEBULA_*`` variable a role reads: its flags' ``[env NEBULA_X]`` help suffixes."""
    return set(re.findall(r"\[env\s+(NEBULA_[A-Z0-9_]+)\]", role_help(script)))


# ---- Dockerfiles -----------------------------------------------------------------------------
@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, cmd: str) -> list[str]:
        return [args for c, args in self.instructions if c == cmd]


def parse_dockerfile(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """Global ``ARG`` defaults and the stages, each with its (INSTRUCTION, arguments) list."""
    text = path.read_text()
    logical: list[str] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue  # comment lines inside a continued instruction
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        logical.append(buf + line)
        buf = ""
    if buf:
        logical.append(buf)
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        cmd, _, rest = line.partition(" ")
        cmd, rest = cmd.upper(), re.sub(r"\s+", " ", rest.strip())
        if cmd == "FROM":
            words = rest.split()
            base = words[0]
            for k, v in args.items():
                base = base.replace("${" + k + "}", v).replace("$" + k, v)
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(name, base))
        elif not stages and cmd == "ARG":
            k, _, v = rest.partition("=")
            args[k] = v
        else:
            stages[-1].instructions.append((cmd, rest))
    return args, stages


def exec_form(args: str) -> list[str]:
    """A JSON (exec form) instruction argument, e.g. ENTRYPOINT/CMD/HEALTHCHECK CMD."""
    return json.loads(args)


def copy_sources(args: str) -> tuple[list[str], str, str | None]:
    """``COPY [--from=x] src... dest`` -> (sources, dest, from-stage)."""
    words = shlex.split(args)
    frm = None
    while words and words[0].startswith("--"):
        opt = words.pop(0)
        if opt.startswith("--from="):
            frm = opt.split("=", 1)[1]
    return words[:-1], words[-1], frm


def env_assignments(args: str) -> dict[str, str]:
    """``ENV A=1 B=2`` -> {"A": "1", "B": "2"}."""
    return dict(w.split("=", 1) for w in shlex.split(args))


# ---- Nomad -----------------------------------------------------------------------------------
def _unquote(value: Any) -> Any:
    if isinstance(value, str):
        if value.startswith('"<<') and value.endswith('"'):
            value = value[1:-1]
            lines = value.splitlines()[1:-1]  # drop the heredoc markers
            return "\n".join(line.strip() for line in lines)
        if len(value) >= 2 and value[0] == value[-1] == '"':
            return value[1:-1]
    return value


def normalize_hcl(doc: Any) -> Any:
    """python-hcl2's output without ``__is_block__``/comments and with plain strings."""
    if isinstance(doc, dict):
        return {_unquote(k): normalize_hcl(v) for k, v in doc.items()
                if k not in ("__is_block__", "__comments__", "__inline_comments__")}
    if isinstance(doc, list):
        return [normalize_hcl(v) for v in doc]
    return _unquote(doc)


def load_nomad(path: Path) -> dict[str, Any]:
    import hcl2

    with open(path) as fh:
        return normalize_hcl(hcl2.load(fh))


def blocks(parent: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    """Labelled blocks of one kind (``group "x" {}``) as {label: body}."""
    out: dict[str, dict[str, Any]] = {}
    for item in parent.get(kind, []):
        for label, body in item.items():
            out[label] = body
    return out


def block_list(parent: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    """Unlabelled blocks of one kind (``check {}``)."""
    return list(parent.get(kind, []))


# ---- Grafana ---------------------------------------------------------------------------------
DASHBOARDS = REPO / "deploy" / "grafana" / "dashboards"


@dataclass(frozen=True)
class PanelQuery:
    dashboard: str
    panel: str
    ref_id: str
    expr: str


def dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def iter_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # collapsed rows


def panel_queries() -> list[PanelQuery]:
    queries = []
    for dash in dashboards().values():
        for panel in iter_panels(dash):
            for target in panel.get("targets", []):
                queries.append(PanelQuery(dash["uid"], panel["title"], target["refId"],
                                          target["expr"]))
    return queries


def concrete_promql(expr: str, rate_interval: str = "5m") -> str:
    """A panel expression as Prometheus itself can run it: Grafana variables filled in."""
    return (expr.replace("$__rate_interval", rate_interval)
            .replace("$__interval", rate_interval)
            .replace('"$model"', '".*"'))


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (ours and the engines')."""
    names = set(re.findall(r"(?<![\w:])((?:nebula_|vllm:)[A-Za-z0-9_:]+)(?![\w:(])", expr))
    if re.search(r"(?<![\w:])up\s*\{", expr):
        names.add("up")
    return names
