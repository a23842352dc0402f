"""Pretraining throughput: jielong's training step vs a nanoGPT-style reference loop, same model shape.

    python benchmarks/pretrain.py [--params params.yaml] [--steps 20] [--vocab 4096]

The reference is a minimal hand-written decoder (RMSNorm, RoPE, SwiGLU, SDPA: the shape of
transformers' Llama) trained by a bare loop, as nanoGPT does; ours is stages/pretrain.py's own
`loss_of` + AdamW step on transformers' Llama. Both run on the same random tokens with the same
batch, context and thread count (torch's default, or params `pretrain.threads`). Each is timed twice,
interleaved, after `--warmup` untimed steps; the faster run counts. Prints tokens/s and MFU of both
and the ratio (MFU: model FLOPs per token x tokens/s over this machine's fp32 matmul peak, measured).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks import result  # noqa: E402
from jielong.model import build_model, flops_per_token, llama_config, measure_cpu_peak  # noqa: E402
from jielong.params import load  # noqa: E402
from stages.pretrain import loss_of, make_optimizer  # noqa: E402


class Block(nn.Module):
    def __init__(self, d: int, heads: int, ff: int):
        super().__init__()
        self.heads = heads
        self.n1, self.n2 = nn.RMSNorm(d), nn.RMSNorm(d)
        self.qkv, self.o = nn.Linear(d, 3 * d, bias=False), nn.Linear(d, d, bias=False)
        self.gate, self.up, self.down = nn.Linear(d, ff, bias=False), nn.Linear(d, ff, bias=False), nn.Linear(ff, d, bias=False)

    def forward(self, x, cos, sin):
        b, t, d = x.shape
        q, k, v = self.qkv(self.n1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d)
        x = x + self.o(a)
        h = self.n2(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


def rope(x, cos, sin):
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class TinyGPT(nn.Module):
    def __init__(self, vocab: int, d: int, layers: int, heads: int, ff: int, ctx: int):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(Block(d, heads, ff) for _ in range(layers))
        self.norm = nn.RMSNorm(d)
        hd = d // heads
        freqs = 1.0 / (10000 ** (torch.arange(0, hd, 2).float() / hd))
        ang = torch.outer(torch.arange(ctx).float(), freqs)
        self.register_buffer("cos", torch.cat([ang.cos(), ang.cos()], -1))
        self.register_buffer("sin", torch.cat([ang.sin(), ang.sin()], -1))

    def forward(self, idx):
        x = self.emb(idx)
        t = idx.size(1)
        for blk in self.blocks:
            x = blk(x, self.cos[:t], self.sin[:t])
        return self.norm(x) @ self.emb.weight.T  # tied LM head


def timed(step, steps: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return time.perf_counter() - start


def run(params: Path = REPO / "params.yaml", steps: int = 20, vocab: int = 4096, warmup: int = 3,
        batch_size: int | None = None) -> dict:
    """batch_size: sequences per step instead of params `pretrain.batch_size` (a quick run)."""
    p = load("pretrain", params)
    if p.threads:
        torch.set_num_threads(p.threads)
    m, ctx, b = p.model, p.model.context, batch_size or p.batch_size
    torch.manual_seed(0)
    batch = torch.randint(0, vocab, (b, ctx + 1))
    device = torch.device("cpu")

    config = llama_config(m, vocab, 0, 0, 1)
    ours = build_model(config, attn=p.attention)
    opt = make_optimizer(ours, p)

    def our_step():
        loss_of(ours, batch, device, False).backward()
        torch.nn.utils.clip_grad_norm_(ours.parameters(), p.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)

    ref = TinyGPT(vocab, m.d_model, m.n_layers, m.n_heads, m.d_ff, ctx)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=p.lr, weight_decay=p.weight_decay, betas=tuple(p.betas))

    def ref_step():
        logits = ref(batch[:, :-1])
        F.cross_entropy(logits.reshape(-1, vocab), batch[:, 1:].reshape(-1)).backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), p.grad_clip)
        ref_opt.step()
        ref_opt.zero_grad(set_to_none=True)

    tokens = steps * b * ctx
    # interleave to share whatever else the machine is doing fairly
    t_ref, t_ours = timed(ref_step, steps, warmup), timed(our_step, steps, warmup)
    t_ref, t_ours = min(t_ref, timed(ref_step, steps, 0)), min(t_ours, timed(our_step, steps, 0))
    fpt, peak = flops_per_token(config, ctx), measure_cpu_peak()
    ours_tps, ref_tps = tokens / t_ours, tokens / t_ref
    shape = f"d={m.d_model} layers={m.n_layers} heads={m.n_heads} ff={m.d_ff} ctx={ctx} batch={b} vocab={vocab}"
    return result("pretrain", "tokens/s", ours_tps, ref_tps, torch.get_num_threads(),
                  f"MFU {ours_tps * fpt / peak:.3f} vs {ref_tps * fpt / peak:.3f}; {shape}; {steps} steps",
                  ours_mfu=ours_tps * fpt / peak, reference_mfu=ref_tps * fpt / peak, flops_per_token=fpt,
                  peak_flops=peak, shape=shape)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=Path, default=REPO / "params.yaml")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--batch-size", type=int, help="sequences per step (default: params pretrain.batch_size)")
    a = ap.parse_args(argv)
    r = run(a.params, a.steps, a.vocab, a.warmup, a.batch_size)
    print(f"model: {r['shape']}; {r['flops_per_token'] / 1e6:.1f} MFLOP/token; peak {r['peak_flops'] / 1e9:.1f} GFLOP/s; "
          f"{r['threads']} threads")
    print(f"jielong (transformers Llama): {r['ours']:10.0f} tokens/s  MFU {r['ours_mfu']:.3f}")
    print(f"nanoGPT-style reference     : {r['reference']:10.0f} tokens/s  MFU {r['reference_mfu']:.3f}")
    print(f"ratio (ours / reference)    : {r['ratio']:.3f}")


if __name__ == "__main__":
    main()
