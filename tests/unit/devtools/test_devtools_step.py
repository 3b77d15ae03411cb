"""devtools.step: elapsed-time text, what a step shows of its log, the recorded times."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from devtools import step

LOCATION = ("WARNING: Location 'file:///opt/pypi/simple/pip/' is ignored: it is neither a file "
            "nor a directory.")


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s"), (59.9, "59s"), (60, "1m00s"), (130, "2m10s"), (3599, "59m59s"), (3720, "1h02m")])
def test_elapsed(seconds: float, text: str) -> None:
    assert step.elapsed(seconds) == text


def test_machine_pip_config_warnings_are_noise_and_real_warnings_are_not() -> None:
    lines = [LOCATION, "", "WARNING: pip is being invoked by an old script wrapper",
             "Collecting x", "ERROR: No matching distribution found for y"]
    assert step.without_noise(lines) == lines[2:]
    assert step.worth_reading(lines) == [lines[2], lines[4]]


def test_outcome_names_pytest_exit_5() -> None:
    assert step.outcome("tests", 0, 65, ["pytest"]) == "tests: done in 1m05s"
    assert step.outcome("tests", 5, 1, [sys.executable, "-m", "pytest", "-q"]) == (
        "tests: FAILED (exit 5: pytest collected no tests) after 1s")
    assert "pytest collected no tests" in step.outcome("tests", 5, 1, [".venv/bin/pytest"])
    assert step.outcome("lint", 5, 1, ["ruff"]) == "lint: FAILED (exit 5) after 1s"
    assert "killed by signal 9" in step.outcome("build", -9, 1, ["pip"])


def test_logged_step_hides_noise_and_shows_the_tail_on_failure(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    times = tmp_path / "times.tsv"
    monkeypatch.setenv(step.TIMES_ENV, str(times))
    script = f"print({LOCATION!r}); print('WARNING: kept'); print('chatter')"
    ok = step.main(["fine", "--log", str(tmp_path / "ok.log"), "--",
                    sys.executable, "-c", script])
    shown = capsys.readouterr().out
    assert ok == 0
    assert "WARNING: kept" in shown and "chatter" not in shown and "Location" not in shown
    assert "fine: done in" in shown
    assert "chatter" in (tmp_path / "ok.log").read_text()

    bad = step.main(["broken", "--log", str(tmp_path / "bad.log"), "--", sys.executable, "-c",
                     script + "; import sys; sys.exit(3)"])
    shown = capsys.readouterr().out
    assert bad == 3
    assert "chatter" in shown and "Location" not in shown
    assert "broken: FAILED (exit 3)" in shown and str(tmp_path / "bad.log") in shown

    assert step.main(["--summary", str(times)]) == 0
    table = capsys.readouterr().out
    assert "fine" in table and "broken  FAILED (exit 3)" in table and "total" in table


def test_streamed_step_passes_the_exit_status_through(capsys: pytest.CaptureFixture[str]) -> None:
    assert step.main(["check", "--", sys.executable, "-c", "raise SystemExit(5)"]) == 5
    assert "check: FAILED (exit 5)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        step.main(["no-command"])
