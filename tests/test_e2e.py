"""End to end: `dvc repro` of the tiny profile in a temporary copy of the repository: what it writes,
and that a second repro runs nothing. On their own copies of the same build: forced re-runs reproduce
every output (test_e2e_forced.py), a killed stage resumes (test_e2e_kills.py), a changed param re-runs
exactly its dependents (test_e2e_params.py)."""

from __future__ import annotations

import json

import pytest

from .repro import SECRETS, run

pytestmark = pytest.mark.e2e


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
