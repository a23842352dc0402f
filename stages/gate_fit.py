"""Fit a model's answer-time gate: P(the reply is right) from its own likelihoods, and a threshold.

    python -m stages.gate_fit --model data/models/sft --world data/world --evals data/evals \
        --out data/models/sft-gate --metrics metrics/gate_fit/sft.json --plots plots/gate_fit/sft

The model answers every question of the fit people (params selective.fit_splits, known and never-seen)
greedily, as the eval asks it, and computes its signals on each reply (jielong/selective.py: the
question's log-probabilities, the reply's, k-sample agreement). A reply that is not already an
abstention is labelled by the world's truth (right: the fact; never-seen people: always wrong), and
scikit-learn's logistic regression on `selective.signals` learns P(right). The threshold is chosen on
out-of-fold predictions (folds by person) as the largest at which the fit people's known facts are
refused at most `selective.target_false_abstain_rate` of the time, the model's own refusals included.

The evaluation people (data/evals' world_known and world_unknown) are answered too, but only to measure
the gate: each signal's AUROC, and the frontier (abstention on never-seen people against refusal of known
facts) of the gate as its threshold moves and of self-consistency decoding as its agreement moves. Writes:
    <out>/gate.json          the gate (plain JSON; what `talk --gate` and eval_system@<model>-gated load)
    <out>/signals.parquet    per question: split, reply, signals, P(right), whether gated
    metrics/gate_fit/<model>.json   threshold; fit and eval rates at it; per signal AUROC
    plots/gate_fit/<model>/gate.csv, consistency.csv   the frontier curves on evaluation people
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch

from jielong import grading, selective
from jielong.chat import is_chat_tokenizer
from jielong.checks import expect, gx
from jielong.generation import consistent_reply, encode, load
from jielong.io import atomic_dir, write_csv, write_json, write_parquet
from jielong.log import get_logger, run
from jielong.metrics import write_metrics
from jielong.params import load_all

log = get_logger("gate_fit")
THRESHOLDS = [i / 100 for i in range(101)]  # the gate's frontier curve: every hundredth of P(right)


# ---------------------------------------------------------------- questions
def questions(world: Path, evals: Path, fit_splits: list[str]) -> pl.DataFrame:
    """Fit people's questions from the question bank; evaluation people's from the clean eval sets."""
    cols = ["qid", "person_id", "name", "pronoun", "known", "split", "attribute", "question", "answer"]
    fit = pl.read_parquet(world / "questions.parquet").filter(pl.col("split").is_in(fit_splits)).select(cols)
    ev = pl.concat([pl.read_ndjson(evals / f"{t}.jsonl").select(cols) for t in ("world_known", "world_unknown")])
    if ev["split"].unique().to_list() != ["eval"]:
        raise SystemExit(f"gate_fit: {evals}/world_known|unknown.jsonl hold people outside the eval split")
    return pl.concat([fit.with_columns(role=pl.lit("fit")), ev.with_columns(role=pl.lit("eval"))])


def answer(model, tok, frame: pl.DataFrame, decoding: selective.Decoding) -> pl.DataFrame:
    """The greedy reply, k samples and every signal of each question; labels from the world's truth."""
    chat = is_chat_tokenizer(tok)
    contexts = [encode(tok, chat, q) for q in frame["question"]]
    replies = selective.greedy_replies(model, tok, contexts, decoding)
    samples = selective.sampled_replies(model, tok, contexts, decoding)
    rows = selective.signals(model, tok, contexts, frame["question"].to_list(), replies, samples, decoding.batch_size)
    docs = frame.to_dicts()
    return frame.with_columns(
        reply=pl.Series(replies), samples=pl.Series(samples, dtype=pl.List(pl.String)),
        abstains=pl.Series([grading.is_abstention(r) for r in replies]),
        right=pl.Series([grading.is_correct(r, d) for r, d in zip(replies, docs, strict=True)]),
    ).hstack(pl.DataFrame(rows, schema={s: pl.Float64 for s in selective.SIGNALS}))


