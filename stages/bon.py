"""Best-of-N with the reward model: how gold reward and exact match move as N grows (the evaluation people).

    python -m stages.bon --model data/models/sft --reward data/models/reward --evals data/evals \
        --metrics metrics/bon/sft.json --plots plots/bon/sft.csv

The reward model's answer-time use (jielong/best_of_n.py): the policy samples N replies and the
reward model's favourite is the answer. The policy answers every question of the gold-reward tasks
(world_facts_gen: evaluation people the corpus knows; world_unknown: never-seen evaluation people)
max(bon.n) times, once; best-of-N for each smaller N is read from disjoint chunks of those samples
(max/N chunks per question, averaged), so every N is measured on the same replies and small N has
many draws. Each chosen reply is graded as the eval stage grades it (jielong/grading.py): the gold
reward, exact match on known people, abstention on never-seen people. The reward model's own score
of the chosen reply is logged beside them: the proxy rising while the gold reward does not is
over-optimisation at answer time. The eval stage evaluates the same system at one N through
lm-eval (eval.systems). Off in the default run (`bon.models: []`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from transformers import GenerationConfig

from jielong import best_of_n, generation, grading
from jielong.io import write_csv
from jielong.log import get_logger, run
from jielong.metrics import write_metrics
from jielong.params import load

log = get_logger("bon")
TASKS = ("world_facts_gen", "world_unknown")  # the eval stage's gold-reward tasks


def read_docs(evals: Path) -> list[dict]:
    docs = []
    for task in TASKS:
        path = evals / f"{task}.jsonl"
        if not path.exists():
            raise SystemExit(f"bon: {path} not found (the decontam stage writes the eval sets)")
        docs += [json.loads(line) | {"task": task} for line in path.read_text().splitlines() if line.strip()]
    return docs


def grade(reply: str, doc: dict) -> dict[str, float]:
    """What the eval stage reads off one reply (evals/tasks/scoring.py), through the same grading code."""
    out = {"gold_reward": grading.gold_reward(reply, doc)}
    if doc["task"] == "world_facts_gen":
        out["exact_match"] = float(grading.is_correct(reply, doc))
    else:
        out["abstain_rate"] = float(grading.is_abstention(reply))
        out["hallucination_rate"] = float(grading.is_attribute_value(reply, doc["attribute"], doc.get("values")))
    return out


def sweep(docs: list[dict], replies: list[list[str]], scores: list[list[float]], ns: list[int]) -> list[dict]:
    """One row per N: the means of best-of-N's chosen reply over questions and chunks."""
    top = max(ns)
    graded = [[grade(r, d) for r in rs] for rs, d in zip(replies, docs, strict=True)]
    rows = []
    for n in sorted(ns):
        values: dict[str, list[float]] = {}
        for doc_grades, doc_scores in zip(graded, scores, strict=True):
            for start in range(0, top - n + 1, n):  # disjoint chunks of n samples
                chunk = doc_scores[start:start + n]
                chosen = start + best_of_n.pick(chunk)
                values.setdefault("reward_model", []).append(chunk[chosen - start])
                for key, value in doc_grades[chosen].items():
                    values.setdefault(key, []).append(value)
        rows.append({"n": n, **{k: round(float(np.mean(v)), 6) for k, v in sorted(values.items())}})
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=Path("data/models/sft"))
    ap.add_argument("--reward", type=Path, default=Path("data/models/reward"))
    ap.add_argument("--evals", type=Path, default=Path("data/evals"))
    ap.add_argument("--metrics", type=Path, default=Path("metrics/bon/sft.json"))
    ap.add_argument("--plots", type=Path, default=Path("plots/bon/sft.csv"))
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = ap.parse_args(argv)
    p = load("bon", args.params)
    torch.manual_seed(p.seed)

    docs = read_docs(args.evals)
    tok, model = generation.load(args.model)
    scorer = best_of_n.RewardScorer(args.reward, batch_size=p.batch_size)
    if not scorer.vocab_matches(tok):
        raise SystemExit(f"bon: the tokenizers of {args.model} and {args.reward} differ; the reward model must be "
                         "trained from this model")
    config = GenerationConfig.from_dict({**model.generation_config.to_dict(), "temperature": p.temperature,
                                         "top_p": p.top_p, "top_k": 0, "max_new_tokens": p.max_new_tokens})
    top = max(p.n)
    log.info("bon: %d evaluation questions x %d sampled replies from %s, scored by %s; N in %s", len(docs), top,
             args.model, args.reward, p.n)
    start = time.perf_counter()
    prompts = [[{"role": "user", "content": d["question"]}] for d in docs]
    _, replies, scores = best_of_n.best_of_n(tok, model, config, prompts, top, scorer, p.batch_size)
    seconds = time.perf_counter() - start

    rows = sweep(docs, replies, scores, p.n)
    write_csv(args.plots, rows)
    metrics = {f"n{row['n']}": {k: v for k, v in row.items() if k != "n"} for row in rows}
    write_metrics(args.metrics, metrics | {"questions": len(docs), "replies_per_s": round(len(docs) * top / seconds, 2)})
    for row in rows:
        log.info("best of %2d: %s", row["n"], "  ".join(f"{k} {v:.3f}" for k, v in row.items() if k != "n"))


if __name__ == "__main__":
    run(main)
