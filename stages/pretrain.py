"""Pretrain a decoder-only transformer (transformers' Llama) from scratch on the token shards.

    python -m stages.pretrain --tokens data/tokens --tokenizer data/tokenizer --out data/models/base
    torchrun --nproc_per_node 2 -m stages.pretrain ...        # DDP or FSDP: gloo on CPU, nccl on GPU

Under torchrun, pretrain.parallel picks DDP (every process holds the whole model and optimizer) or
FSDP (torch's fully_shard: each decoder layer's weights, gradients and optimizer state are sharded
over the processes, which all-gather a layer for its forward and backward). Both see the same global
batch as one process, split between them; FSDP checkpoints are sharded (jielong/checkpoint.py).

AdamW with warmup and cosine decay, weight decay, gradient clipping and accumulation. Checkpoints
(safetensors) every `checkpoint_every` steps into a work directory keyed by a hash of the params
and inputs, so a killed run re-run resumes where it stopped and ends at the same loss (bitwise on
CPU in deterministic mode). A NaN or inf loss stops the run naming the step; nothing is saved after.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from transformers import GenerationConfig, PreTrainedTokenizerFast

from jielong import checkpoint
from jielong.chat import END, EOT, PAD
from jielong.io import atomic_dir, write_csv
from jielong.log import get_logger, run
from jielong.metrics import write_metrics
from jielong.model import (
    build_model,
    flops_per_token,
    llama_config,
    measure_cpu_peak,
    n_params,
    peak_flops,
    save_tokenizer,
    validate_model,
)
from jielong.params import load
from jielong.tokens import load_split, read_meta

log = get_logger("pretrain")


# ---------------------------------------------------------------- setup
def setup(params) -> tuple[torch.device, int, int]:
    """Device, rank and world size; one process or torchrun's."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    cuda = params.device == "cuda" or (params.device == "auto" and torch.cuda.is_available())
    if world > 1:
        dist.init_process_group("nccl" if cuda else "gloo")
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
    if params.threads:
        torch.set_num_threads(params.threads)
    if params.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=cuda)
    torch.manual_seed(params.seed)
    return device, rank, world


