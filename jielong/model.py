"""The decoder-only model (transformers' Llama), its FLOPs per token, and the hardware's peak.

A standard HF architecture means the output directory loads with lm-eval `--model hf`, vLLM,
peft and transformers unchanged.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

# Dense bf16 tensor-core peaks (no sparsity), FLOP/s, by substring of torch.cuda.get_device_name().
GPU_BF16_PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "L4": 121e12,
                 "RTX 4090": 165e12, "RTX 3090": 71e12}


def llama_config(m, vocab_size: int, bos_id: int, eos_id: int, pad_id: int) -> LlamaConfig:
    """`m` is params.pretrain.model."""
    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=m.d_model, intermediate_size=m.d_ff, num_hidden_layers=m.n_layers,
        num_attention_heads=m.n_heads, num_key_value_heads=m.n_kv_heads or m.n_heads,
        max_position_embeddings=m.context, rope_theta=m.rope_theta, tie_word_embeddings=m.tie_embeddings,
        bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id, attention_dropout=0.0,
        initializer_range=0.02,
    )


def build_model(config: LlamaConfig, attn: str = "sdpa") -> LlamaForCausalLM:
    config._attn_implementation = attn
    return LlamaForCausalLM(config)


def n_params(model: torch.nn.Module, non_embedding: bool = False) -> int:
    total = sum(p.numel() for p in model.parameters())
    if non_embedding:
        total -= model.get_input_embeddings().weight.numel()
    return total


def flops_per_token(config: LlamaConfig, context: int) -> float:
    """Training FLOPs per token: 6 x (matmul params incl. the LM head) + attention scores (PaLM, appendix B)."""
    d, L, ff = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    kv = config.num_key_value_heads * (d // config.num_attention_heads)
    per_layer = d * d * 2 + d * kv * 2 + 3 * d * ff  # q, o, k, v projections and the SwiGLU MLP
    matmul_params = L * per_layer + d * config.vocab_size  # + LM head
    return 6 * matmul_params + 12 * L * d * context


def measure_cpu_peak(seconds: float = 1.0, n: int = 2048) -> float:
    """This machine's fp32 matmul throughput (FLOP/s), the denominator of MFU on CPU."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        a @ b
    best = 0.0
    for _ in range(3):
        start, k = time.perf_counter(), 0
        while time.perf_counter() - start < seconds / 3:
            a @ b
            k += 1
        best = max(best, 2 * n**3 * k / (time.perf_counter() - start))
    return best


def peak_flops(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, value in GPU_BF16_PEAK.items():
            if key in name:
                return value, f"{name} bf16 datasheet"
        return measure_cpu_peak(), f"{name}: unknown card, CPU fp32 measured"  # never silently wrong
    return measure_cpu_peak(), "cpu fp32 matmul measured"


def save_tokenizer(tok, out: Path) -> None:
    """`tok.save_pretrained(out)` without `local_files_only`, which transformers records from how the
    tokenizer was loaded (HF_HUB_OFFLINE=1 makes it true): kept, the same run would write a different
    model directory, and so a different DVC hash, depending on the environment."""
    tok.init_kwargs.pop("local_files_only", None)
    tok.save_pretrained(out)


def validate_model(path: Path, label: Path | str, generates: bool = True) -> None:
    """Expectations on a model directory: finite safetensors weights, HF files present, no pickle.

    `generates=False` for a model that scores rather than generates (the reward model, a sequence
    classifier): it has no generation_config.json.
    """
    import pandas as pd
    from safetensors import safe_open

    from jielong.checks import expect, gx

    files = {f.name for f in path.iterdir()}
    rows = []
    with safe_open(path / "model.safetensors", "pt") as f:
        for name in f.keys():  # noqa: SIM118 - safe_open is not a dict
            t = f.get_tensor(name)
            rows.append({"tensor": name, "finite": bool(torch.isfinite(t).all())})
    expect(f"{label}/model.safetensors", pd.DataFrame(rows), [
        gx.expectations.ExpectTableRowCountToBeBetween(min_value=1),
        gx.expectations.ExpectColumnValuesToBeInSet(column="finite", value_set=[True]),
    ])
    expect(f"{label} files", pd.DataFrame({"file": sorted(files)}), [
        gx.expectations.ExpectColumnDistinctValuesToContainSet(
            column="file", value_set=["config.json", "model.safetensors", "tokenizer.json",
                                      *(["generation_config.json"] if generates else [])]),
        gx.expectations.ExpectColumnValuesToNotMatchRegex(column="file", regex=r"\.(bin|pt|pth|pkl)$"),
    ])