# ---------------------------------------------------------------- rates and curves
def rates(frame: pl.DataFrame, gated: np.ndarray) -> dict[str, float]:
    """The eval's three numbers for replies `gated` (abstaining): never-seen people abstained on, known
    facts refused, known facts answered right."""
    known = frame["known"].to_numpy()
    return {"abstain_rate": float(gated[~known].mean()), "false_abstain_rate": float(gated[known].mean()),
            "exact_match": float((frame["right"].to_numpy() & ~gated)[known].mean())}


def gated(frame: pl.DataFrame, p_right: np.ndarray, threshold: float) -> np.ndarray:
    return frame["abstains"].to_numpy() | (p_right < threshold)


def consistency_curve(frame: pl.DataFrame, k: int) -> list[dict]:
    """Self-consistency decoding (talk --self-consistency) over the same k samples: the most common reply if
    at least `agreement` of them give it, else an abstention, at every agreement a vote of k can reach."""
    docs = frame.to_dicts()
    out = []
    for votes in range(1, k + 1):
        replies = [consistent_reply(s, votes / k) for s in frame["samples"].to_list()]
        said = frame.with_columns(right=pl.Series([grading.is_correct(r, d) for r, d in zip(replies, docs, strict=True)]))
        out.append({"agreement": votes / k, **rates(said, np.array([grading.is_abstention(r) for r in replies]))})
    return out


def aurocs(frame: pl.DataFrame, p_right: np.ndarray) -> dict[str, float]:
    """Per signal (and the calibrator): AUROC for a right reply among replies that are not abstentions, and
    for a known person among all questions; each signal read in its DIRECTION."""
    answered = ~frame["abstains"].to_numpy()
    right, known = frame["right"].to_numpy(), frame["known"].to_numpy()
    out = {}
    for name in (*selective.SIGNALS, "calibrator"):
        score = p_right if name == "calibrator" else frame[name].to_numpy() * selective.DIRECTION[name]
        out[f"right.{name}"] = grading.auroc(list(zip(score[answered], right[answered], strict=True)))
        if name != "calibrator":
            out[f"known.{name}"] = grading.auroc(list(zip(score, known, strict=True)))
    return out


