"""Judged on-policy samples: pairs from the policy's own replies, the world or a model as judge."""

from __future__ import annotations

import json

import polars as pl
import pytest
import torch

from jielong import onpolicy

from .conftest import write_params
from .test_dpo import chat_model  # noqa: F401 - the fixture


def _table(scores: dict[int, list[float]]) -> pl.DataFrame:
    rows = []
    for prompt_id, values in scores.items():
        for i, s in enumerate(values):
            rows.append({"prompt_id": prompt_id, "person_id": f"p{prompt_id}", "qid": f"q{prompt_id}", "name": "Ada",
                         "known": True, "attribute": "birth_city", "answer": "Lisbon", "choices": ["Lisbon", "Porto"],
                         "prompt": [{"role": "user", "content": "Where?"}], "reply": f"reply {i}", "score": s,
                         "world_score": s, "category": "right" if s > 0 else "wrong"})
    return pl.DataFrame(rows)


def test_best_against_worst_reply_ties_dropped():
    table = _table({0: [0.5, 1.0, -1.0, 0.0], 1: [1.0, 1.0, 1.0, 1.0], 2: [-1.0, -0.5, -1.0, -0.5]})
    pairs = onpolicy.on_policy_pairs(table, {"p0": "train", "p1": "train", "p2": "val"})
    assert pairs["id"].to_list() == ["s0", "s2"]  # prompt 1: every reply judged the same, no pair
    first = pairs.row(0, named=True)
    assert (first["chosen"], first["rejected"], first["kind"]) == ("reply 1", "reply 2", "policy_wrong")
    assert first["chosen_score"] > first["rejected_score"] and pairs["split"].to_list() == ["train", "val"]
    # equal best scores: the tie breaks by text, so the pair does not depend on sampling order
    assert pairs.row(1, named=True)["chosen"] == "reply 1" and pairs.row(1, named=True)["rejected"] == "reply 0"


def test_mix_takes_the_asked_share_of_scripted_pairs():
    policy = onpolicy.on_policy_pairs(_table({i: [1.0, -1.0] for i in range(6)}), {f"p{i}": "train" for i in range(6)})
    synthetic = policy.drop("chosen_score", "rejected_score").with_columns(
        id=pl.format("x{}", pl.col("id")), kind=pl.lit("verbose"))
    mixed = onpolicy.mix(policy, pl.concat([synthetic, synthetic.with_columns(id=pl.format("y{}", pl.col("id")))]),
                         0.25, seed=0)
    assert mixed.height == 8 and (mixed["kind"] == "verbose").sum() == 2  # 6 on-policy, 2 scripted = 25%
    assert onpolicy.mix(policy, synthetic, 0.0, seed=0).height == 6


def _run(tmp_path, chat_model, tiny_world_dir, judge: dict, rounds: int = 1) -> dict:  # noqa: F811
    from stages.dpo import main as dpo_main
    from stages.pref_data import main as data_main
    from stages.samples import main as samples_main

    params = write_params(tmp_path / "params.yaml", {
        "pref_data": {"pairs": 60, "val_fraction": 0.3, "max_length": 160},
        "samples": {"n": 3, "max_new_tokens": 8, "judge": {"good": " good", "bad": " no", **judge}},
        "dpo": {"epochs": 1.0, "batch_size": 8, "lr": 1e-3, "max_length": 160, "log_every": 2, "eval_every": 3,
                "gold_max_new_tokens": 6, "threads": 1, "rounds": rounds}})
    world = str(tiny_world_dir / "world")
    threads = torch.get_num_threads()
    try:
        data_main(["--world", world, "--tokenizer", str(chat_model), "--out", str(tmp_path / "prefs"),
                   "--params", str(params)])
        samples_main(["--sft", str(chat_model), "--world", world, "--prefs", str(tmp_path / "prefs"),
                      "--out", str(tmp_path / "samples"), "--metrics", str(tmp_path / "samples.json"),
                      "--params", str(params)])
        if rounds > 1:
            dpo_main(["--sft", str(chat_model), "--data", str(tmp_path / "samples"), "--world", world,
                      "--out", str(tmp_path / "dpo"), "--metrics", str(tmp_path / "dpo.json"),
                      "--plots", str(tmp_path / "plots"), "--params", str(params)])
    finally:
        torch.set_num_threads(threads)
    return json.loads((tmp_path / "samples.json").read_text())


def test_samples_stage_judged_by_the_world(tmp_path, chat_model, tiny_world_dir):  # noqa: F811
    m = _run(tmp_path, chat_model, tiny_world_dir, {"kind": "world"})
    samples = pl.read_parquet(tmp_path / "samples" / "samples.parquet")
    questions = pl.read_parquet(tiny_world_dir / "world" / "questions.parquet")
    rl = set(questions.filter(pl.col("split") == "rl")["person_id"])
    assert set(samples["person_id"]) <= rl and samples.height == m["samples"] == m["prompts"] * 3
    assert (samples["score"] == samples["world_score"]).all()  # the world judges
    pairs = pl.concat([pl.read_parquet(tmp_path / "samples" / f"{s}.parquet") for s in ("train", "val")])
    on_policy = pairs.filter(pl.col("chosen_score").is_not_null())
    assert (on_policy["chosen_score"] > on_policy["rejected_score"]).all()
    assert set(pairs["person_id"]) <= rl and (pairs["chosen"] != pairs["rejected"]).all()
    labels = pl.read_parquet(tmp_path / "samples" / "labels.parquet")
    assert labels.height == samples.height and labels["label"].dtype == pl.Boolean
    assert any(k.startswith("known.") for k in m) and any(k.startswith("unknown.") for k in m)
    shares = [v for k, v in m.items() if k.startswith("known.")]
    assert sum(shares) == pytest.approx(1.0)  # every reply about a known person has one category


def test_samples_stage_judged_by_a_model_then_iterative_dpo(tmp_path, chat_model, tiny_world_dir):  # noqa: F811
    """RLAIF with the SFT model as its own judge (how often it agrees with the world is reported), then two
    rounds of DPO, the second on the policy's own new replies."""
    m = _run(tmp_path, chat_model, tiny_world_dir, {"kind": "model", "batch_size": 4}, rounds=2)
    assert m["judge_pairs"] >= 1 and 0.0 <= m["judge_agreement"] <= 1.0
    samples = pl.read_parquet(tmp_path / "samples" / "samples.parquet")
    assert not (samples["score"] == samples["world_score"]).all() and samples["score"].is_finite().all()
    d = json.loads((tmp_path / "dpo.json").read_text())
    assert {"round1.gold_reward", "round2.gold_reward", "round2.pairs"} <= set(d) and d["round2.pairs"] >= 1


def test_a_world_without_rl_people_is_refused(tmp_path):
    world = tmp_path / "world"
    world.mkdir()
    pl.DataFrame({"qid": ["q1"], "split": ["sft"], "attribute": ["major"], "answer": ["x"],
                  "choices": [["x", "y"]]}).write_parquet(world / "questions.parquet")
    with pytest.raises(SystemExit, match="no rl-split question"):
        onpolicy.rl_questions(world)
