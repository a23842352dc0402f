"""Judged on-policy samples: the SFT policy answers the rl people's questions, a judge scores each reply.

    python -m stages.samples --sft data/models/sft --world data/world --prefs data/prefs --out data/samples \
        --metrics metrics/samples.json

The preference data the reward model and DPO learn from are the policy's own replies, about people
SFT never trained on (the `rl` split): each question is asked `samples.n` times (sampled as the
policy samples), and a judge scores every reply (`samples.judge.kind`):
- `world`: the world's truth (jielong/grading.py's gold reward: right fact, wrong fact, right
  abstention, hallucination, length and boilerplate), the rule-based feedback;
- `model`: RLAIF, a local HF chat model (`samples.judge.model`) asked by a template whether the reply
  is good, scored by the log-probabilities of its verdict words (jielong/judge.py).
Per prompt the best- and the worst-judged replies make a pair (ties dropped); the preference pairs
of data/prefs (scripted failure kinds, the same rl people) are mixed in at `samples.synthetic_fraction`
of the whole. Writes data/samples/:
    samples.parquet      every reply with its judged score, the world's category and score
    labels.parquet       unpaired good/bad labels (KTO's data): judged score above samples.judge.threshold
    train.parquet, val.parquet  pairs in data/prefs' format; val holds other people (pref_data's split)
    summary.json         counts
and metrics/samples.json: the share of replies right / wrong / refused / abstained / hallucinated per
person kind, and with a model judge how often it orders two replies as the world does.
Checked before the stage succeeds: chosen != rejected, the judge scored the chosen reply higher (for
on-policy pairs), every person in the rl split, prompts ending on a user turn.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import polars as pl
import torch

from jielong import generation, judge, onpolicy, preferences
from jielong.checks import expect, gx
from jielong.io import atomic_dir, write_parquet
from jielong.log import get_logger, run
from jielong.metrics import write_metrics
from jielong.params import load_all

log = get_logger("samples")

# ---------------------------------------------------------------- checks
def check(pairs: pl.DataFrame, people_split: dict[str, str], label: str) -> None:
    frame = pairs.select(
        "id", "kind", differs=pl.col("chosen") != pl.col("rejected"),
        judge_agrees=pl.col("chosen_score").is_null() | (pl.col("chosen_score") > pl.col("rejected_score")),
        person_split=pl.col("person_id").replace_strict(people_split, default="missing"),
        ends_with_user=pl.col("prompt").map_elements(
            lambda m: preferences.prompt_ends_with_user(m.to_list()), return_dtype=pl.Boolean))
    expect(label, frame, [
        gx.expectations.ExpectTableRowCountToBeBetween(min_value=1),
        gx.expectations.ExpectColumnValuesToBeUnique(column="id"),
        gx.expectations.ExpectColumnValuesToBeInSet(column="differs", value_set=[True]),
        gx.expectations.ExpectColumnValuesToBeInSet(column="judge_agrees", value_set=[True]),
        gx.expectations.ExpectColumnValuesToBeInSet(column="person_split", value_set=["rl"]),
        gx.expectations.ExpectColumnValuesToBeInSet(column="ends_with_user", value_set=[True]),
    ])


def summary_metrics(table: pl.DataFrame, pairs: pl.DataFrame, p) -> dict:
    metrics = {"samples": table.height, "prompts": table["prompt_id"].n_unique(), "pairs": pairs.height,
               "pairs_on_policy": int(pairs["chosen_score"].is_not_null().sum()),
               "world_score.mean": float(table["world_score"].mean())}
    for known, frame in table.group_by("known"):
        kind = "known" if known[0] else "unknown"
        counts = frame["category"].value_counts()
        for category, n in zip(counts["category"].to_list(), counts["count"].to_list(), strict=True):
            metrics[f"{kind}.{category}"] = n / frame.height
    if p.judge.kind == "model":  # how often the model judge orders two replies to one prompt as the world does
        alike, compared = judge.agreement_counts(table["score"].to_list(), table["world_score"].to_list(),
                                                 table["prompt_id"].to_list())
        metrics["judge_pairs"] = compared
        if compared:
            metrics["judge_agreement"] = alike / compared
    return metrics


# ---------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.splitlines()[0])
    ap.add_argument("--sft", type=Path, default=Path("data/models/sft"), help="the policy that answers")
    ap.add_argument("--world", type=Path, default=Path("data/world"))
    ap.add_argument("--prefs", type=Path, default=Path("data/prefs"), help="scripted pairs to mix in")
    ap.add_argument("--out", type=Path, default=Path("data/samples"))
    ap.add_argument("--metrics", type=Path, default=Path("metrics/samples.json"))
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = ap.parse_args(argv)
    params = load_all(args.params)
    p = params.samples
    torch.manual_seed(p.seed)

    questions = onpolicy.rl_questions(args.world)
    known = dict(zip(questions["person_id"].to_list(), questions["known"].to_list(), strict=True))
    people_split = preferences.split_people(known, params.pref_data)  # the reward model's held-out people
    rows = onpolicy.prompts(questions, p.prompts_per_question, params.sft.data.answer_style, p.seed)
    log.info("samples: %d rl questions x %d prompts x %d replies from %s, judge %s", questions.height,
             p.prompts_per_question, p.n, args.sft, p.judge.kind)

    start = time.perf_counter()
    tok, model = generation.load(args.sft)
    table = onpolicy.judged_samples(tok, model, rows, p, args.sft)
    sample_s = time.perf_counter() - start

    policy = onpolicy.on_policy_pairs(table, people_split)
    synthetic = pl.concat([pl.read_parquet(args.prefs / f"{s}.parquet") for s in ("train", "val")])
    pairs = onpolicy.mix(policy, synthetic, p.synthetic_fraction, p.seed)
    labels = table.select("person_id", "qid", "prompt", completion="reply", label=pl.col("score") > p.judge.threshold,
                          score="score", category="category",
                          split=pl.col("person_id").replace_strict(people_split))
    with atomic_dir(args.out) as tmp:
        for split in ("train", "val"):
            part = pairs.filter(pl.col("split") == split)
            check(part, {pid: "rl" for pid in known}, f"{args.out}/{split}.parquet")
            write_parquet(tmp / f"{split}.parquet", part)
        write_parquet(tmp / "samples.parquet", table.drop("reference"))
        write_parquet(tmp / "labels.parquet", labels)
        kinds = pairs["kind"].value_counts().sort("kind")
        (tmp / "summary.json").write_text(json.dumps({
            "pairs": {s: pairs.filter(pl.col("split") == s).height for s in ("train", "val")},
            "kinds": dict(zip(kinds["kind"].to_list(), kinds["count"].to_list(), strict=True)),
            "labels_good": int(labels["label"].sum()), "labels": labels.height}, indent=2, sort_keys=True) + "\n")
    metrics = summary_metrics(table, pairs, p) | {"replies_per_s": round(table.height / sample_s, 2)}
    write_metrics(args.metrics, metrics)
    log.info("samples: %d replies in %.0fs, %d pairs (%d on-policy): %s", table.height, sample_s, pairs.height,
             metrics["pairs_on_policy"], json.dumps({k: round(v, 3) for k, v in metrics.items()}))


if __name__ == "__main__":
    run(main)
