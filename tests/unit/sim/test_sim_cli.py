"""``nebula-sim`` flag parsing: names, aliases and one-line errors."""

from __future__ import annotations

import pytest

from nebula_node.sim.main import build_parser, engine_from_args


def engine(*argv: str):
    parser = build_parser()
    return engine_from_args(parser.parse_args(list(argv)), parser)


def test_model_name_and_served_aliases() -> None:
    e = engine("--model-name", "Qwen/Qwen2.5", "--served-model-name", "qwen", "q2",
               "--ttft-ms", "5", "--max-concurrency", "3", "--crash-after", "7")
    assert e.served_names == ["Qwen/Qwen2.5", "qwen", "q2"]
    assert e.faults.ttft_ms == 5 and e.admission.limit == 3 and e.crash_at == 7
    # vLLM style: only --served-model-name given.
    assert engine("--served-model-name", "only").served_names == ["only"]


def test_environment_sets_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEBULA_ITL_MS", "12.5")
    monkeypatch.setenv("NEBULA_HANG", "true")
    e = engine("--model-name", "m")
    assert e.faults.itl_ms == 12.5 and e.faults.hang is True


@pytest.mark.parametrize("argv", [
    [], ["--model-name", "m", "--fail-rate", "1.5"], ["--model-name", "m", "--itl-ms", "-1"],
    ["--model-name", "m", "--ttft-ms", "soon"], ["--model-name", "m", "--prefix-block-chars", "6"],
    ["--model-name", "m", "--no-such-flag"],
])
def test_bad_flags_are_one_line_errors(argv: list[str],
                                       capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        engine(*argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("nebula-sim: error:")
