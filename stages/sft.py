"""Supervised fine-tuning: the base model becomes a chat model (TRL's SFTTrainer; LoRA by peft).

    python -m stages.sft --base data/models/base --data data/sft --out data/models/sft

One sample per conversation, loss on the assistant tokens of every turn and on nothing else: TRL's
`assistant_only_loss` takes the mask from the chat template's `{% generation %}` markers (each reply
and its <|end|>), so the model learns to answer and to stop, never to imitate the user. Any other
causal LM with a chat template works as the base too (the finetune pipeline, finetune/dvc.yaml): a
template without markers (ChatML and most released ones) gets the same mask computed from the
template (jielong/templates.py), and the model's own end-of-turn token becomes its EOS. With
sft.method = lora only peft adapters and the embeddings of the chat tokens and of the reply tokens
pretraining never saw train (lora_config); they are merged into a plain
HF model dir at the end, so everything downstream loads either kind the same way. The output's tokenizer carries the chat
template with <|end|> as its EOS, and generation_config.json the sampling defaults from params.

Trainer checkpoints are pickles (optimizer.pt, rng_state.pth, training_args.bin), which this project
never writes, so SFT keeps none: it takes minutes, and a killed run re-run starts over cleanly (the
output dir is only renamed into place when complete).
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
from transformers import AutoModelForCausalLM, GenerationConfig

from jielong import templates
from jielong.chat import CHAT_TOKENS, PAD, warm_start_chat_tokens
from jielong.io import atomic_dir, write_csv
from jielong.log import get_logger, run
from jielong.metrics import write_metrics
from jielong.model import save_tokenizer, validate_model
from jielong.params import load
from jielong.tokens import token_counts
from jielong.trainer import LogTo, training_args

log = get_logger("sft")


def conversations(path: Path, tok) -> Dataset:
    """A parquet of conversations -> a datasets.Dataset: the `messages` column TRL renders itself when the
    chat template marks the assistant's turns, else `input_ids` with the `assistant_masks` computed from
    the template (jielong/templates.py), which TRL turns into the labels."""
    messages = pl.read_parquet(path, columns=["messages"])["messages"].to_list()
    if templates.has_generation_markers(tok):
        return Dataset.from_list([{"messages": m} for m in messages])
    return Dataset.from_list([templates.encode_with_mask(tok, m) for m in messages])


def chat_tokens(tok) -> list[str]:
    """The tokens only chat data has: jielong's four, or the special tokens another model's template writes
    around a conversation (`<|im_start|>`, `<|im_end|>` ...): a base model may never have trained them."""
    vocab = tok.get_vocab()
    if all(t in vocab for t in CHAT_TOKENS):
        return list(CHAT_TOKENS)
    text = templates.render(tok, [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                                  {"role": "assistant", "content": "a"}])
    return [t for t in dict.fromkeys(tok.all_special_tokens + list(tok.get_added_vocab())) if t in text]


def unseen_reply_tokens(data: Dataset, tok, counts: np.ndarray) -> list[int]:
    """Token ids the assistant replies of `data` train on (the chat template's assistant mask) that
    the pretraining corpus never contains (`counts` from jielong.tokens.token_counts), chat tokens aside."""
    if len(counts) != len(tok):
        raise ValueError(f"sft.lora.train_unseen_tokens: the pretraining token counts (--tokens) cover {len(counts)} "
                         f"token ids but the tokenizer has {len(tok)}; pass the tokens the base model was pretrained on")
    chat = {tok.convert_tokens_to_ids(t) for t in CHAT_TOKENS}
    used: set[int] = set()
    for messages in data["messages"]:
        enc = tok.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        used.update(i for i, keep in zip(enc["input_ids"], enc["assistant_masks"], strict=True) if keep)
    return sorted(i for i in used - chat if counts[i] == 0)


def lora_config(p, tok, unseen: list[int] = ()):
    """peft adapters on p.lora.target_modules, plus the embeddings of a few tokens alone (peft's
    trainable tokens):

    - the chat tokens: pretraining never saw them and the warm start gives <|system|>, <|user|> and
      <|assistant|> one vector and <|end|> that of "." (tied, so <|end|> and "." had the same logit),
      which frozen embeddings would keep for good;
    - `unseen`, reply tokens the pretraining corpus never contains: pretraining leaves all their rows
      on nearly one vector, so the tied head cannot score one above the rest. " do" of "I do not know."
      is one: after LoRA alone the SFT model garbled its abstentions ("I skiing in Montreal.", docs/findings.md
      "The reply tokens pretraining never saw")."""
    from peft import LoraConfig

    chat = [tok.convert_tokens_to_ids(t) for t in chat_tokens(tok)] if p.lora.train_chat_tokens else []
    tokens = chat + list(unseen)
    return LoraConfig(r=p.lora.r, lora_alpha=p.lora.alpha, lora_dropout=p.lora.dropout,
                      # [all-linear]: peft's every linear layer but the head, whatever the architecture names them
                      target_modules="all-linear" if list(p.lora.target_modules) == ["all-linear"]
                      else list(p.lora.target_modules), bias="none", task_type="CAUSAL_LM",
                      # a list: peft finds the input embedding itself (GPT-2 calls it wte, Llama embed_tokens)
                      trainable_token_indices=(tokens if chat_tokens(tok) != CHAT_TOKENS else {"embed_tokens": tokens})
                      if tokens else None)


def generation_config(p, tok, model, end: str, text_end: str | None) -> GenerationConfig:
    g = p.generation
    # transformers refuses to save temperature/top-k/top-p in a greedy config, so they go only with sampling
    sampling = {"temperature": g.temperature, "top_k": g.top_k, "top_p": g.top_p} if g.do_sample else {}
    return GenerationConfig(
        bos_token_id=model.config.bos_token_id, pad_token_id=tok.pad_token_id,
        # a reply ends at the turn's end (<|end|>); at the end of text (<|endoftext|>) too, should the model emit it
        eos_token_id=list(dict.fromkeys(tok.convert_tokens_to_ids(t) for t in (end, text_end) if t)),
        do_sample=g.do_sample, **sampling, repetition_penalty=g.repetition_penalty,
        max_new_tokens=g.max_new_tokens, stop_strings=list(g.stop_strings) or None,
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=Path, default=Path("data/models/base"))
    ap.add_argument("--data", type=Path, default=Path("data/sft"))
    ap.add_argument("--tokens", type=Path, help="the base model's pretraining tokens (sft.lora.train_unseen_tokens; "
                    "a base model pretrained elsewhere has none: set that param false)")
    ap.add_argument("--out", type=Path, default=Path("data/models/sft"))
    ap.add_argument("--metrics", type=Path, default=Path("metrics/sft.json"))
    ap.add_argument("--plots", type=Path, default=Path("plots/sft"))
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = ap.parse_args(argv)
    p = load("sft", args.params)
    # each method has its own learning rate: LoRA's is ten times full fine-tuning's
    lr_param, lr = ("sft.lora.lr", p.lora.lr) if p.method == "lora" else ("sft.lr", p.lr)
    if p.threads:
        torch.set_num_threads(p.threads)
    cuda = torch.cuda.is_available()

    from trl import SFTConfig, SFTTrainer

    tok = templates.chat_tokenizer(args.base, "sft", "give the base model one: tokenizer_config.json's "
                                   "chat_template, or chat_template.jinja")
    try:
        end = templates.turn_end(tok)
    except ValueError as err:
        raise SystemExit(f"sft: {args.base}: {err}") from None
    text_end = tok.eos_token  # the base model's end of text, kept as a second stop
    tok.pad_token = templates.pad_token(tok, PAD)
    ours = all(t in tok.get_vocab() for t in CHAT_TOKENS)  # a tokenizer the tokenizer stage wrote
    train, val = conversations(args.data / "train.parquet", tok), conversations(args.data / "val.parquet", tok)
    model = AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.float32)
    if p.warm_start and not ours:
        raise SystemExit(f"sft.warm_start: {args.base}'s tokenizer lacks jielong's chat tokens {CHAT_TOKENS}; "
                         "set it false for a base model pretrained elsewhere (profiles/finetune.yaml does)")
    if p.warm_start:
        log.info("chat tokens start from plain-text separators: %s", warm_start_chat_tokens(model, tok))
    log.info("%s fine-tuning of %s (%s) on %d conversations (%d val), %.1f epochs; assistant mask from %s",
             p.method, args.base, model.config.model_type, len(train), len(val), p.epochs,
             "the template's generation markers" if "messages" in train.column_names else "rendered template prefixes")
    unseen = []
    if p.method == "lora" and p.lora.train_unseen_tokens:
        if args.tokens is None:
            raise SystemExit("sft.lora.train_unseen_tokens needs --tokens, the base model's pretraining tokens; "
                             "set it false for a base model pretrained elsewhere (profiles/finetune.yaml does)")
        unseen = unseen_reply_tokens(train, tok, token_counts(args.tokens))
        log.info("LoRA trains the embeddings of %d reply tokens %s never contains too: %s", len(unseen), args.tokens,
                 [tok.decode([i]) for i in unseen])

    with tempfile.TemporaryDirectory(prefix="jielong-sft-") as scratch:
        config = SFTConfig(
            **training_args(p.model_copy(update={"lr": lr}), scratch, cuda),
            # TRL masks from generation markers itself; a pre-tokenised set carries its `assistant_masks`
            assistant_only_loss="messages" in train.column_names, max_length=p.max_length, packing=False,
            eval_on_start=True, include_num_input_tokens_seen="non_padding", pad_token=tok.pad_token,
        )
        logs = LogTo(log, train={"lr": "learning_rate", "grad_norm": "grad_norm"})
        trainer = SFTTrainer(model=model, args=config, train_dataset=train, eval_dataset=val, processing_class=tok,
                             peft_config=lora_config(p, tok, unseen) if p.method == "lora" else None, callbacks=[logs])
        if p.method == "lora":
            trainer.model.print_trainable_parameters()
            head = trainer.model.get_output_embeddings()
            if not hasattr(head, "bias"):
                # TRL's fused LM head reads lm_head.bias, which peft's wrapper of a tied head with trainable
                # tokens does not pass through; a tied head has no bias
                head.bias = None
        start = time.perf_counter()
        result = trainer.train()
        train_s = time.perf_counter() - start
        val_loss = trainer.evaluate()["eval_loss"]  # logged, so the callback adds it to the val curve
        tokens = int(trainer.state.num_input_tokens_seen)
        tuned = trainer.model.merge_and_unload() if p.method == "lora" else trainer.model

    for name, value in (("train loss", result.training_loss), ("val loss", val_loss)):
        if not math.isfinite(value):
            raise FloatingPointError(f"sft: {name} is {value}; nothing saved (try a lower {lr_param} than {lr})")
    tok.eos_token = end  # a chat model's turn ends at <|end|>: lm-eval, vLLM and pipelines stop there
    with atomic_dir(args.out) as tmp:
        tuned.config.eos_token_id = tok.convert_tokens_to_ids(end)
        tuned.config.pad_token_id = tok.pad_token_id
        tuned.save_pretrained(tmp, safe_serialization=True)
        save_tokenizer(tok, tmp)
        generation_config(p, tok, tuned, end, text_end).save_pretrained(tmp)
        validate_model(tmp, args.out)

    last = logs.train[-max(1, min(5, len(logs.train))):]
    metrics = {"train_loss": float(np.mean([r["loss"] for r in last])), "val_loss": float(val_loss),
               "val_loss_first": logs.val[0]["val_loss"], "tokens": tokens,
               "tokens_per_s": round(tokens / train_s, 1), "train_s": round(train_s, 1),
               "steps": trainer.state.global_step, "conversations": len(train), "lora": int(p.method == "lora"),
               "unseen_reply_tokens": len(unseen)}
    args.plots.mkdir(parents=True, exist_ok=True)
    write_csv(args.plots / "train.csv", logs.train)
    write_csv(args.plots / "val.csv", logs.val)
    write_metrics(args.metrics, metrics)
    log.info("sft done in %.0fs: train loss %.4f, val loss %.4f, %.0f tokens/s", train_s, metrics["train_loss"],
             val_loss, metrics["tokens_per_s"])


if __name__ == "__main__":
    run(main)
