"""GRPO: the SFT model samples a group of replies per question and learns from their relative scores (TRL).

    python -m stages.grpo --sft data/models/sft --reward data/models/reward --world data/world \
        --out data/models/grpo --metrics metrics/grpo.json --plots plots/grpo

Group relative policy optimisation (Shao et al. 2024, DeepSeekMath) drops PPO's critic: each rl
question is answered `grpo.group_size` times, and a reply's advantage is its reward against the mean
of its own group. What is rewarded is `grpo.reward`, as for PPO: the reward model (`model`), the
world's truth as a verifiable reward (`judge`: the samples stage's world judge, jielong/grading's gold
reward), or their sum. Both are computed for every reply, the unused one with weight 0, so
plots/grpo/train.csv holds the proxy (reward model) and the gold reward against the KL to the SFT
reference (TRL logs it per token) over training, as PPO's curve does. A reply cut off at
`grpo.max_new_tokens` is left out of the loss (TRL's mask_truncated_completions).

The prompts are the rl people's questions; the people the reward model holds out (pref_data's split
of the rl people) are held out here too: the SFT and the GRPO model answer their questions greedily
before and after training, scored by the gold reward (metrics/grpo.json). The eval stage then scores
the model on evaluation people. The stage is off in the default run (`grpo.models: []`).
Trainer checkpoints are pickles, never written here: a killed run starts over.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch
from datasets import Dataset
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    GenerationConfig,
    PreTrainedTokenizerFast,
)

from jielong import onpolicy, preferences, reward_model, templates
from jielong.chat import PAD, reply_text
from jielong.grading import gold_reward
from jielong.io import atomic_dir, write_csv
from jielong.log import get_logger, run
from jielong.metrics import write_metrics
from jielong.model import save_tokenizer, validate_model
from jielong.params import load_all
from jielong.trainer import LogTo, training_args

log = get_logger("grpo")


# ---------------------------------------------------------------- rewards (TRL calls them per batch of replies)
def _texts(completions: list) -> list[str]:
    """Conversational completions ([{"role": "assistant", "content": ...}]) as the replies a user reads."""
    return [reply_text(c[0]["content"] if isinstance(c, list) else c) for c in completions]


def gold(prompts, completions, doc, **_) -> list[float]:
    """The world's truth: each reply's gold reward against its question-bank row (`doc`, JSON)."""
    return [gold_reward(text, json.loads(d)) for text, d in zip(_texts(completions), doc, strict=True)]


class RewardModel:
    """The reward model's score of each conversation, rendered as in its training (jielong/reward_model.py).
    TRL would render and tokenise for a reward model itself; this keeps the one rendering the reward
    stage and PPO use, and its name is the reward's column in TRL's logs."""

    __name__ = "reward_model"

    def __init__(self, path: Path, tok, device: torch.device):
        self.model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).to(device)
        self.model.requires_grad_(False)
        self.tok = tok

    def __call__(self, prompts, completions, **_) -> list[float]:
        ids = [reward_model.encode(self.tok, p, t) for p, t in zip(prompts, _texts(completions), strict=True)]
        return reward_model.score(self.model, self.tok.pad_token_id, ids, batch_size=len(ids)).tolist()


WEIGHTS = {"model": [1.0, 0.0], "judge": [0.0, 1.0], "sum": [1.0, 1.0]}  # [reward model, gold]


# ---------------------------------------------------------------- prompts
def questions(world: Path, params) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(train, held-out) rl questions as rows with a one-turn `prompt` and the `doc` the gold reward reads;
    held out: the rl people the reward model holds out (pref_data's split)."""
    rows = onpolicy.rl_questions(world)
    known = dict(zip(rows["person_id"].to_list(), rows["known"].to_list(), strict=True))
    split = preferences.split_people(known, params.pref_data)
    rows = rows.with_columns(split=pl.col("person_id").replace_strict(split),
                             prompt=pl.Series([[{"role": "user", "content": q}] for q in rows["question"]]))
    return rows.filter(pl.col("split") == "train"), rows.filter(pl.col("split") == "val")


