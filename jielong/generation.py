"""Generation from any model directory the pipeline wrote: loading, prompting, batched sampling.

The talk CLI (jielong/talk.py) and every stage that samples replies (DPO's gold-reward check) share
this module, so a reply is produced one way everywhere: left-padded batches through transformers'
`generate` under a GenerationConfig, cut at the first stop string.

- load: a causal LM and its tokenizer (refusing a reward model's directory).
- encode: a prompt as the model reads it (a chat model through its chat template).
- generate_batch: replies to many prompts, `batch_size` at a time.
- self_consistent_batch: the source notes' test against hallucination at answer time: k sampled
  replies, the most common if enough of them agree, else the abstention SFT teaches.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from jielong import grading
from jielong.conversations import IDK  # the abstention SFT teaches


def load(model_dir: Path, device: str = "cpu"):
    """(tokenizer, model) of a causal-LM directory, tokenizer left-padded for batched generation."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").exists():
        raise SystemExit(f"{model_dir} is not a Hugging Face model directory (no config.json)")
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    architectures = json.loads((model_dir / "config.json").read_text()).get("architectures") or []
    if architectures and not set(architectures) & set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()):
        # transformers would load a reward model's body under a fresh LM head and generate from it
        raise SystemExit(f"{model_dir} is a {architectures[0]}, not a language model that generates text")
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"  # batched generation continues every row from its last real token
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device).eval()
    return tok, model


def encode(tok, chat: bool, item: str | list[dict]) -> str:
    """The text the model continues: a chat model's messages (or one user turn) through its chat
    template with the generation prompt; a base model's raw text."""
    if not chat:
        return item if isinstance(item, str) else "".join(m["content"] for m in item)
    messages = [{"role": "user", "content": item}] if isinstance(item, str) else item
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def trim(text: str, stops: list[str] | None) -> str:
    """The reply up to its first stop string (generate stops after one but keeps it)."""
    for stop in stops or []:
        if stop in text:
            text = text[:text.index(stop)]
    return text.strip()


@torch.no_grad()
def generate_batch(tok, model, config: GenerationConfig, prompts: list[str], batch_size: int) -> list[str]:
    """One reply per prompt (encoded text), decoded without special tokens and trimmed at a stop string."""
    replies = []
    for i in range(0, len(prompts), batch_size):
        enc = tok(prompts[i:i + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
        enc = {k: v.to(model.device) for k, v in enc.items()}
        out = model.generate(**enc, generation_config=config, tokenizer=tok)
        for row in out[:, enc["input_ids"].shape[1]:]:
            replies.append(trim(tok.decode(row, skip_special_tokens=True), config.stop_strings))
    return replies


def consistent_reply(samples: list[str], agreement: float) -> str:
    """The most common of the sampled replies (compared as the eval's canonical forms, so every
    abstention is one answer) if at least `agreement` of them give it and it is not an abstention;
    else "I do not know."."""
    winner, share = grading.majority(samples)
    if winner == grading.ABSTAIN or share < agreement:
        return IDK
    return next(s for s in samples if grading.canonical(s) == winner)


def self_consistent_batch(tok, model, config: GenerationConfig, prompts: list[str], k: int, agreement: float,
                          batch_size: int) -> list[str]:
    """consistent_reply over k sampled replies to each prompt."""
    config = GenerationConfig.from_dict({**config.to_dict(), "do_sample": True})
    samples = generate_batch(tok, model, config, [p for p in prompts for _ in range(k)], batch_size)
    return [consistent_reply(samples[i * k:(i + 1) * k], agreement) for i in range(len(prompts))]
