"""End to end: `dvc repro` of the tiny profile in a temporary copy of the repository."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO

pytestmark = pytest.mark.e2e


def _env() -> dict:
    env = dict(os.environ)
    # the copy's dvc.yaml runs `python -m stages.<name>`: make it this interpreter
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env.update(HF_HUB_OFFLINE="1", JIELONG_PROGRESS="0", DVC_NO_ANALYTICS="1")
    return env


def run(cmd: list[str], cwd: Path) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def copy_repo(dest: Path) -> Path:
    """Tracked and untracked-but-not-ignored files only: what a fresh clone (plus work in progress) holds."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, files):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    run(["git", "init", "-q"], dest)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "add", "-A"], dest)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "copy"], dest)
    return dest


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory) -> Path:
    repo = copy_repo(tmp_path_factory.mktemp("repo"))
    run([sys.executable, "-m", "jielong.profile", "tiny"], repo)
    run(["dvc", "repro"], repo)
    return repo


def test_repro_produces_every_declared_output(tiny_repo):
    assert (tiny_repo / "data/world/truth.parquet").exists()
    assert len(list((tiny_repo / "data/world/crawl").glob("*.warc.gz"))) == 2
    metrics = json.loads((tiny_repo / "metrics/world.json").read_text())
    assert metrics["people.known"] == 40
    for name in ("corpus", "decontam", "tokenizer", "pretrain", "eval/base", "sft", "eval/sft", "reward", "ppo", "dpo",
                 "eval/ppo", "eval/dpo"):
        assert (tiny_repo / f"metrics/{name}.json").exists(), name
    base = tiny_repo / "data/models/base"
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= {
        p.name for p in base.iterdir()}
    evals = json.loads((tiny_repo / "metrics/eval/base.json").read_text())
    assert 0.0 <= evals["world_facts_mc.acc"] <= 1.0 and "world_facts_mc.acc_stderr" in evals
    sft = json.loads((tiny_repo / "metrics/eval/sft.json").read_text())
    assert {"world_facts_gen.exact_match", "world_unknown.abstain_rate", "world_known.false_abstain_rate"} <= set(sft)
    assert (tiny_repo / "data/sft/train.parquet").exists() and (tiny_repo / "data/eval/base/knows.parquet").exists()
    # data/ is DVC's, never git's
    for out in ("data/world", "data/corpus", "data/tokens", "data/models/base", "data/sft", "data/models/sft"):
        assert out in run(["git", "check-ignore", out], tiny_repo)


def test_second_repro_runs_nothing(tiny_repo):
    out = run(["dvc", "repro"], tiny_repo)
    assert "Running stage" not in out
    assert "up to date" in out.lower()
    assert "changed" not in run(["dvc", "status"], tiny_repo).lower()


def test_changing_a_param_reruns_the_stage(tiny_repo):
    params = tiny_repo / "params.yaml"
    original = params.read_text()
    params.write_text(original.replace("seed: 1234", "seed: 7"))
    try:
        status = run(["dvc", "status"], tiny_repo)
        assert "world" in status and "modified" in status
    finally:
        params.write_text(original)
