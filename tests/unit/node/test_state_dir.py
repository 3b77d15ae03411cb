"""Where a node keeps its pid files and engine logs when --state-dir is not given."""

from __future__ import annotations

from pathlib import Path

from nebula_node.main import default_state_dir


def test_default_state_dir_follows_xdg_state_home() -> None:
    assert default_state_dir("n1", {"XDG_STATE_HOME": "/var/state"}) == \
        Path("/var/state/nebula/node/n1")


def test_unset_empty_or_relative_xdg_state_home_means_the_home_state_dir() -> None:
    home = Path.home() / ".local" / "state" / "nebula" / "node" / "n1"
    for env in ({}, {"XDG_STATE_HOME": ""}, {"XDG_STATE_HOME": "relative/dir"}):
        assert default_state_dir("n1", env) == home, env

