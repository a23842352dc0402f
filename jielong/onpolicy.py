"""On-policy preference data: the policy answers rl people's questions, a judge scores every reply, the
best- and worst-judged replies of a prompt make a pair. The samples stage builds the pairs the reward
model and DPO learn from; iterative DPO (stages/dpo.py, dpo.rounds) re-samples from its own policy.
The alignment stages (dpo, kto, grpo) also share the check that they learn on rl people only and the
gold reward of a policy's greedy answers to held-out rl people's questions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import torch
from transformers import GenerationConfig

from jielong import generation, grading, judge, preferences
from jielong.chat import PAD
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


# ---------------------------------------------------------------- what the alignment stages share
def refuse_other_splits(stage: str, questions: pl.DataFrame, paths: list[Path]) -> None:
    """Alignment learns, and checks its gold reward, on rl people only: data about anyone else (an sft or
    eval person, or data built on a world from before the sft/rl/eval splits) stops the stage."""
    split_of = dict(zip(questions["person_id"].to_list(), questions["split"].to_list(), strict=False))
    for path in paths:
        people = pl.read_parquet(path, columns=["person_id"])["person_id"].unique().to_list()
        bad = sorted(f"{pid} ({split_of.get(pid, 'not in the world')})" for pid in people if split_of.get(pid) != "rl")
        if bad:
            raise SystemExit(f"{stage}: {path} has data about people outside the rl split ({len(bad)}, e.g. "
                             f"{', '.join(bad[:3])}); rebuild it on this world")


def heldout(rows: pl.DataFrame, world: Path) -> tuple[list[list[dict]], list[dict]]:
    """(prompts, docs) of held-out rows (rl people the stage never trains on): each question once, its
    first prompt, with the question-bank row and the attribute's values the gold reward reads."""
    held = rows.unique("qid", keep="first", maintain_order=True)
    docs = held.select("qid").join(rl_questions(world), on="qid", how="left", maintain_order="left").to_dicts()
    return held["prompt"].to_list(), docs


@torch.no_grad()
def gold_of(model, tok, prompts: list[list[dict]], docs: list[dict], max_new_tokens: int) -> float:
    """Mean gold reward of the model's greedy answers to `prompts` (jielong.generation, as talk generates)."""
    model.eval()
    tok.padding_side = "left"
    config = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=tok.eos_token_id,
                              pad_token_id=tok.convert_tokens_to_ids(PAD))
    replies = generation.generate_batch(tok, model, config, [generation.encode(tok, True, p) for p in prompts],
                                        batch_size=32)
    return float(np.mean([grading.gold_reward(reply, doc) for reply, doc in zip(replies, docs, strict=True)]))
