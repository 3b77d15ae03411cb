"""Policy profiles: the YAML format, its one-line errors, the registry and the sample file."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from nebula_router.policy import (
    PRESETS,
    Candidate,
    Need,
    Pipeline,
    PolicyError,
    RouteKeys,
    Settings,
    load_profile,
    parse_profile,
)
from nebula_router.policy.pickers.p2c import P2C
from nebula_router.policy.plugin import Options
from nebula_router.policy.profile import DEFAULT_FILTERS
from nebula_router.policy.registry import FILTERS, PICKERS, SCORERS

SAMPLE = Path(__file__).resolve().parents[4] / "deploy" / "router" / "policy-prefix.yaml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "my-policy.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_sample_profile_loads_builds_and_routes_by_prefix() -> None:
    profile = load_profile(SAMPLE)
    pipeline = Pipeline.build(profile, Settings(rng=random.Random(1)))
    described = pipeline.describe()
    assert described == {
        "name": "prefix-weighted", "kind": "profile", "path": str(SAMPLE),
        "filters": ["ready", "not-ejected", "not-overloaded"],
        "scorers": {"prefix-affinity": 1.0, "load": 2.0}, "picker": ["max-score"],
        "needs": ["prefix"]}
    cands = [Candidate("m", f"r{i}") for i in range(3)]
    keys = RouteKeys(prefix="system:be brief\nuser:hi")
    first, reason = pipeline.choose(cands, keys, 0.0)
    assert reason == "max_score"
    assert all(pipeline.choose(cands, keys, 0.0)[0] is first for _ in range(20))


def test_minimal_profile_defaults(tmp_path: Path) -> None:
    profile = load_profile(write(tmp_path, "picker: p2c\n"))
    assert profile.name == "my-policy"  # the file name
    assert [f.name for f in profile.filters] == list(DEFAULT_FILTERS)
    assert profile.scorers == () and [p.name for p in profile.picker] == ["p2c"]


def test_spec_round_trips_and_options_survive() -> None:
    data = {"name": "mix", "filters": ["ready"],
            "scorers": {"session-affinity": {"weight": 0.5, "user": True}, "load": 1},
            "picker": [{"session-affinity": {"user": True}}, "p2c"]}
    profile = parse_profile(data, name="x")
    assert parse_profile(profile.spec(), name="y") == profile
    pipeline = Pipeline.build(profile)
    assert pipeline.needs == Need.SESSION | Need.SESSION_USER
    assert pipeline.describe()["scorers"] == {"session-affinity": {"weight": 0.5, "user": True},
                                              "load": 1.0}


def test_every_preset_is_a_valid_profile() -> None:
    for name, profile in PRESETS.items():
        assert profile.kind == "preset" and profile.name == name
        assert parse_profile(profile.spec(), name=name, kind="preset") == profile


@pytest.mark.parametrize(("text", "message"), [
    ("picker: p2c\nscorer: {}\n", "unknown key 'scorer'"),
    ("filters: [ready]\n", "'picker' is required"),
    ("picker: fastest\n", "unknown picker 'fastest' (known: max-score, p2c, "),
    ("picker: p2c\nfilters: [ready, healthy]\n", "unknown filter 'healthy'"),
    ("picker: max-score\nscorers: {kv-cache: 1}\n", "unknown scorer 'kv-cache'"),
    ("picker: max-score\nscorers: {load: 0}\n", "scorer 'load': the weight must be a number "
                                               "above 0, got 0"),
    ("picker: max-score\nscorers: {load: heavy}\n", "above 0, got 'heavy'"),
    ("picker: max-score\nscorers: [load]\n", "'scorers' must map scorer names to weights"),
    ("picker: []\n", "'picker' must be a name or a non-empty list"),
    ("picker: [p2c, random]\n", "picker 'p2c' always chooses: it must be the last picker"),
    ("picker: [session-affinity]\n", "picker 'session-affinity' passes requests it cannot "
                                     "place"),
    ("picker: [{session-affinity: {sticky: true}}, p2c]\n",
     "picker 'session-affinity': unknown option 'sticky'"),
    ("picker: [{p2c: 3}]\n", "picker 'p2c': options must be a mapping"),
    ("name: 'no spaces'\npicker: p2c\n", "'name' must be letters"),
    ("- p2c\n", "a profile is a mapping"),
    ("picker: [p2c\n", "not valid YAML"),
])
def test_bad_profiles_are_one_line_errors(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(PolicyError) as err:
        Pipeline.build(load_profile(path))
    line = str(err.value)
    assert "\n" not in line and line.startswith(str(path)) and message in line, line


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match=r"cannot read policy profile .*nope\.yaml: No such file"):
        load_profile(tmp_path / "nope.yaml")


def test_every_registered_plugin_builds_and_declares_its_needs() -> None:
    settings = Settings(max_in_flight=4)  # every filter active
    plugins: list[object] = [make(settings, Options(name)) for name, make in FILTERS.items()]
    plugins += [make(settings, Options(name)) for name, make in SCORERS.items()]
    for name, make in PICKERS.items():
        try:
            plugins.append(make(settings, Options(name), None))
        except PolicyError:  # an affinity picker: it needs a next picker
            plugins.append(make(settings, Options(name), P2C(random.Random())))
    assert all(isinstance(getattr(p, "needs", None), Need) for p in plugins)
    assert len(plugins) == len(FILTERS) + len(SCORERS) + len(PICKERS)
