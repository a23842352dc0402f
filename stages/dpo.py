"""Direct preference optimisation: the SFT model tuned on the preference pairs, no reward model (TRL).

    python -m stages.dpo --sft data/models/sft --data data/prefs --world data/world --out data/models/dpo

DPO (Rafailov et al. 2023) fits the policy so that its log-probability ratio to the frozen SFT
reference ranks the chosen reply above the rejected one, with `dpo.beta` as the strength of the
implicit KL leash: the reward model and the PPO loop collapse into one classification loss. TRL's
DPOTrainer does the work on the conversational pairs data/prefs holds.

Before and after training, the SFT and the DPO model answer the held-out pairs' prompts (train-split
people, never evaluation people) greedily, and each answer gets the world's gold reward
(evals/tasks/scoring.gold_reward), so metrics/dpo.json shows what preference tuning did to the truth,
not only to the preference loss. The eval stage then scores it on the evaluation people.
Trainer checkpoints are pickles, never written here: a killed run starts over (minutes).
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, GenerationConfig, PreTrainedTokenizerFast, TrainerCallback

from evals.tasks import scoring
from jielong.chat import PAD
from jielong.io import atomic_dir, write_csv
from jielong.log import get_logger
from jielong.metrics import write_metrics
from jielong.model import validate_model
from jielong.params import load
from jielong.talk import encode as encode_prompt
from jielong.talk import generate_batch

log = get_logger("dpo")


class LogTo(TrainerCallback):
    def __init__(self):
        self.train, self.val = [], []

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" in logs:
            row = {"step": state.global_step, "loss": round(float(logs["loss"]), 5),
                   "margin": round(float(logs.get("rewards/margins", float("nan"))), 5),
                   "accuracy": round(float(logs.get("rewards/accuracies", float("nan"))), 5)}
            self.train.append(row)
            log.info("step %4d/%d  loss %.4f  margin %.3f  acc %.2f", state.global_step, state.max_steps,
                     row["loss"], row["margin"], row["accuracy"])
        if "eval_loss" in logs:
            self.val.append({"step": state.global_step, "val_loss": round(float(logs["eval_loss"]), 5),
                             "val_accuracy": round(float(logs.get("eval_rewards/accuracies", float("nan"))), 5)})
            log.info("step %4d/%d  val loss %.4f", state.global_step, state.max_steps, logs["eval_loss"])


def pairs(path: Path) -> Dataset:
    """data/prefs parquet -> TRL's conversational preference format."""
    table = pl.read_parquet(path, columns=["prompt", "chosen", "rejected"])
    return Dataset.from_list([{"prompt": r["prompt"], "chosen": [{"role": "assistant", "content": r["chosen"]}],
                               "rejected": [{"role": "assistant", "content": r["rejected"]}]}
                              for r in table.iter_rows(named=True)])


