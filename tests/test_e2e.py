"""End to end: `dvc repro` of the tiny profile in a temporary copy of the repository."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import REPO

pytestmark = pytest.mark.e2e


# planted in the environment of every `dvc repro` here: none may reach dvc.lock, metrics, plots or logs
SECRETS = {"HF_TOKEN": "hf_jielongTestSecret0001", "AWS_SECRET_ACCESS_KEY": "jielongTestSecret0002",
           "WANDB_API_KEY": "jielongTestSecret0003", "OPENAI_API_KEY": "sk-jielongTestSecret0004"}


def _env() -> dict:
    env = dict(os.environ) | SECRETS
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
    (repo / "repro.log").write_text(run(["dvc", "repro"], repo))  # untracked: for the secrets test
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
    assert 0.0 <= evals["world_facts_cloze.recall"] <= 1.0  # what the base stored, roughly SFT's ceiling
    sft = json.loads((tiny_repo / "metrics/eval/sft.json").read_text())
    assert {"world_facts_gen.exact_match", "world_unknown.abstain_rate", "world_known.false_abstain_rate"} <= set(sft)
    assert (tiny_repo / "report/report.md").exists() and (tiny_repo / "report/report.html").exists()
    assert (tiny_repo / "data/sft/train.parquet").exists() and (tiny_repo / "data/eval/base/knows.parquet").exists()
    # the tests run with HF_HUB_OFFLINE=1, which must not reach what a stage writes (jielong.model.save_tokenizer)
    for config in (tiny_repo / "data/models").glob("*/tokenizer_config.json"):
        assert "local_files_only" not in json.loads(config.read_text()), config
    # nor where the repository lives: lm-eval's results name the eval sets' files relative to the root
    for results in (tiny_repo / "data/eval").glob("*/results.json"):
        text = results.read_text()
        assert "data/evals/" in text and str(tiny_repo) not in text, results
    # data/ is DVC's, never git's
    for out in ("data/world", "data/corpus", "data/tokens", "data/models/base", "data/sft", "data/models/sft"):
        assert out in run(["git", "check-ignore", out], tiny_repo)


def test_repro_trains_and_reports_every_alignment_method(tiny_repo):
    # the tiny profile turns on what the default run leaves out (profiles/methods.yaml): KTO and GRPO
    for name in ("kto", "grpo"):
        m = json.loads((tiny_repo / f"metrics/{name}.json").read_text())
        assert -1.75 <= m["gold_reward"] <= 1 and -1.75 <= m["gold_reward_sft"] <= 1 and m["steps"] >= 1, name
        assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
            p.name for p in (tiny_repo / f"data/models/{name}").iterdir()}
        assert "world_facts_gen.exact_match" in json.loads((tiny_repo / f"metrics/eval/{name}.json").read_text())
    # GRPO logs the reward it is not trained on too: proxy and gold against KL, as PPO's curve
    header = (tiny_repo / "plots/grpo/train.csv").read_text().splitlines()[0].split(",")
    assert {"reward_model", "gold_reward", "kl_per_token"} <= set(header)
    # best-of-N swept over N on the evaluation questions: one row per N, the reward model's choice graded
    bon = json.loads((tiny_repo / "metrics/bon/sft.json").read_text())
    assert {f"n{n}.gold_reward" for n in (1, 2, 4)} <= set(bon) and 0 <= bon["n4.exact_match"] <= 1
    # the gated system of the default run, the gate fitted even where the tiny SFT model is never right
    gated = json.loads((tiny_repo / "metrics/eval/sft-gated.json").read_text())
    assert 0 <= gated["world_unknown.abstain_rate"] <= 1 and (tiny_repo / "data/models/sft-gate/gate.json").exists()
    # and best-of-N as an evaluated system: eval.systems' sft-bon, beside the models in the report
    system = json.loads((tiny_repo / "metrics/eval/sft-bon.json").read_text())
    assert 0 <= system["world_facts_gen.exact_match"] <= 1 and "gold_reward.mean" in system
    report = (tiny_repo / "report/report.md").read_text()
    assert "sft + best_of_n" in report  # the kind column: a model with a wrapper
    assert "figures/bon_sft.png" in report and "figures/grpo_reward.png" in report and "### KTO" in report and "not run: no metrics/kto.json" not in report
    against = report[report.index("### Against SFT, item by item"):]
    for model in ("ppo", "dpo", "kto", "grpo"):
        assert f"\n| {model} | " in against, model


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


def test_no_secret_from_the_environment_is_written_anywhere(tiny_repo):
    places = [tiny_repo / "dvc.lock", tiny_repo / "repro.log", *(tiny_repo / "metrics").rglob("*"),
              *(tiny_repo / "plots").rglob("*"), *(tiny_repo / "data").rglob("*.json"),
              *(tiny_repo / "data").rglob("*.jsonl"), *(tiny_repo / "data").rglob("*.log")]
    files = [p for p in places if p.is_file()]
    assert len(files) > 30
    for path in files:
        text = path.read_bytes()
        for secret in SECRETS.values():
            assert secret.encode() not in text, f"{secret} found in {path}"


# ---------------------------------------------------------------- failure behaviour through dvc
def _kill_during(repo: Path, stage: str, ready, timeout: float = 300) -> Path:
    """`dvc repro -f -s <stage>`, SIGKILLed (dvc and the stage, the whole process group) once `ready()`.

    A SIGKILLed process cannot remove its temporary folders, so the run's TMPDIR is one next to the repo
    copy (pytest's to clean up), not the machine's /tmp: each test run left an empty jielong-eval-* there.
    """
    tmp = repo.parent / f"tmp-killed-{stage.replace('@', '-')}"
    tmp.mkdir(exist_ok=True)
    proc = subprocess.Popen(["dvc", "repro", "-f", "-s", stage], cwd=repo, env=_env() | {"TMPDIR": str(tmp)},
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


WORK_DIRS = ("data/corpus-work", "data/pretrain_work", "data/eval_work")


def _output_hashes(repo: Path) -> dict[str, str]:
    """Every stage output's hash in dvc.lock, less the metrics, plots and report (they record wall times
    and throughput, which differ on every run by nature) and the resumable work folders (scratch whose
    logs hold timings; the products made from them are compared)."""
    import yaml

    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    return {o["path"]: o.get("md5") or o.get("hash") for st in lock.values() for o in st.get("outs", [])
            if not o["path"].startswith(("metrics/", "plots/", "report", *WORK_DIRS))}


@pytest.mark.parametrize("stage, work, ready, resumed", [
    ("corpus", "data/corpus-work", _corpus_task_done, "resuming in"),
    ("pretrain", "data/pretrain_work", _pretrain_checkpointed, "resuming from"),
    ("eval@base", "data/eval_work/base", _eval_answers_cached, "resuming: answers of a killed run"),
])
def test_sigkill_mid_stage_then_repro_resumes_to_the_same_outputs(tiny_repo, stage, work, ready, resumed):
    before = _output_hashes(tiny_repo)
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
    assert _ran(out) <= {"report"}, out
    after = _output_hashes(tiny_repo)
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


def _ran(out: str) -> set[str]:
    return {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}


DETERMINISTIC = ["world", "decontam", "tokenizer", "tokens", "sft_data", "sft", "pref_data", "reward", "dpo", "ppo",
                 "eval@sft", "report"]  # corpus, pretrain and eval@base: forced again by the kill test above


def test_forced_reruns_give_identical_output_hashes(tiny_repo):
    before = _output_hashes(tiny_repo)
    # one dvc process for all of them (dvc's own start-up is seconds); the changed outputs name the stage
    out = run(["dvc", "repro", "-f", "-s", *DETERMINISTIC], tiny_repo)
    assert _ran(out) == set(DETERMINISTIC), out
    changed = {k for k, v in _output_hashes(tiny_repo).items() if before.get(k) != v}
    assert not changed, f"forced re-runs of {DETERMINISTIC} changed {changed}"


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
        assert _ran(run(["dvc", "repro"], tiny_repo)) == {"report"}
    finally:
        params.write_text(original)
    assert _ran(run(["dvc", "repro"], tiny_repo)) == {"report"}  # back to the profile's figures
    assert "changed" not in run(["dvc", "status"], tiny_repo).lower()
    # a queued/--temp experiment runs in a fresh copy without the resumable work folders: the stages
    # upstream are checked out from the cache, not redone (they would be, were the folders DVC outputs)
    # (a dpi no earlier run used: the run cache cannot answer for the report either). The run is committed
    # first, as a user's would be: the copy carries changes to tracked files, not untracked metrics files
    # (cache: false) that stages off in the default profile wrote, which would then look missing.
    run(["git", "add", "-A"], tiny_repo)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "tiny repro"], tiny_repo)
    out = run(["dvc", "exp", "run", "--temp", "-S", "report.figure_dpi=72"], tiny_repo)
    assert _ran(out) == {"report"}, out

    _with_param(tiny_repo, "ppo", "iterations", 3)  # the policy, and what reads it
    try:
        assert _ran(run(["dvc", "repro"], tiny_repo)) == {"ppo", "eval@ppo", "report"}
    finally:
        # the module's last test: the params go back, the ~30 s re-run of ppo that would match them does not
        params.write_text(original)
