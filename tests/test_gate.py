"""The CI gate (jielong/gate.py) on hand-made metrics dirs and a tiny git repo: no model runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from jielong.gate import main
from jielong.params import ParamsError, load

from .conftest import REPO, write_params

GATE = {"metrics": {
    "world_facts_mc.acc": {"direction": "higher", "abs_margin": 0.02, "k_stderr": 2.0},
    "world_known.false_abstain_rate": {"direction": "lower", "abs_margin": 0.02, "k_stderr": 2.0},
    "world_heldout_ppl.word_perplexity": {"direction": "lower", "abs_margin": 0.25},
    "gold_reward.mean": {"direction": "higher", "abs_margin": 0.05},
}}

BASE = {
    "world_facts_mc.acc": 0.80, "world_facts_mc.acc_stderr": 0.01, "world_facts_mc.items": 520,
    "world_known.false_abstain_rate": 0.10, "world_known.false_abstain_rate_stderr": 0.01,
    "world_heldout_ppl.word_perplexity": 2.6,
}


def write(d, models: dict[str, dict]):
    d.mkdir(parents=True, exist_ok=True)
    for name, flat in models.items():
        (d / f"{name}.json").write_text(json.dumps(flat, indent=2, sort_keys=True) + "\n")
    return d


@pytest.fixture
def params(tmp_path):
    return write_params(tmp_path / "params.yaml", {"gate": GATE})


def gate(capsys, baseline, current, params, *extra):
    code = main(["--baseline", str(baseline), "--current", str(current), "--params", str(params), *extra])
    out = capsys.readouterr()
    return code, out.out + out.err


def changed(**kv):
    return {**BASE, **kv}


# ---------------------------------------------------------------- metrics dirs
def test_unchanged_model_passes(tmp_path, params, capsys):
    base = write(tmp_path / "base", {"base": BASE})
    cur = write(tmp_path / "cur", {"base": BASE})
    code, out = gate(capsys, base, cur, params)
    assert code == 0, out
    assert "eval gate passed" in out and "REGRESSION" not in out


def test_injected_regression_fails_naming_the_metric(tmp_path, params, capsys):
    base = write(tmp_path / "base", {"base": BASE})
    cur = write(tmp_path / "cur", {"base": changed(**{"world_facts_mc.acc": 0.60})})
    code, out = gate(capsys, base, cur, params)
    assert code == 1, out
    row = next(line for line in out.splitlines() if "world_facts_mc.acc" in line and "REGRESSION" in line)
    # allowed = max(0.02, 2 * sqrt(0.01^2 + 0.01^2)) = 0.02828
    assert "0.8" in row and "0.6" in row and "-0.2" in row and "-0.02828" in row
    assert "FAIL base: world_facts_mc.acc regressed" in out


def test_change_within_noise_passes(tmp_path, params, capsys):
    base = write(tmp_path / "base", {"base": BASE})
    # a drop of 0.025 is past abs_margin (0.02) but inside 2 combined stderrs (0.0283)
    cur = write(tmp_path / "cur", {"base": changed(**{"world_facts_mc.acc": 0.775})})
    code, out = gate(capsys, base, cur, params)
    assert code == 0, out
    # the same drop with tiny stderrs is a regression: the margin is then abs_margin alone
    tight = {"world_facts_mc.acc_stderr": 0.001}
    write(tmp_path / "base", {"base": changed(**tight)})
    write(tmp_path / "cur", {"base": changed(**{"world_facts_mc.acc": 0.775}, **tight)})
    code, out = gate(capsys, base, cur, params)
    assert code == 1 and "REGRESSION" in out


def test_lower_is_better(tmp_path, params, capsys):
    base = write(tmp_path / "base", {"base": BASE})
    # perplexity and false abstentions falling is an improvement, however large
    better = changed(**{"world_heldout_ppl.word_perplexity": 1.5, "world_known.false_abstain_rate": 0.0})
    code, out = gate(capsys, base, write(tmp_path / "better", {"base": better}), params)
    assert code == 0, out
    assert "better" in out
    # and rising past the margin is a regression
    worse = changed(**{"world_heldout_ppl.word_perplexity": 3.0})
    code, out = gate(capsys, base, write(tmp_path / "worse", {"base": worse}), params)
    assert code == 1
    assert "world_heldout_ppl.word_perplexity regressed" in out and "≤ +0.25" in out


def test_gated_metric_missing_from_current_fails(tmp_path, params, capsys):
    base = write(tmp_path / "base", {"base": BASE})
    cur = {k: v for k, v in BASE.items() if not k.startswith("world_known.")}
    code, out = gate(capsys, base, write(tmp_path / "cur", {"base": cur}), params)
    assert code == 1
    assert "world_known.false_abstain_rate is in the baseline" in out and "missing from" in out
    assert str(tmp_path / "cur" / "base.json") in out.replace("\n", "")


def test_models_on_one_side_are_reported_and_fail_only_with_require_all(tmp_path, params, capsys):
    base = write(tmp_path / "base", {"base": BASE, "dpo": BASE})
    cur = write(tmp_path / "cur", {"base": BASE, "ppo": changed(**{"gold_reward.mean": 1.0})})
    code, out = gate(capsys, base, cur, params)
    assert code == 0, out
    assert "model dpo: only in the baseline" in out and "model ppo: only in the current" in out
    code, out = gate(capsys, base, cur, params, "--require-all")
    assert code == 1 and "--require-all" in out


def test_different_item_counts_warn(tmp_path, params, capsys):
    base = write(tmp_path / "base", {"base": BASE})
    cur = write(tmp_path / "cur", {"base": changed(**{"world_facts_mc.items": 40})})
    code, out = gate(capsys, base, cur, params)
    assert code == 0 and "world_facts_mc.items 520 (baseline) vs 40 (current)" in out


def test_usage_errors_exit_2(tmp_path, params, capsys):
    base = write(tmp_path / "base", {"base": BASE})
    code, out = gate(capsys, base, tmp_path / "nowhere", params)
    assert code == 2 and str(tmp_path / "nowhere") in out
    bad = write_params(tmp_path / "bad.yaml", {"gate": {"metrics": {"world_facts_mc.acc": {"direction": "up"}}}})
    code, out = gate(capsys, base, base, bad)
    assert code == 2 and "gate.metrics.world_facts_mc.acc.direction" in out


def test_gate_params_schema(tmp_path):
    # a metric's margins are the one default in the code: absent means 0 (perplexity has no stderr)
    assert load("gate", REPO / "params.yaml").metrics["world_heldout_ppl.word_perplexity"].k_stderr == 0.0
    p = write_params(tmp_path / "params.yaml", {"gate": {"metrics": {"acc": {"direction": "higher"}}}})
    with pytest.raises(ParamsError, match="<task>.<metric>"):
        load("gate", p)
    write_params(p, {"gate": {"metrics": {"t.acc": {"direction": "higher", "margin": 1}}}})
    with pytest.raises(ParamsError, match="gate.metrics.t.acc.margin"):
        load("gate", p)


# ---------------------------------------------------------------- git revs
def git(repo, *args):
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    run = subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True, text=True)
    return run.stdout


@pytest.fixture
def repo(tmp_path, params):
    """A git repo with one commit: params.yaml and the baseline metrics of two models."""
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q")
    shutil.copy(params, root / "params.yaml")
    write(root / "metrics" / "eval", {"base": BASE, "sft": BASE})
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "baseline")
    return root


def test_git_rev_baseline(repo, monkeypatch, capsys):
    monkeypatch.chdir(repo)
    write(repo / "metrics" / "eval", {"sft": changed(**{"world_facts_mc.acc": 0.55})})
    code, out = gate(capsys, "HEAD", "metrics/eval", "params.yaml")
    assert code == 1, out
    assert "sft" in out and "world_facts_mc.acc" in out and "REGRESSION" in out
    sha = git(repo, "rev-parse", "HEAD").strip()
    assert sha[:10] in out
    # committed, the regression becomes the baseline of the next commit: HEAD~1 still sees it
    git(repo, "commit", "-q", "-am", "regressed")
    code, out = gate(capsys, "HEAD~1", "metrics/eval", "params.yaml")
    assert code == 1, out
    code, out = gate(capsys, "HEAD", "metrics/eval", "params.yaml")
    assert code == 0, out


def test_bad_rev_exits_2_naming_it(repo):
    # the real command line, as CI runs it
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    run = subprocess.run([sys.executable, "-m", "jielong.gate", "--baseline", "no-such-branch"],
                         cwd=repo, env=env, capture_output=True, text=True)
    assert run.returncode == 2, run.stdout + run.stderr
    assert "no-such-branch" in run.stderr and "git revision" in run.stderr


@pytest.mark.parametrize("method", ["ls", "read_text"])
def test_a_rev_dvc_cannot_read_exits_2_naming_it(repo, monkeypatch, capsys, method):
    """The project's first commit had an unquoted date in params.yaml; DVC's listing of that rev raised
    TypeError, and the gate crashed with exit 1, which reads as a regression. Now: exit 2, naming the rev
    and the error, whichever DVC call raised it."""
    from dvc.api import DVCFileSystem

    def broken(*args, **kwargs):
        raise TypeError("Unsupported value of type 'date' in 'params.yaml:world.crawl_date'")

    monkeypatch.setattr(DVCFileSystem, method, broken)
    monkeypatch.chdir(repo)
    code, out = gate(capsys, "HEAD", "metrics/eval", "params.yaml")
    assert code == 2, out
    assert "'HEAD'" in out and "TypeError" in out and "crawl_date" in out
