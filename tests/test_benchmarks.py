"""benchmarks/: the runner on the tiny world's tokenizer, corpus and a random model (quick sizes), and
a failed benchmark reported as such; the measured numbers are docs/findings.md's, not a test's."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

from tests.conftest import REPO

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "JIELONG_PROGRESS": "0"}


def test_quick_run_reports_ours_reference_and_ratio(tmp_path, tiny_tokenizer_dir, tiny_corpus_dir, tiny_base,
                                                    tiny_decontam_dir):
    out = tmp_path / "benchmarks.json"
    # as a script, not `-m`: the scripts beside run.py must not shadow anything it imports
    run = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "run.py"), "--quick", "--only", "tokenizer,eval",
         "--tokenizer", str(tiny_tokenizer_dir / "tok"), "--text", str(tiny_corpus_dir), "--model", str(tiny_base),
         "--evals", str(tiny_decontam_dir / "evals"), "--out", str(out)],
        cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["machine"]["cpus"] >= 1 and len(result["machine"]["load_avg"]) == 3
    rows = {r["name"]: r for r in result["benchmarks"]}
    assert list(rows) == ["tokenizer", "eval"]
    for name, r in rows.items():
        assert {"unit", "ours", "reference", "ratio", "threads", "notes", "load_avg_1m"} <= set(r), name
        assert all(math.isfinite(r[k]) and r[k] > 0 for k in ("ours", "reference", "ratio")), r
        assert math.isclose(r["ratio"], r["ours"] / r["reference"]), r
        assert r["threads"] >= 1
        assert name in run.stdout  # the table
    assert rows["tokenizer"]["unit"] == "MB/s" and rows["tokenizer"]["same_ids"]
    assert rows["eval"]["unit"] == "items/s" and rows["eval"]["items"] == 20  # 10 per task, two tasks
    assert "ratio" in run.stdout and "load average" in run.stdout


def test_a_failed_benchmark_is_a_row_and_exit_1(tmp_path):
    out = tmp_path / "benchmarks.json"
    run = subprocess.run([sys.executable, "-m", "benchmarks.run", "--only", "tokenizer", "--tokenizer",
                          str(tmp_path / "missing"), "--out", str(out)],
                         cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stderr[-3000:]
    (row,) = json.loads(out.read_text())["benchmarks"]
    assert row["name"] == "tokenizer" and "tokenizer.json" in row["error"]
    assert "failed" in run.stdout
    bad = subprocess.run([sys.executable, "-m", "benchmarks.run", "--only", "tokenizers"], cwd=REPO, env=ENV,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown benchmark" in bad.stderr
