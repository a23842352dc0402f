"""Pretraining throughput: jielong's training step vs a nanoGPT-style reference loop, same model shape.

    python benchmarks/pretrain.py [--params params.yaml] [--steps 20]

The reference is a minimal hand-written decoder (RMSNorm, RoPE, SwiGLU, SDPA: the shape of
transformers' Llama) trained by a bare loop, as nanoGPT does; ours is stages/pretrain.py's own
`loss_of` + AdamW step on transformers' Llama. Both run on the same random tokens with the same
batch, context and thread count. Prints tokens/s and MFU of both and the ratio.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from jielong.model import build_model, flops_per_token, llama_config, measure_cpu_peak
from jielong.params import load
from stages.pretrain import loss_of, make_optimizer


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--vocab", type=int, default=4096)
    a = ap.parse_args()
    p = load("pretrain", a.params)
    m, ctx, b = p.model, p.model.context, p.batch_size
    torch.manual_seed(0)
    batch = torch.randint(0, a.vocab, (b, ctx + 1))
    device = torch.device("cpu")

    config = llama_config(m, a.vocab, 0, 0, 1)
    ours = build_model(config, attn=p.attention)
    opt = make_optimizer(ours, p)

    def our_step():
        loss_of(ours, batch, device, False).backward()
        torch.nn.utils.clip_grad_norm_(ours.parameters(), p.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)

    ref = TinyGPT(a.vocab, m.d_model, m.n_layers, m.n_heads, m.d_ff, ctx)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=p.lr, weight_decay=p.weight_decay, betas=tuple(p.betas))

    def ref_step():
        logits = ref(batch[:, :-1])
        F.cross_entropy(logits.reshape(-1, a.vocab), batch[:, 1:].reshape(-1)).backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), p.grad_clip)
        ref_opt.step()
        ref_opt.zero_grad(set_to_none=True)

    tokens = a.steps * b * ctx
    # interleave to share whatever else the machine is doing fairly
    t_ref, t_ours = timed(ref_step, a.steps), timed(our_step, a.steps)
    t_ref, t_ours = min(t_ref, timed(ref_step, a.steps)), min(t_ours, timed(our_step, a.steps))
    fpt, peak = flops_per_token(config, ctx), measure_cpu_peak()
    ours_tps, ref_tps = tokens / t_ours, tokens / t_ref
    print(f"model: d={m.d_model} layers={m.n_layers} heads={m.n_heads} ff={m.d_ff} ctx={ctx} batch={b} "
          f"vocab={a.vocab}; {fpt / 1e6:.1f} MFLOP/token; peak {peak / 1e9:.1f} GFLOP/s")
    print(f"jielong (transformers Llama): {ours_tps:10.0f} tokens/s  MFU {ours_tps * fpt / peak:.3f}")
    print(f"nanoGPT-style reference     : {ref_tps:10.0f} tokens/s  MFU {ref_tps * fpt / peak:.3f}")
    print(f"ratio (ours / reference)    : {ours_tps / ref_tps:.3f}")


if __name__ == "__main__":
    main()
