"""Direct preference optimisation: the SFT model tuned on the preference pairs, no reward model (TRL).

    python -m stages.dpo --sft data/models/sft --data data/samples --world data/world --out data/models/dpo

DPO (Rafailov et al. 2023) fits the policy so that its log-probability ratio to the frozen SFT
reference ranks the chosen reply above the rejected one, with `dpo.beta` as the strength of the
implicit KL leash: the reward model and the PPO loop collapse into one classification loss. TRL's
DPOTrainer does the work on the conversational pairs data/samples holds.

With `dpo.rounds` above 1 the training is iterative (online DPO): round k samples replies from the
policy round k-1 left, judges them as the samples stage does (samples.judge, jielong/onpolicy.py),
and trains on the new pairs, its reference being that same policy.

Before and after training, the SFT and the DPO model answer the held-out pairs' prompts (rl people
the reward model never trains on, never evaluation people) greedily, and each answer gets the world's
gold reward (jielong/grading.gold_reward), so metrics/dpo.json shows what preference tuning did to
the truth, not only to the preference loss. The eval stage then scores it on the evaluation people.
Without --world (your own pairs, finetune/dvc.yaml) there is no gold reward and only one round.
Trainer checkpoints are pickles, never written here: a killed run starts over (minutes).
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
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from jielong import onpolicy, preferences, templates
from jielong.chat import PAD
from jielong.io import atomic_dir, write_csv
from jielong.log import get_logger, run
from jielong.metrics import write_metrics
from jielong.model import save_tokenizer, validate_model
from jielong.params import load_all
from jielong.trainer import LogTo, training_args

log = get_logger("dpo")


def pairs(table: pl.DataFrame) -> Dataset:
    """Preference pairs (data/samples' format) -> TRL's conversational preference format."""
    table = table.select("prompt", "chosen", "rejected")
    return Dataset.from_list([{"prompt": r["prompt"], "chosen": [{"role": "assistant", "content": r["chosen"]}],
                               "rejected": [{"role": "assistant", "content": r["rejected"]}]}
                              for r in table.iter_rows(named=True)])


def resample(model, tok, args, params, k: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Round k's pairs: the current policy answers the rl prompts, the judge of params samples scores
    the replies, best against worst per prompt (on-policy pairs only); train/val by the same people."""
    model.eval()
    tok.padding_side = "left"
    questions = onpolicy.rl_questions(args.world)
    known = dict(zip(questions["person_id"].to_list(), questions["known"].to_list(), strict=True))
    people = preferences.split_people(known, params.pref_data)
    rows = onpolicy.prompts(questions, params.samples.prompts_per_question, params.sft.data.answer_style,
                            params.samples.seed + k)
    with tempfile.TemporaryDirectory(prefix="jielong-dpo-judge-") as scratch:
        policy = Path(scratch)  # a model judge with `model: null` judges with this round's policy
        if params.samples.judge.kind == "model" and not params.samples.judge.model:
            model.save_pretrained(policy, safe_serialization=True)
            save_tokenizer(tok, policy)
        table = onpolicy.judged_samples(tok, model, rows, params.samples, policy)
    fresh = onpolicy.on_policy_pairs(table, people)
    if fresh.filter(pl.col("split") == "train").is_empty():
        raise SystemExit(f"dpo: round {k}: every training prompt's replies were judged equal; no pair to train on "
                         f"(raise samples.n, {params.samples.n})")
    return fresh.filter(pl.col("split") == "train"), fresh.filter(pl.col("split") == "val")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.splitlines()[0])
    ap.add_argument("--sft", type=Path, default=Path("data/models/sft"))
    ap.add_argument("--data", type=Path, default=Path("data/samples"))
    ap.add_argument("--world", type=Path, help="the world whose truth scores held-out answers (the gold reward) and "
                    "whose rl people the pairs must be about; without it (your own pairs) neither")
    ap.add_argument("--out", type=Path, default=Path("data/models/dpo"))
    ap.add_argument("--metrics", type=Path, default=Path("metrics/dpo.json"))
    ap.add_argument("--plots", type=Path, default=Path("plots/dpo"))
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = ap.parse_args(argv)
    params = load_all(args.params)
    p = params.dpo
    if p.threads:
        torch.set_num_threads(p.threads)
    torch.manual_seed(p.seed)
    cuda = torch.cuda.is_available()

    from trl import DPOConfig, DPOTrainer

    tok = AutoTokenizer.from_pretrained(args.sft)
    tok.pad_token = templates.pad_token(tok, PAD)
    train_table, val_table = pl.read_parquet(args.data / "train.parquet"), pl.read_parquet(args.data / "val.parquet")
    if args.world is None and p.rounds > 1:
        raise SystemExit(f"dpo.rounds = {p.rounds} judges the policy's replies against the world: pass --world, "
                         "or set dpo.rounds: 1 for your own pairs")
    model = AutoModelForCausalLM.from_pretrained(args.sft, dtype=torch.float32)
    gold = None  # the gold reward's prompts and question-bank rows (no world: your own pairs, no gold reward)
    if args.world is not None:
        onpolicy.refuse_other_splits("dpo", pl.read_parquet(args.world / "questions.parquet"),
                                     [args.data / "train.parquet", args.data / "val.parquet"])
        gold = onpolicy.heldout(val_table, args.world)
    gold_before = onpolicy.gold_of(model, tok, *gold, p.gold_max_new_tokens) if gold else None
    log.info("DPO of %s on %d pairs (%d val), beta %.3g, %d round(s); SFT gold reward on held-out prompts %s",
             args.sft, train_table.height, val_table.height, p.beta, p.rounds,
             "(no world)" if gold is None else f"{gold_before:.3f}")

    logs = LogTo(log, train={"margin": "rewards/margins", "accuracy": "rewards/accuracies"},
                 val={"val_accuracy": "eval_rewards/accuracies"})
    rounds, train_s, steps, trained_pairs = {}, 0.0, 0, 0
    for k in range(1, p.rounds + 1):
        if k > 1:  # online: the policy's own replies, judged; the reference is the policy this round starts from
            fresh_train, fresh_val = resample(model, tok, args, params, k)
            # held-out people without a pair this round keep the previous round's pairs for the val loss
            train_table, val_table = fresh_train, fresh_val if fresh_val.height else val_table
        model.train()
        with tempfile.TemporaryDirectory(prefix="jielong-dpo-") as scratch:
            config = DPOConfig(**training_args(p, scratch, cuda), beta=p.beta, max_length=p.max_length,
                               pad_token=tok.pad_token)
            trainer = DPOTrainer(model=model, args=config, train_dataset=pairs(train_table),
                                 eval_dataset=pairs(val_table), processing_class=tok, callbacks=[logs])
            start = time.perf_counter()
            result = trainer.train()
            train_s += time.perf_counter() - start
            final = trainer.evaluate()
            model = trainer.model
        steps += trainer.state.global_step
        trained_pairs += int(train_table.height * p.epochs)
        if p.rounds > 1:
            rounds[f"round{k}.gold_reward"] = onpolicy.gold_of(model, tok, *gold, p.gold_max_new_tokens)
            rounds[f"round{k}.pairs"] = train_table.height
            log.info("dpo round %d: %d pairs, held-out gold reward %.3f", k, train_table.height,
                     rounds[f"round{k}.gold_reward"])
    tuned = model

    for name, value in (("train loss", result.training_loss), ("val loss", final["eval_loss"])):
        if not math.isfinite(value):
            raise FloatingPointError(f"dpo: {name} is {value}; nothing saved (try a lower dpo.lr than {p.lr})")
    gold_after = onpolicy.gold_of(tuned, tok, *gold, p.gold_max_new_tokens) if gold else None
    with atomic_dir(args.out) as tmp:
        tuned.save_pretrained(tmp, safe_serialization=True)
        save_tokenizer(tok, tmp)
        GenerationConfig.from_pretrained(args.sft).save_pretrained(tmp)
        validate_model(tmp, args.out)

    metrics = {"train_loss": float(result.training_loss), "val_loss": float(final["eval_loss"]),
               "val_accuracy": float(final.get("eval_rewards/accuracies", float("nan"))),
               "val_margin": float(final.get("eval_rewards/margins", float("nan"))),
               **({"gold_reward": gold_after, "gold_reward_sft": gold_before} if gold else {}),
               "pairs_per_s": round(trained_pairs / train_s, 2), "train_s": round(train_s, 1), "steps": steps, **rounds}
    args.plots.mkdir(parents=True, exist_ok=True)
    write_csv(args.plots / "train.csv", logs.train)
    write_csv(args.plots / "val.csv", logs.val)
    write_metrics(args.metrics, metrics)
    log.info("dpo done in %.0fs: val accuracy %.3f, gold reward %s (SFT %s)", train_s, metrics["val_accuracy"],
             gold_after, gold_before)


if __name__ == "__main__":
    run(main)