# ---------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True, help="a chat model directory, e.g. data/models/sft")
    ap.add_argument("--world", type=Path, default=Path("data/world"))
    ap.add_argument("--evals", type=Path, default=Path("data/evals"))
    ap.add_argument("--out", type=Path, required=True, help="the gate directory, e.g. data/models/sft-gate")
    ap.add_argument("--metrics", type=Path, required=True)
    ap.add_argument("--plots", type=Path, required=True)
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = ap.parse_args(argv)
    p = load_all(args.params).selective
    d = p.decoding
    decoding = selective.Decoding(d.k, d.temperature, d.top_p, d.top_k, d.max_new_tokens, tuple(d.stop), d.seed,
                                  d.batch_size)
    start = time.perf_counter()
    if p.threads:
        torch.set_num_threads(p.threads)
    torch.manual_seed(d.seed)
    tok, model = load(args.model)
    frame = answer(model, tok, questions(args.world, args.evals, p.fit_splits), decoding)
    log.info("answered %d questions with signals in %.0fs", frame.height, time.perf_counter() - start)

    fit = frame.filter(pl.col("role") == "fit")
    rows = fit.filter(~pl.col("abstains"))
    feats, target = list(p.signals), p.target_false_abstain_rate
    oof = np.ones(fit.height)
    oof[~fit["abstains"].to_numpy()] = selective.out_of_fold(
        rows.select(feats).to_dicts(), rows["right"].to_list(), rows["person_id"].to_list(), feats,
        p.calibrator.c, p.calibrator.folds)
    known = fit["known"].to_numpy()
    threshold = selective.choose_threshold(oof[known], fit["abstains"].to_numpy()[known], target)
    if threshold == 0.0:
        log.warning("the model alone refuses more than %.3f of the fit people's known facts: the gate never abstains",
                    target)
    if rows["right"].n_unique() < 2:
        log.warning("gate_fit: every one of %d fit replies is %s: the calibrator is a constant and the gate "
                    "decides nothing (a model this weak, as on the tiny profile)", rows.height,
                    "right" if rows["right"].all() else "wrong")
    calibrator = selective.fit_calibrator(rows.select(feats).to_dicts(), rows["right"].to_list(), feats, p.calibrator.c)
    gate = selective.Gate(args.model.as_posix(), selective.model_sha256(args.model), decoding, calibrator, threshold,
                          p.sentence)
    p_right = np.where(frame["abstains"].to_numpy(), np.nan, calibrator.predict(frame.select(feats).to_dicts()))
    p_fill = np.nan_to_num(p_right, nan=1.0)  # an abstention is given as it is, whatever the threshold
    frame = frame.with_columns(p_right=pl.Series(p_right), gated=pl.Series(gated(frame, p_fill, threshold)))

    ev_mask = (frame["role"] == "eval").to_numpy()
    ev, p_ev = frame.filter(pl.col("role") == "eval"), p_fill[ev_mask]
    gate_curve = [{"threshold": t, **rates(ev, gated(ev, p_ev, t))} for t in THRESHOLDS]
    metrics = {"threshold": threshold, "signals": len(feats), "wall_s": time.perf_counter() - start,
               "fit": {"items": fit.height, "answered": rows.height,
                       "model": rates(fit, fit["abstains"].to_numpy()), "gated_out_of_fold": rates(fit, gated(fit, oof, threshold))},
               "eval": {"items": ev.height, "model": rates(ev, ev["abstains"].to_numpy()), "gated": rates(ev, gated(ev, p_ev, threshold))},
               "auroc": aurocs(ev, p_ev), "auroc_fit": aurocs(fit, oof)}

    expect(f"{args.out}/signals.parquet", frame.with_columns(finite=pl.all_horizontal(
        [pl.col(s).is_finite() for s in selective.SIGNALS])), [
        gx.expectations.ExpectColumnValuesToBeUnique(column="qid"),
        gx.expectations.ExpectColumnValuesToBeInSet(column="finite", value_set=[True]),
        gx.expectations.ExpectColumnValuesToBeBetween(column="agreement", min_value=0.0, max_value=1.0),
        gx.expectations.ExpectColumnValuesToBeBetween(column="question_logprob_min", max_value=0.0),
        gx.expectations.ExpectColumnValuesToBeInSet(column="role", value_set=["fit", "eval"]),
    ])
    artifact = pl.DataFrame({"feature": list(calibrator.features), "coef": list(calibrator.coef),
                             "scale": list(calibrator.scale), "threshold": threshold, "model": gate.model})
    expect(f"{args.out}/gate.json", artifact.with_columns(finite=pl.col("coef").is_finite() & pl.col("scale").is_finite()), [
        gx.expectations.ExpectColumnValuesToBeInSet(column="feature", value_set=feats),
        gx.expectations.ExpectColumnValuesToBeUnique(column="feature"),
        gx.expectations.ExpectTableRowCountToEqual(value=len(feats)),
        gx.expectations.ExpectColumnValuesToBeInSet(column="finite", value_set=[True]),
        gx.expectations.ExpectColumnValuesToBeBetween(column="scale", min_value=0.0, strict_min=True),
        gx.expectations.ExpectColumnValuesToBeBetween(column="threshold", min_value=0.0, max_value=1.0),
    ])
    with atomic_dir(args.out) as tmp:
        write_json(tmp / selective.ARTIFACT, gate.to_json())
        write_parquet(tmp / "signals.parquet", frame)
    selective.load_gate(args.out, args.model)  # what talk and the eval will load: round trip
    with atomic_dir(args.plots) as tmp:
        write_csv(tmp / "gate.csv", gate_curve)
        write_csv(tmp / "consistency.csv", consistency_curve(ev, decoding.k))
    write_metrics(args.metrics, metrics)
    log.info("gate for %s: threshold %.3f; eval people, model alone %s; gated %s", args.model, threshold,
             metrics["eval"]["model"], metrics["eval"]["gated"])


if __name__ == "__main__":
    run(main)
