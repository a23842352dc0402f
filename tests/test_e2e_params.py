"""End to end, on a copy of the tiny profile's built repo: a changed param re-runs exactly the stages
that depend on it, in the workspace and in a `dvc exp run --temp` copy."""

from __future__ import annotations

from pathlib import Path

import pytest

from .repro import ran, run

pytestmark = pytest.mark.e2e


def _with_param(repo: Path, section: str, key: str, value) -> str:
    """params.yaml with one value changed; returns the original text."""
    import yaml

    params = repo / "params.yaml"
    original = params.read_text()
    changed = yaml.safe_load(original)
    assert changed[section][key] != value
    changed[section][key] = value
    params.write_text(yaml.safe_dump(changed, sort_keys=False))
    return original


def test_changing_one_param_reruns_exactly_its_dependents(tiny_repo):
    params = tiny_repo / "params.yaml"
    original = _with_param(tiny_repo, "report", "figure_dpi", 80)  # a leaf: nothing else
    try:
        assert ran(run(["dvc", "repro"], tiny_repo)) == {"report"}
    finally:
        params.write_text(original)
    assert ran(run(["dvc", "repro"], tiny_repo)) == {"report"}  # back to the profile's figures
    assert "changed" not in run(["dvc", "status"], tiny_repo).lower()
    # a queued/--temp experiment runs in a fresh copy without the resumable work folders: the stages
    # upstream are checked out from the cache, not redone (they would be, were the folders DVC outputs)
    # (a dpi no earlier run used: the run cache cannot answer for the report either). The run is committed
    # first, as a user's would be: the copy carries changes to tracked files, not untracked metrics files
    # (cache: false) that stages off in the default profile wrote, which would then look missing.
    run(["git", "add", "-A"], tiny_repo)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "tiny repro"], tiny_repo)
    out = run(["dvc", "exp", "run", "--temp", "-S", "report.figure_dpi=72"], tiny_repo)
    assert ran(out) == {"report"}, out

    _with_param(tiny_repo, "ppo", "iterations", 3)  # the policy, and what reads it
    try:
        assert ran(run(["dvc", "repro"], tiny_repo)) == {"ppo", "eval@ppo", "report"}
    finally:
        # the params go back; the re-run of ppo that would match them is left undone
        params.write_text(original)
