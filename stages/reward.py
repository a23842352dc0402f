"""Reward model: the SFT model with a scalar head, trained on preference pairs (TRL's RewardTrainer).

    python -m stages.reward --sft data/models/sft --data data/samples --out data/models/reward \
        --metrics metrics/reward.json --plots plots/reward

The SFT model loads into transformers' sequence-classification head (`num_labels=1`: one score read
at the last non-pad token) and learns the Bradley-Terry pairwise loss, -log sigmoid(r_chosen -
r_rejected), on prompt/chosen/rejected pairs rendered whole through the chat template, the same
rendering PPO scores its rollouts in (jielong/reward_model.py). TRL's centring term
(reward.center_rewards_coefficient) keeps rewards near zero, the scale PPO adds its KL penalty to.
metrics/reward.json holds `pairwise_acc` (the share of held-out pairs, about people the reward model
never trained on, whose chosen reply scores higher) overall and per failure kind
(`pairwise_acc.<kind>`), which shows what the reward model has and has not learnt; `people.<kind>`
counts the held-out people a kind's pairs are about, how far one such accuracy can be trusted.

The output is a plain HF dir (config.json with LlamaForSequenceClassification, model.safetensors,
the tokenizer with its chat template and pad token) that PPO loads as the frozen reward model and as
the critic's initialisation. It has no generation_config.json: a classifier does not generate.

Trainer checkpoints are pickles (optimizer.pt, rng_state.pth, training_args.bin), which this project
never writes, so the stage keeps none (save_strategy="no"): training takes minutes, and a killed run
re-run starts over cleanly (the output dir is only renamed into place when complete).
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch
from datasets import Dataset
from transformers import AutoModelForSequenceClassification

from jielong import reward_model, templates
from jielong.chat import PAD
from jielong.io import atomic_dir, write_csv
from jielong.log import get_logger, run
from jielong.metrics import write_metrics
from jielong.model import save_tokenizer, validate_model
from jielong.params import load
from jielong.trainer import LogTo, training_args

log = get_logger("reward")


def as_dataset(table: pl.DataFrame, tok) -> Dataset:
    """Pairs -> TRL's tokenised preference format, each side encoded by jielong/reward_model.py (the one
    definition of what the reward model reads, for training, held-out scoring and PPO alike)."""
    return Dataset.from_list([
        {"chosen_ids": reward_model.encode(tok, r["prompt"], r["chosen"]),
         "rejected_ids": reward_model.encode(tok, r["prompt"], r["rejected"])}
        for r in table.select("prompt", "chosen", "rejected").iter_rows(named=True)])


# ---------------------------------------------------------------- held-out pairs
def pairwise(model, tok, table: pl.DataFrame, batch_size: int) -> dict:
    """pairwise_acc overall and per failure kind, the people each kind's pairs are about (a kind's
    accuracy over two people moves in halves), and the reward scale, on `table`'s pairs."""
    rows = table.select("prompt", "chosen", "rejected").to_dicts()
    chosen, rejected = (reward_model.score(model, tok.pad_token_id,
                                           [reward_model.encode(tok, r["prompt"], r[side]) for r in rows], batch_size)
                        for side in ("chosen", "rejected"))
    right = chosen > rejected  # a tie is not a preference
    kinds = np.array(table["kind"].to_list())
    # the world's pairs name their person; your own pairs (the finetune pipeline) need not
    people = {} if "person_id" not in table.columns else {
        "people": table["person_id"].n_unique(),
        **{f"people.{k}": n for k, n in sorted(table.group_by("kind").agg(pl.col("person_id").n_unique()).iter_rows())}}
    both = np.concatenate([chosen, rejected])
    return {"pairwise_acc": float(right.mean()),
            **{f"pairwise_acc.{k}": float(right[kinds == k].mean()) for k in sorted(set(kinds))}, **people,
            "reward.chosen_mean": float(chosen.mean()), "reward.rejected_mean": float(rejected.mean()),
            "reward.std": float(both.std()), "margin_mean": float((chosen - rejected).mean())}


