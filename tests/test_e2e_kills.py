"""End to end, on a copy of the tiny profile's built repo: a stage SIGKILLed mid-run resumes to the same
outputs."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from .repro import env, output_hashes, ran, run

pytestmark = pytest.mark.e2e


def _kill_during(repo: Path, stage: str, ready, timeout: float = 300) -> Path:
    """`dvc repro -f -s <stage>`, SIGKILLed (dvc and the stage, the whole process group) once `ready()`.

    A SIGKILLed process cannot remove its temporary folders, so the run's TMPDIR is one next to the repo
    copy (pytest's to clean up), not the machine's /tmp: each test run left an empty jielong-eval-* there.
    """
    tmp = repo.parent / f"tmp-killed-{stage.replace('@', '-')}"
    tmp.mkdir(exist_ok=True)
    proc = subprocess.Popen(["dvc", "repro", "-f", "-s", stage], cwd=repo, env=env() | {"TMPDIR": str(tmp)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"{stage} ended (rc {proc.returncode}) before it could be killed"
        assert time.monotonic() < deadline, f"{stage}: no kill point within {timeout}s"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return tmp


def _corpus_task_done(repo: Path) -> bool:
    return bool(list((repo / "data/corpus-work").glob("*/logs/00-filter/completions/*")))


def _pretrain_checkpointed(repo: Path) -> bool:
    return bool(list((repo / "data/pretrain_work").glob("*/ckpt-*/state.json")))


def _eval_answers_cached(repo: Path) -> bool:
    for db in (repo / "data/eval_work/base").glob("*.db"):
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.1) as con:
                if con.execute("SELECT count(*) FROM unnamed").fetchone()[0] >= 20:
                    return True
        except sqlite3.Error:  # not created yet, or locked by the writer this instant
            pass
    return False


@pytest.mark.parametrize("stage, work, ready, resumed", [
    ("corpus", "data/corpus-work", _corpus_task_done, "resuming in"),
    ("pretrain", "data/pretrain_work", _pretrain_checkpointed, "resuming from"),
    ("eval@base", "data/eval_work/base", _eval_answers_cached, "resuming: answers of a killed run"),
])
def test_sigkill_mid_stage_then_repro_resumes_to_the_same_outputs(tiny_repo, stage, work, ready, resumed):
    before = output_hashes(tiny_repo)
    knows = tiny_repo / "data/eval/base/knows.parquet"
    knows_before, metrics_before = knows.read_bytes(), json.loads((tiny_repo / "metrics/eval/base.json").read_text())
    # what the first run left to resume from goes: the kill must interrupt work done from scratch
    for old in (tiny_repo / work).iterdir():
        shutil.rmtree(old) if old.is_dir() else old.unlink()
    left = _kill_during(tiny_repo, stage, lambda: ready(tiny_repo))
    if stage == "eval@base":  # the killed run's scratch folder stayed, in the folder it was given
        assert list(left.glob("jielong-eval-*"))
    # dvc.lock still holds the module's first, finished run of the stage with these inputs, so a plain
    # `dvc repro` would check its outputs out of the cache; a killed first run has no such entry and
    # runs the stage again, which resumes: forcing the stage is that path
    out = run(["dvc", "repro", "-f", "-s", stage], tiny_repo)
    assert f"Running stage '{stage}'" in out and resumed in out
    # the resumed stage wrote the same outputs, so no model or dataset downstream of it is rebuilt
    # (the report, which shows the stage's new wall time, is redrawn)
    out = run(["dvc", "repro"], tiny_repo)
    assert ran(out) <= {"report"}, out
    after = output_hashes(tiny_repo)
    if stage == "eval@base":
        # lm-eval batches the requests the killed run left by length anew, and a log-likelihood computed
        # in another batch can differ in its 7th digit: the samples' bytes may change, what downstream
        # reads (knows.parquet, by sft_data) and the metrics may not
        assert knows.read_bytes() == knows_before
        metrics = json.loads((tiny_repo / "metrics/eval/base.json").read_text())
        assert metrics.keys() == metrics_before.keys()
        assert all(math.isclose(metrics[k], v, rel_tol=1e-5, abs_tol=1e-9) for k, v in metrics_before.items())
        after.pop("data/eval/base"), before.pop("data/eval/base")
    assert after == before
    assert "changed" not in run(["dvc", "status"], tiny_repo).lower()
