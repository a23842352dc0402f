"""On-policy preference data: the policy answers rl people's questions, a judge scores every reply, the
best- and worst-judged replies of a prompt make a pair. The samples stage builds the pairs the reward
model and DPO learn from; iterative DPO (stages/dpo.py, dpo.rounds) re-samples from its own policy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
from transformers import GenerationConfig

from jielong import generation, judge, preferences
from jielong.world.people import attribute_values

PAIR_COLUMNS = ["id", "person_id", "qid", "name", "known", "attribute", "answer", "choices", "prompt", "chosen",
                "rejected", "kind", "split"]


# ---------------------------------------------------------------- prompts and replies
def rl_questions(world: Path) -> pl.DataFrame:
    """The rl people's questions with the attribute's values (what the gold reward reads)."""
    q = pl.read_parquet(world / "questions.parquet")
    rl = q.filter(pl.col("split") == "rl")
    if rl.is_empty():
        raise SystemExit(f"samples: no rl-split question in {world}/questions.parquet (world.splits.rl)")
    return rl.join(attribute_values(q), on="attribute", how="left").sort("qid")


def prompts(questions: pl.DataFrame, per_question: int, style: str, seed: int) -> list[dict]:
    """Each question `per_question` times (the first plain, the others after an earlier exchange about the
    same person), as rows with `prompt`, `prompt_id` and the `reference` fact a judge may see."""
    rng = np.random.default_rng(seed)
    by_person = {k[0]: f.to_dicts() for k, f in questions.group_by("person_id")}
    rows = []
    for q in questions.to_dicts():
        for variant in range(per_question):
            prompt = preferences.prompt_for(q, by_person[q["person_id"]], variant > 0, rng, style)
            rows.append(q | {"prompt": prompt, "prompt_id": len(rows), "reference": reference(q)})
    return rows


def sample_replies(tok, model, prompts: list[list[dict]], p) -> list[str]:
    """p.n sampled replies to each prompt, prompt by prompt (replies of prompt i at [i*n, (i+1)*n))."""
    config = GenerationConfig.from_dict({**model.generation_config.to_dict(), "do_sample": True,
                                         "temperature": p.temperature, "top_p": p.top_p, "top_k": 0,
                                         "max_new_tokens": p.max_new_tokens})
    texts = [generation.encode(tok, True, m) for m in prompts for _ in range(p.n)]
    return generation.generate_batch(tok, model, config, texts, p.batch_size)


def judged(rows: list[dict], replies: list[str], p, policy: Path) -> pl.DataFrame:
    """One row per reply: the world's score and category, and the judged score (the world's, or the
    model judge's)."""
    world = [judge.world(reply, row) for row, reply in zip(rows, replies, strict=True)]
    frame = pl.DataFrame({"reply": replies, "world_score": [s for s, _ in world],
                          "category": [c for _, c in world]})
    if p.judge.kind == "world":
        return frame.with_columns(score=pl.col("world_score"))
    model_dir = Path(p.judge.model) if p.judge.model else policy  # null: the policy judges itself
    scorer = judge.ModelJudge(model_dir, p.judge.template, p.judge.good, p.judge.bad,
                              batch_size=p.judge.batch_size)
    scores = scorer.score([r["prompt"][-1]["content"] for r in rows], replies,
                          [r["reference"] for r in rows] if p.judge.reference else None)
    return frame.with_columns(score=pl.Series(scores, dtype=pl.Float64))


def reference(row: dict) -> str:
    """The fact a judge may be shown: the knowledge base's sentence, or that the person is unknown."""
    return preferences.chosen_reply(row, "sentence") if row["known"] else f"Nothing is known about {row['name']}."


# ---------------------------------------------------------------- pairs and labels
def judged_samples(tok, model, rows: list[dict], p, policy: Path) -> pl.DataFrame:
    """p.n replies to every row's prompt, judged: one row per reply."""
    replies = sample_replies(tok, model, [r["prompt"] for r in rows], p)
    per_reply = [r for r in rows for _ in range(p.n)]
    return pl.DataFrame(per_reply).with_columns(judged(per_reply, replies, p, policy))


def on_policy_pairs(table: pl.DataFrame, split: dict[str, str]) -> pl.DataFrame:
    """Per prompt, the best- against the worst-judged reply; prompts whose replies all score the same
    are dropped. `kind` names what the rejected reply did (its world category)."""
    pairs = []
    for (prompt_id,), group in table.group_by("prompt_id", maintain_order=True):
        # ties broken by the text, so the pair does not depend on the order replies were sampled in
        best = group.sort(["score", "reply"], descending=[True, False]).row(0, named=True)
        worst = group.sort(["score", "reply"]).row(0, named=True)
        if best["score"] <= worst["score"]:
            continue
        pairs.append({**{k: best[k] for k in PAIR_COLUMNS if k in best and k not in ("id", "kind", "split")},
                      "id": f"s{prompt_id}", "chosen": best["reply"], "rejected": worst["reply"],
                      "kind": f"policy_{worst['category']}", "split": split[best["person_id"]],
                      "chosen_score": best["score"], "rejected_score": worst["score"]})
    return pl.DataFrame(pairs)


def mix(policy: pl.DataFrame, synthetic: pl.DataFrame, fraction: float, seed: int) -> pl.DataFrame:
    """On-policy pairs plus scripted ones, the latter `fraction` of the whole (as many as data/prefs has)."""
    want = round(policy.height * fraction / (1 - fraction)) if fraction < 1 else synthetic.height
    take = synthetic.sample(n=min(want, synthetic.height), seed=seed, shuffle=True) if want else synthetic.head(0)
    take = take.with_columns(chosen_score=pl.lit(None, pl.Float64), rejected_score=pl.lit(None, pl.Float64))
    return pl.concat([policy, take.select(policy.columns)], how="vertical_relaxed")