def work_dir(root: Path, params, tokens: Path) -> Path:
    """Checkpoints live under a hash of everything that shapes the run; other hashes are stale."""
    key = json.dumps({"params": params.model_dump(mode="json"), "tokens": read_meta(tokens)}, sort_keys=True)
    path = root / hashlib.sha256(key.encode()).hexdigest()[:16]
    for stale in root.glob("*"):
        if stale.is_dir() and stale != path:
            shutil.rmtree(stale, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    return path


def shard(model, device: torch.device, world: int):
    """FSDP: each decoder layer one unit (its weights gathered for its own forward and backward only), the
    embeddings, final norm and (tied) head the root's; optimizer state follows the sharded parameters."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (world,))
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def full_model(model, config, attention: str, main_proc: bool):
    """The FSDP model's whole weights in a plain model on the main process (None elsewhere). Collective."""
    full = {k: v.full_tensor() for k, v in model.state_dict().items()}
    if not main_proc:
        return None
    plain = build_model(config, attn=attention)
    plain.load_state_dict(full)
    return plain


# ---------------------------------------------------------------- data
def global_batch(tokens: np.ndarray, step: int, n_seqs: int, context: int, seed: int) -> torch.Tensor:
    """The step's sequences, a pure function of (seed, step): resuming needs no loader state, and
    every process count sees the same global batch."""
    rng = np.random.default_rng([seed, step])
    starts = rng.integers(0, len(tokens) - context - 1, size=n_seqs)
    return torch.from_numpy(np.stack([tokens[s:s + context + 1].astype(np.int64) for s in starts]))


def val_batches(tokens: np.ndarray, context: int, batch: int, n: int) -> list[torch.Tensor]:
    """Fixed, evenly spaced validation windows."""
    total = batch * n
    stride = max((len(tokens) - context - 1) // total, 1)
    starts = [(i * stride) % (len(tokens) - context - 1) for i in range(total)]
    windows = np.stack([tokens[s:s + context + 1].astype(np.int64) for s in starts])
    return [torch.from_numpy(windows[i:i + batch]) for i in range(0, total, batch)]


# ---------------------------------------------------------------- training pieces
def lr_at(step: int, p) -> float:
    if step < p.warmup_steps:
        return p.lr * (step + 1) / p.warmup_steps
    progress = (step - p.warmup_steps) / max(p.max_steps - p.warmup_steps, 1)
    return p.lr * (p.min_lr_ratio + (1 - p.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def make_optimizer(model: torch.nn.Module, p) -> torch.optim.AdamW:
    decay = [t for n, t in model.named_parameters() if t.dim() >= 2]
    no_decay = [t for n, t in model.named_parameters() if t.dim() < 2]  # norms: no weight decay
    return torch.optim.AdamW([{"params": decay, "weight_decay": p.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=p.lr, betas=tuple(p.betas), eps=1e-8, fused=False)


def loss_of(model, batch: torch.Tensor, device: torch.device, bf16: bool) -> torch.Tensor:
    x, y = batch[:, :-1].to(device), batch[:, 1:].to(device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        logits = model(input_ids=x).logits
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1))


@torch.no_grad()
def evaluate(model, batches: list[torch.Tensor], device: torch.device, bf16: bool) -> float:
    model.eval()
    losses = [loss_of(model, b, device, bf16).item() for b in batches]
    model.train()
    return float(np.mean(losses))


# ---------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=Path, default=Path("data/tokens"))
    ap.add_argument("--tokenizer", type=Path, default=Path("data/tokenizer"))
    ap.add_argument("--out", type=Path, default=Path("data/models/base"))
    ap.add_argument("--work", type=Path, default=Path("data/pretrain_work"))
    ap.add_argument("--metrics", type=Path, default=Path("metrics/pretrain.json"))
    ap.add_argument("--plots", type=Path, default=Path("plots/pretrain"))
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = ap.parse_args(argv)
    p = load("pretrain", args.params)
    device, rank, world = setup(p)
    main_proc = rank == 0
    bf16 = device.type == "cuda" and p.bf16

    tok = PreTrainedTokenizerFast.from_pretrained(args.tokenizer)
    meta = read_meta(args.tokens)
    train_tokens, val_tokens = load_split(args.tokens, "train"), load_split(args.tokens, "val")
    ctx = p.model.context
    for split, arr in (("train", train_tokens), ("val", val_tokens)):
        if len(arr) <= ctx + 1:
            raise ValueError(f"{args.tokens}: {split} split has {len(arr)} tokens, fewer than "
                             f"pretrain.model.context + 2 = {ctx + 2}")
    config = llama_config(p.model, meta["vocab_size"], tok.convert_tokens_to_ids(EOT), tok.convert_tokens_to_ids(EOT),
                          tok.convert_tokens_to_ids(PAD))
    model = build_model(config, attn=p.attention).to(device)
    fsdp = world > 1 and p.parallel == "fsdp"
    if fsdp:
        model = shard(model, device, world)
    opt = make_optimizer(model, p)
    seqs_per_step = p.batch_size * p.grad_accum * world
    work = work_dir(args.work, p, args.tokens) if main_proc else None
    if world > 1:
        shared = [str(work) if work else None]
        dist.broadcast_object_list(shared, src=0)
        work = Path(shared[0])

    state = {"step": 0, "tokens": 0, "history": [], "val_history": [], "train_seconds": 0.0}
    resume = checkpoint.latest(work)
    if resume:
        state = checkpoint.load_sharded(resume, model, opt, rank, world) if fsdp else checkpoint.load(resume, model, opt)
        log.info("resuming from %s (step %d)", resume, state["step"])
    train_model = torch.nn.parallel.DistributedDataParallel(model) if world > 1 and not fsdp else model
    if p.compile and device.type == "cuda":
        train_model = torch.compile(train_model)
    # validation windows depend on the global batch, not the process count, so DDP and one process agree
    vals = val_batches(val_tokens, ctx, p.batch_size * world, p.eval_batches)
    fpt = flops_per_token(config, ctx)
    peak, peak_source = peak_flops(device) if main_proc else (0.0, "")
    log.info("model %.2fM params (%.2fM non-embedding), %.1f MFLOP/token; %d seqs x %d tokens per step, %d steps; "
             "%d processes on %s%s", n_params(model) / 1e6, n_params(model, True) / 1e6, fpt / 1e6, seqs_per_step, ctx,
             p.max_steps, world, device, " (FSDP)" if fsdp else " (DDP)" if world > 1 else "")

    # ------------------------------------------------------------ loop
    model.train()
    window_s, window_steps = 0.0, 0  # training time only: evaluation and checkpoints are excluded
    for step in range(state["step"], p.max_steps):
        t_step = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = lr_at(step, p)
        batch = global_batch(train_tokens, step, seqs_per_step, ctx, p.seed)
        mine = batch[rank::world]  # this process's share of the global batch
        micro = mine.chunk(p.grad_accum)
        loss_sum = torch.zeros((), device=device)
        for i, mb in enumerate(micro):
            sync = i == len(micro) - 1
            if fsdp:  # FSDP reduce-scatters gradients after the last micro-batch only
                model.set_requires_gradient_sync(sync)
            ctx_mgr = train_model.no_sync() if (world > 1 and not fsdp and not sync) else contextlib.nullcontext()
            with ctx_mgr:
                loss = loss_of(train_model, mb, device, bf16) / p.grad_accum
                loss.backward()
            loss_sum += loss.detach()
        if world > 1:
            dist.all_reduce(loss_sum)
            loss_sum /= world
        loss_value = loss_sum.item()
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"pretrain: loss is {loss_value} at step {step}; stopping without a checkpoint "
                                     f"(try a lower pretrain.lr than {p.lr} or pretrain.grad_clip)")
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), p.grad_clip if p.grad_clip > 0 else float("inf"))
        if fsdp:
            grad_norm = grad_norm.full_tensor()  # the norm over every shard, the same on every process
        opt.step()
        opt.zero_grad(set_to_none=True)
        state["step"] = step + 1
        state["tokens"] += seqs_per_step * ctx
        window_s += time.perf_counter() - t_step
        window_steps += 1

        if main_proc and (step % p.log_every == 0 or step + 1 == p.max_steps):
            state["train_seconds"] += window_s
            tps = window_steps * seqs_per_step * ctx / window_s
            window_s, window_steps = 0.0, 0
            state["history"].append({"step": step + 1, "loss": round(loss_value, 5), "lr": lr_at(step, p),
                                     "grad_norm": round(float(grad_norm), 5), "tokens_per_s": round(tps, 1)})
            log.info("step %5d  loss %.4f  lr %.2e  grad-norm %.3f  %.0f tok/s", step + 1, loss_value, lr_at(step, p),
                     float(grad_norm), tps)
        # under FSDP every process takes part in a forward pass (each holds a shard of every layer)
        if (main_proc or fsdp) and ((step + 1) % p.eval_every == 0 or step + 1 == p.max_steps):
            val = evaluate(model, vals, device, bf16)
            if main_proc:
                state["val_history"].append({"step": step + 1, "val_loss": round(val, 5),
                                             "val_ppl": round(math.exp(val), 4)})
                log.info("step %5d  val loss %.4f  ppl %.2f", step + 1, val, math.exp(val))
        if (step + 1) % p.checkpoint_every == 0 and step + 1 < p.max_steps:
            if fsdp:
                checkpoint.save_sharded(work, step + 1, model, opt, state, rank, world)
            elif main_proc:
                checkpoint.save(work, step + 1, model, opt, state)
            if world > 1:
                dist.barrier()

    # ------------------------------------------------------------ outputs
    if fsdp:
        model = full_model(model, config, p.attention, main_proc)
    if main_proc:
        finish(args, p, model, tok, state, fpt, peak, peak_source, world)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


def finish(args, p, model, tok, state: dict, fpt: float, peak: float, peak_source: str, world: int) -> None:
    history, vals = state["history"], state["val_history"]
    if peak_source.startswith("cpu"):
        # measured again at the end, the higher one kept: a peak taken while another job shared the
        # cores would understate the denominator and overstate MFU
        peak = max(peak, measure_cpu_peak())
    measured = [h["tokens_per_s"] for h in history[1:]] or [h["tokens_per_s"] for h in history]
    tokens_per_s = float(np.median(measured))
    last = history[-max(1, min(10, len(history))):]
    metrics = {
        "train_loss": float(np.mean([h["loss"] for h in last])),
        "val_loss": vals[-1]["val_loss"], "val_ppl": vals[-1]["val_ppl"],
        "val_loss_first": vals[0]["val_loss"],
        "tokens": state["tokens"], "tokens_per_s": round(tokens_per_s, 1),
        "flops_per_token": fpt, "peak_flops": peak,
        "mfu": round(tokens_per_s * fpt / peak, 4), "params": n_params(model), "steps": state["step"],
        "processes": world,
    }
    log.info("MFU %.3f against %s (%.1f GFLOP/s)", metrics["mfu"], peak_source, peak / 1e9)
    with atomic_dir(args.out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        save_tokenizer(tok, tmp)
        GenerationConfig(bos_token_id=model.config.bos_token_id, pad_token_id=model.config.pad_token_id,
                         eos_token_id=[tok.convert_tokens_to_ids(EOT), tok.convert_tokens_to_ids(END)],
                         do_sample=False, max_new_tokens=64).save_pretrained(tmp)
        validate_model(tmp, args.out)
    args.plots.mkdir(parents=True, exist_ok=True)
    write_csv(args.plots / "train.csv", history)
    write_csv(args.plots / "val.csv", vals)
    write_metrics(args.metrics, metrics)


if __name__ == "__main__":
    run(main)
