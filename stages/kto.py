"""KTO: the SFT model tuned on single replies labelled good or bad, no pairs and no reward model (TRL).

    python -m stages.kto --sft data/models/sft --data data/samples --world data/world --out data/models/kto

KTO (Ethayarajh et al. 2024) needs no pairs: each reply of the judged on-policy samples is desirable
or undesirable on its own (data/samples/labels.parquet: the judge's score above samples.judge.threshold),
with the scripted pairs the samples stage mixed into its pairs unpacked into one good and one bad reply,
and the policy's log-probability ratio to the frozen SFT reference is pushed up for good replies and
down for bad ones, against a reference point estimated from the batch's mismatched prompt/reply
pairs (the batch's KL). `kto.desirable_weight` and `kto.undesirable_weight` balance unequal counts.
TRL's KTOTrainer does the work.

As for DPO, the SFT and the KTO model answer the held-out rl people's questions greedily before and
after training, scored by the world's gold reward (metrics/kto.json); the eval stage then scores the
model on evaluation people. The stage is off in the default run (`kto.models: []`); `[kto]` turns it on.
Trainer checkpoints are pickles, never written here: a killed run starts over.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import polars as pl
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, GenerationConfig, PreTrainedTokenizerFast

from jielong import onpolicy
from jielong.checks import expect, gx
from jielong.io import atomic_dir, write_csv
from jielong.log import get_logger, run
from jielong.metrics import write_metrics
from jielong.model import save_tokenizer, validate_model
from jielong.params import load
from jielong.trainer import LogTo, training_args

log = get_logger("kto")


def check(labels: pl.DataFrame, where: str) -> None:
    """Both kinds of reply in the split (KTO's loss needs good and bad ones), every reply a string (an
    empty one is a real sample of the policy: judged, and bad)."""
    frame = labels.select(kind=pl.when(pl.col("label")).then(pl.lit("good")).otherwise(pl.lit("bad")),
                          completion=pl.col("completion"))
    expect(where, frame, [
        gx.expectations.ExpectColumnDistinctValuesToEqualSet(column="kind", value_set=["good", "bad"]),
        gx.expectations.ExpectColumnValuesToNotBeNull(column="completion"),
    ])


def unpaired(labels: pl.DataFrame, pairs: pl.DataFrame) -> pl.DataFrame:
    """The judged samples' labels, plus each scripted pair of the samples stage (pref_data's failure kinds,
    mixed in at samples.synthetic_fraction; no judged score) as one good and one bad reply: KTO's data
    in the proportion the reward model and DPO see them. A policy that never answers right (a tiny
    model) has no good sample of its own; the scripted kinds still show what a good reply is."""
    scripted = pairs.filter(pl.col("chosen_score").is_null())
    cols = ["person_id", "qid", "prompt", "completion", "label", "split"]
    return pl.concat([labels.select(cols), *(scripted.select("person_id", "qid", "prompt", "split",
                                                             completion=pl.col(side), label=pl.lit(side == "chosen"))
                                             .select(cols) for side in ("chosen", "rejected"))])


def examples(labels: pl.DataFrame) -> Dataset:
    """Labelled replies -> TRL's conversational unpaired preference format."""
    return Dataset.from_list([{"prompt": r["prompt"], "completion": [{"role": "assistant", "content": r["completion"]}],
                               "label": r["label"]} for r in labels.iter_rows(named=True)])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.splitlines()[0])
    ap.add_argument("--sft", type=Path, default=Path("data/models/sft"))
    ap.add_argument("--data", type=Path, default=Path("data/samples"), help="labels.parquet of the samples stage")
    ap.add_argument("--world", type=Path, default=Path("data/world"))
    ap.add_argument("--out", type=Path, default=Path("data/models/kto"))
    ap.add_argument("--metrics", type=Path, default=Path("metrics/kto.json"))
    ap.add_argument("--plots", type=Path, default=Path("plots/kto"))
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = ap.parse_args(argv)
    p = load("kto", args.params)
    if p.threads:
        torch.set_num_threads(p.threads)
    torch.manual_seed(p.seed)
    cuda = torch.cuda.is_available()

    from trl import KTOConfig, KTOTrainer

    sources = [args.data / name for name in ("labels.parquet", "train.parquet", "val.parquet")]
    onpolicy.refuse_other_splits("kto", pl.read_parquet(args.world / "questions.parquet"), sources)
    labels = unpaired(pl.read_parquet(sources[0]), pl.concat([pl.read_parquet(f) for f in sources[1:]]))
    train, val = labels.filter(pl.col("split") == "train"), labels.filter(pl.col("split") == "val")
    for split, frame in (("train", train), ("val", val)):
        check(frame, f"{args.data}/labels.parquet and scripted pairs ({split} rows)")
    prompts, docs = onpolicy.heldout(val, args.world)

    tok = PreTrainedTokenizerFast.from_pretrained(args.sft)
    model = AutoModelForCausalLM.from_pretrained(args.sft, dtype=torch.float32)
    gold_before = onpolicy.gold_of(model, tok, prompts, docs, p.gold_max_new_tokens)
    good = int(train["label"].sum())
    log.info("KTO of %s on %d labelled replies (%d good, %d bad; %d val), beta %.3g; SFT gold reward on %d "
             "held-out prompts %.3f", args.sft, train.height, good, train.height - good, val.height, p.beta,
             len(prompts), gold_before)

    logs = LogTo(log, train={"kl": "kl", "margin": "rewards/margins", "chosen": "rewards/chosen",
                             "rejected": "rewards/rejected"},
                 val={"val_kl": "eval_kl", "val_margin": "eval_rewards/margins"})
    model.train()
    with tempfile.TemporaryDirectory(prefix="jielong-kto-") as scratch:
        config = KTOConfig(**training_args(p, scratch, cuda), beta=p.beta, max_length=p.max_length,
                           desirable_weight=p.desirable_weight, undesirable_weight=p.undesirable_weight)
        trainer = KTOTrainer(model=model, args=config, train_dataset=examples(train), eval_dataset=examples(val),
                             processing_class=tok, callbacks=[logs])
        start = time.perf_counter()
        result = trainer.train()
        train_s = time.perf_counter() - start
        final = trainer.evaluate()
        tuned = trainer.model

    for name, value in (("train loss", result.training_loss), ("val loss", final["eval_loss"])):
        if not math.isfinite(value):
            raise FloatingPointError(f"kto: {name} is {value}; nothing saved (try a lower kto.lr than {p.lr})")
    gold_after = onpolicy.gold_of(tuned, tok, prompts, docs, p.gold_max_new_tokens)
    with atomic_dir(args.out) as tmp:
        tuned.save_pretrained(tmp, safe_serialization=True)
        save_tokenizer(tok, tmp)
        GenerationConfig.from_pretrained(args.sft).save_pretrained(tmp)
        validate_model(tmp, args.out)

    metrics = {"train_loss": float(result.training_loss), "val_loss": float(final["eval_loss"]),
               "val_margin": float(final.get("eval_rewards/margins", float("nan"))),
               "val_kl": float(final.get("eval_kl", float("nan"))),
               "gold_reward": gold_after, "gold_reward_sft": gold_before, "labels": train.height,
               "labels_good": good, "labels_per_s": round(train.height * p.epochs / train_s, 2),
               "train_s": round(train_s, 1), "steps": trainer.state.global_step}
    args.plots.mkdir(parents=True, exist_ok=True)
    write_csv(args.plots / "train.csv", logs.train)
    write_csv(args.plots / "val.csv", logs.val)
    write_metrics(args.metrics, metrics)
    log.info("kto done in %.0fs: val margin %.3f, gold reward %.3f (SFT %.3f)", train_s, metrics["val_margin"],
             gold_after, gold_before)


if __name__ == "__main__":
    run(main)
