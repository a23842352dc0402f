"""What the TRL-trained stages (sft, reward, dpo, kto, grpo) share: their TrainingArguments and a log callback.

Every section these read (params sft, reward, dpo, kto, grpo) carries the same training knobs; the stage adds
its own (assistant-only loss, the reward centring term, DPO's beta) to what `training_args` returns.
"""

from __future__ import annotations

import dataclasses
import logging
import os

from transformers import TrainerCallback, TrainingArguments

# newer transformers names it activation_checkpointing (the old name a deprecated alias); older versions
# (5.17 on the H200 image) know only gradient_checkpointing
_CHECKPOINTING = ("activation_checkpointing" if "activation_checkpointing" in
                  {f.name for f in dataclasses.fields(TrainingArguments)} else "gradient_checkpointing")


def training_args(p, scratch: str, cuda: bool) -> dict:
    """Keyword arguments for a TRL *Config from a training section of params."""
    return dict(
        output_dir=scratch, per_device_train_batch_size=p.batch_size, per_device_eval_batch_size=p.batch_size,
        gradient_accumulation_steps=p.grad_accum, num_train_epochs=p.epochs, learning_rate=p.lr,
        # a float below 1 is a ratio of the total steps (transformers >= 5)
        lr_scheduler_type=p.lr_scheduler, warmup_steps=p.warmup_ratio, weight_decay=p.weight_decay,
        max_grad_norm=p.grad_clip if p.grad_clip > 0 else 1e9,
        logging_steps=p.log_every, logging_first_step=True,
        # a section without eval_every (GRPO: its held-out check is the gold reward) evaluates nothing
        eval_strategy="steps" if hasattr(p, "eval_every") else "no", eval_steps=getattr(p, "eval_every", None),
        # Trainer checkpoints are pickles (optimizer.pt, rng_state.pth), which this project never writes;
        # each of these stages takes minutes and restarts cleanly when killed
        save_strategy="no", report_to="none", seed=p.seed, data_seed=p.seed, use_cpu=not cuda, bf16=cuda,
        dataloader_num_workers=0,
        **{_CHECKPOINTING: False},  # TRL's default trades ~30% speed for memory a small model does not need
        disable_tqdm=os.environ.get("JIELONG_PROGRESS", "1") == "0",
    )


def _num(value) -> float:
    return float(f"{float(value):.6g}")


class LogTo(TrainerCallback):
    """The Trainer's log events to a stage's logger, and kept as rows for the DVC plots.

    `train` and `val` map a plot column to the key of the Trainer's log dict it comes from; `loss`
    and `val_loss` are always kept.
    """

    def __init__(self, log: logging.Logger, train: dict[str, str], val: dict[str, str] | None = None):
        self.log, self.train_keys, self.val_keys = log, train, val or {}
        self.train, self.val = [], []

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" in logs:
            row = {"step": state.global_step, "loss": _num(logs["loss"]),
                   **{col: _num(logs.get(key, float("nan"))) for col, key in self.train_keys.items()}}
            self.train.append(row)
            self.log.info("step %4d/%d  %s", state.global_step, state.max_steps,
                          "  ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "step"))
        if "eval_loss" in logs:
            if self.val and self.val[-1]["step"] == state.global_step:
                self.val.pop()  # a closing evaluate() repeats the trainer's own last one
            row = {"step": state.global_step, "val_loss": _num(logs["eval_loss"]),
                   **{col: _num(logs.get(key, float("nan"))) for col, key in self.val_keys.items()}}
            self.val.append(row)
            self.log.info("step %4d/%d  %s", state.global_step, state.max_steps,
                          "  ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "step"))