@torch.no_grad()
def gold_of(model, tok, prompts: list[list[dict]], docs: list[dict], max_new_tokens: int) -> float:
    """Mean gold reward of the model's greedy answers to `prompts` (batched as the talk CLI does)."""
    model.eval()
    tok.padding_side = "left"
    config = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=tok.eos_token_id,
                              pad_token_id=tok.convert_tokens_to_ids(PAD))
    replies = generate_batch(tok, model, config, [encode_prompt(tok, True, p) for p in prompts], batch_size=32)
    return float(np.mean([scoring.gold_reward(reply, doc) for reply, doc in zip(replies, docs, strict=True)]))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sft", type=Path, default=Path("data/models/sft"))
    ap.add_argument("--data", type=Path, default=Path("data/prefs"))
    ap.add_argument("--world", type=Path, default=Path("data/world"))
    ap.add_argument("--out", type=Path, default=Path("data/models/dpo"))
    ap.add_argument("--metrics", type=Path, default=Path("metrics/dpo.json"))
    ap.add_argument("--plots", type=Path, default=Path("plots/dpo"))
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = ap.parse_args(argv)
    p = load("dpo", args.params)
    if p.threads:
        torch.set_num_threads(p.threads)
    cuda = torch.cuda.is_available()

    from trl import DPOConfig, DPOTrainer

    tok = PreTrainedTokenizerFast.from_pretrained(args.sft)
    train, val = pairs(args.data / "train.parquet"), pairs(args.data / "val.parquet")
    # the gold reward's prompts: each held-out question once, with its question-bank row
    held = pl.read_parquet(args.data / "val.parquet").unique("qid", keep="first", maintain_order=True)
    questions = pl.read_parquet(args.world / "questions.parquet")
    docs = held.select("qid").join(questions, on="qid", how="left", maintain_order="left").to_dicts()
    prompts = held["prompt"].to_list()

    model = AutoModelForCausalLM.from_pretrained(args.sft, dtype=torch.float32)
    gold_before = gold_of(model, tok, prompts, docs, p.gold_max_new_tokens)
    model.train()
    log.info("DPO of %s on %d pairs (%d val), beta %.3g; SFT gold reward on %d held-out prompts %.3f",
             args.sft, len(train), len(val), p.beta, len(prompts), gold_before)

    with tempfile.TemporaryDirectory(prefix="jielong-dpo-") as scratch:
        config = DPOConfig(
            output_dir=scratch, beta=p.beta, max_length=p.max_length, per_device_train_batch_size=p.batch_size,
            per_device_eval_batch_size=p.batch_size, gradient_accumulation_steps=p.grad_accum,
            num_train_epochs=p.epochs, learning_rate=p.lr, lr_scheduler_type=p.lr_scheduler,
            warmup_steps=p.warmup_ratio, weight_decay=p.weight_decay,
            max_grad_norm=p.grad_clip if p.grad_clip > 0 else 1e9, logging_steps=p.log_every,
            logging_first_step=True, eval_strategy="steps", eval_steps=p.eval_every, save_strategy="no",
            report_to="none", seed=p.seed, data_seed=p.seed, use_cpu=not cuda, bf16=cuda,
            dataloader_num_workers=0, activation_checkpointing=False,
            disable_tqdm=os.environ.get("JIELONG_PROGRESS", "1") == "0", pad_token=PAD,
        )
        logs = LogTo()
        trainer = DPOTrainer(model=model, args=config, train_dataset=train, eval_dataset=val, processing_class=tok,
                             callbacks=[logs])
        start = time.perf_counter()
        result = trainer.train()
        train_s = time.perf_counter() - start
        final = trainer.evaluate()
        tuned = trainer.model

    for name, value in (("train loss", result.training_loss), ("val loss", final["eval_loss"])):
        if not math.isfinite(value):
            raise FloatingPointError(f"dpo: {name} is {value}; nothing saved (try a lower dpo.lr than {p.lr})")
    gold_after = gold_of(tuned, tok, prompts, docs, p.gold_max_new_tokens)
    with atomic_dir(args.out) as tmp:
        tuned.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        GenerationConfig.from_pretrained(args.sft).save_pretrained(tmp)
        validate_model(tmp, args.out)

    pairs_seen = int(len(train) * p.epochs)
    metrics = {"train_loss": float(result.training_loss), "val_loss": float(final["eval_loss"]),
               "val_accuracy": float(final.get("eval_rewards/accuracies", float("nan"))),
               "val_margin": float(final.get("eval_rewards/margins", float("nan"))),
               "gold_reward": gold_after, "gold_reward_sft": gold_before, "pairs_per_s": round(pairs_seen / train_s, 2),
               "train_s": round(train_s, 1), "steps": trainer.state.global_step}
    args.plots.mkdir(parents=True, exist_ok=True)
    write_csv(args.plots / "train.csv", logs.train)
    write_csv(args.plots / "val.csv", logs.val)
    write_metrics(args.metrics, metrics)
    log.info("dpo done in %.0fs: val accuracy %.3f, gold reward %.3f (SFT %.3f)", train_s, metrics["val_accuracy"],
             gold_after, gold_before)


if __name__ == "__main__":
    main()