def dataset(rows: pl.DataFrame) -> Dataset:
    return Dataset.from_list([{"prompt": r["prompt"], "doc": json.dumps({k: v for k, v in r.items() if k != "prompt"},
                                                                          default=str)}
                              for r in rows.iter_rows(named=True)])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.splitlines()[0])
    ap.add_argument("--sft", type=Path, default=Path("data/models/sft"))
    ap.add_argument("--reward", type=Path, default=Path("data/models/reward"))
    ap.add_argument("--world", type=Path, default=Path("data/world"))
    ap.add_argument("--out", type=Path, default=Path("data/models/grpo"))
    ap.add_argument("--metrics", type=Path, default=Path("metrics/grpo.json"))
    ap.add_argument("--plots", type=Path, default=Path("plots/grpo"))
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = ap.parse_args(argv)
    params = load_all(args.params)
    p = params.grpo
    if p.threads:
        torch.set_num_threads(p.threads)
    torch.manual_seed(p.seed)
    cuda = torch.cuda.is_available()

    from trl import GRPOConfig, GRPOTrainer

    tok = templates.chat_tokenizer(args.sft, "grpo")
    tok.pad_token = PAD
    if PreTrainedTokenizerFast.from_pretrained(args.reward).get_vocab() != tok.get_vocab():
        raise SystemExit(f"grpo: the tokenizers of {args.sft} and {args.reward} differ; the reward model must be "
                         "trained from this SFT model")
    train, held = questions(args.world, params)
    if train.height < p.batch_size // p.group_size:
        raise SystemExit(f"grpo: {train.height} rl training questions in {args.world}, fewer than one batch "
                         f"(grpo.batch_size {p.batch_size} / group_size {p.group_size})")
    prompts, docs = onpolicy.heldout(held, args.world)

    model = AutoModelForCausalLM.from_pretrained(args.sft, dtype=torch.float32)
    gold_before = onpolicy.gold_of(model, tok, prompts, docs, p.gold_max_new_tokens)
    tok.padding_side = "left"
    rm = RewardModel(args.reward, tok, torch.device("cuda" if cuda else "cpu"))
    log.info("GRPO of %s on %d rl questions x %d replies (%d held out), reward %s, beta %.3g; SFT gold reward "
             "on held-out questions %.3f", args.sft, train.height, p.group_size, held.height, p.reward, p.beta,
             gold_before)

    logs = LogTo(log, train={"reward": "reward", "reward_model": "rewards/reward_model/mean",
                             "gold_reward": "rewards/gold/mean", "kl_per_token": "kl", "entropy": "entropy",
                             "reward_std": "reward_std", "response_len": "completions/mean_length",
                             "clipped": "completions/clipped_ratio"})
    model.train()
    with tempfile.TemporaryDirectory(prefix="jielong-grpo-") as scratch:
        config = GRPOConfig(**training_args(p, scratch, cuda), num_generations=p.group_size,
                            max_completion_length=p.max_new_tokens, temperature=p.temperature, top_p=p.top_p,
                            top_k=0, beta=p.beta, loss_type=p.loss_type, num_iterations=p.updates_per_batch,
                            reward_weights=WEIGHTS[p.reward], mask_truncated_completions=True,
                            log_completions=False)
        trainer = GRPOTrainer(model=model, reward_funcs=[rm, gold], args=config, train_dataset=dataset(train),
                              processing_class=tok, callbacks=[logs])
        start = time.perf_counter()
        result = trainer.train()
        train_s = time.perf_counter() - start
        tuned = trainer.model

    curve = logs.train
    if not math.isfinite(result.training_loss):
        raise FloatingPointError(f"grpo: train loss is {result.training_loss}; nothing saved "
                                 f"(try a lower grpo.lr than {p.lr})")
    gold_after = onpolicy.gold_of(tuned, tok, prompts, docs, p.gold_max_new_tokens)
    args.plots.mkdir(parents=True, exist_ok=True)
    write_csv(args.plots / "train.csv", curve)
    with atomic_dir(args.out) as tmp:
        tuned.save_pretrained(tmp, safe_serialization=True)
        save_tokenizer(tok, tmp)
        GenerationConfig.from_pretrained(args.sft).save_pretrained(tmp)
        validate_model(tmp, args.out)

    replies = trainer.state.global_step * p.batch_size * p.grad_accum
    last = {k: float(np.mean([row[k] for row in curve[-5:]])) for k in ("reward_model", "gold_reward", "kl_per_token")}
    metrics = {"train_loss": float(result.training_loss), "gold_reward": gold_after, "gold_reward_sft": gold_before,
               "train": last, "steps": trainer.state.global_step, "replies": replies,
               "replies_per_s": round(replies / train_s, 2), "train_s": round(train_s, 1)}
    write_metrics(args.metrics, metrics)
    log.info("grpo done in %.0fs: held-out gold reward %.3f -> %.3f; last steps' reward model %.3f, gold %.3f, "
             "kl %.4f/token", train_s, gold_before, gold_after, last["reward_model"], last["gold_reward"],
             last["kl_per_token"])


if __name__ == "__main__":
    run(main)