# ---------------------------------------------------------------- the model
def load_reward_model(sft: Path, pad_id: int):
    """The SFT model under a freshly initialised scalar head; anything else missing or left over fails."""
    model, info = AutoModelForSequenceClassification.from_pretrained(
        sft, num_labels=1, pad_token_id=pad_id, dtype=torch.float32, trust_remote_code=False,
        output_loading_info=True)
    missing = [k for k in info["missing_keys"] if k != "score.weight"]
    unexpected = [k for k in info["unexpected_keys"] if not k.startswith("lm_head.")]
    if missing or unexpected:
        raise SystemExit(f"reward: {sft} does not load as a sequence classifier: missing {missing}, "
                         f"unexpected {unexpected}")
    model.config.id2label, model.config.label2id = {0: "reward"}, {"reward": 0}
    return model


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.splitlines()[0])
    ap.add_argument("--sft", type=Path, default=Path("data/models/sft"))
    ap.add_argument("--data", type=Path, default=Path("data/samples"))
    ap.add_argument("--out", type=Path, default=Path("data/models/reward"))
    ap.add_argument("--metrics", type=Path, default=Path("metrics/reward.json"))
    ap.add_argument("--plots", type=Path, default=Path("plots/reward"))
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = ap.parse_args(argv)
    p = load("reward", args.params)
    if p.threads:
        torch.set_num_threads(p.threads)
    cuda = torch.cuda.is_available()

    from trl import RewardConfig, RewardTrainer

    tok = templates.chat_tokenizer(args.sft, "reward")
    tok.pad_token = templates.pad_token(tok, PAD)
    train_table, val_table = pl.read_parquet(args.data / "train.parquet"), pl.read_parquet(args.data / "val.parquet")
    torch.manual_seed(p.seed)  # the scalar head is initialised at load
    model = load_reward_model(args.sft, tok.pad_token_id)
    log.info("reward model from %s on %d pairs (%d val), %.1f epochs", args.sft, train_table.height, val_table.height,
             p.epochs)

    with tempfile.TemporaryDirectory(prefix="jielong-reward-") as scratch:
        config = RewardConfig(
            **training_args(p, scratch, cuda), max_length=p.max_length, eval_on_start=True,
            center_rewards_coefficient=p.center_rewards_coefficient or None, include_num_input_tokens_seen="non_padding",
        )
        logs = LogTo(log, train={"accuracy": "accuracy", "margin": "margin", "lr": "learning_rate"},
                     val={"val_accuracy": "eval_accuracy"})
        trainer = RewardTrainer(model=model, args=config, train_dataset=as_dataset(train_table, tok),
                                eval_dataset=as_dataset(val_table, tok), processing_class=tok, callbacks=[logs])
        # TRL drops a pair longer than max_length without a word; a silently smaller data set is a bug here
        kept = {"train": len(trainer.train_dataset), "val": len(trainer.eval_dataset)}
        if kept != {"train": train_table.height, "val": val_table.height}:
            raise SystemExit(f"reward: pairs longer than reward.max_length={p.max_length} tokens: kept {kept} of "
                             f"{train_table.height}/{val_table.height}; raise reward.max_length to at least "
                             "pref_data.max_length")
        start = time.perf_counter()
        result = trainer.train()
        train_s = time.perf_counter() - start
        val_loss = trainer.evaluate()["eval_loss"]  # LogTo records it as the curve's last point
        tokens = int(trainer.state.num_input_tokens_seen)
        rm = trainer.model

    for name, value in (("train loss", result.training_loss), ("val loss", val_loss)):
        if not math.isfinite(value):
            raise FloatingPointError(f"reward: {name} is {value}; nothing saved (try a lower reward.lr than {p.lr})")
    held_out = pairwise(rm, tok, val_table, p.eval_batch_size)
    with atomic_dir(args.out) as tmp:
        rm.config.pad_token_id = tok.pad_token_id
        rm.save_pretrained(tmp, safe_serialization=True)
        save_tokenizer(tok, tmp)
        validate_model(tmp, args.out, generates=False)

    last = logs.train[-max(1, min(5, len(logs.train))):]
    metrics = {**held_out, "train_loss": float(np.mean([r["loss"] for r in last])), "val_loss": float(val_loss),
               "val_loss_first": logs.val[0]["val_loss"], "tokens": tokens,
               "tokens_per_s": round(tokens / train_s, 1), "train_s": round(train_s, 1),
               "steps": trainer.state.global_step, "pairs.train": train_table.height, "pairs.val": val_table.height}
    args.plots.mkdir(parents=True, exist_ok=True)
    write_csv(args.plots / "train.csv", logs.train)
    write_csv(args.plots / "val.csv", logs.val)
    write_metrics(args.metrics, metrics)
    log.info("reward model done in %.0fs: held-out pairwise accuracy %.3f (%s), val loss %.4f", train_s,
             metrics["pairwise_acc"], ", ".join(f"{k.split('.', 1)[1]} {v:.2f}" for k, v in held_out.items()
                                               if k.startswith("pairwise_acc.")), val_loss)


if __name__ == "__main__":
    run(main)
