"""Train a byte-level BPE tokenizer on the corpus and save it in Hugging Face format.

    python -m stages.tokenizer --corpus data/corpus --out data/tokenizer --metrics metrics/tokenizer.json

Special tokens mark document boundaries and chat roles; the saved tokenizer carries the chat
template (jielong/chat.py). Metrics: vocab size, bytes per token on held-out documents per
language, training time, and encoding speed next to tiktoken on the same text.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import polars as pl
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from jielong.chat import CHAT_TEMPLATE, CHAT_TOKENS, EOT, PAD, SPECIAL_TOKENS
from jielong.checks import expect, gx
from jielong.documents import in_fraction, read_documents
from jielong.io import atomic_dir
from jielong.log import get_logger, run
from jielong.metrics import write_metrics
from jielong.params import load

log = get_logger("tokenizer")


# ---------------------------------------------------------------- data
def batches(texts: list[str], size: int = 256) -> Iterator[list[str]]:
    for i in range(0, len(texts), size):
        yield texts[i:i + size]


# ---------------------------------------------------------------- train
def train(texts: list[str], vocab_size: int, min_frequency: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    # GPT-2 style: split on the GPT-2 regex, then bytes -> printable unicode, so nothing is ever unknown
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(batches(texts), trainer=trainer, length=len(texts))
    return tok


def to_hf(tok: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOT, eos_token=EOT, pad_token=PAD, unk_token=None,
        additional_special_tokens=CHAT_TOKENS,
        chat_template=CHAT_TEMPLATE, model_max_length=1_000_000, clean_up_tokenization_spaces=False,
    )


# ---------------------------------------------------------------- measure
def tiktoken_twin(tok: Tokenizer):
    """The same BPE in tiktoken's engine, for a like-for-like speed comparison.

    tiktoken's own GPT-2 encoding is fetched from the internet on first use, which this offline
    pipeline cannot do; when it is already cached we use it, otherwise our merges in tiktoken.
    """
    import tiktoken

    try:
        return tiktoken.get_encoding("gpt2"), "gpt2"
    except Exception:  # noqa: BLE001 - any failure to fetch means offline
        pass
    byte_decoder = {v: k for k, v in _bytes_to_unicode().items()}
    vocab = tok.get_vocab()
    ranks = {bytes(byte_decoder[c] for c in token): i for token, i in vocab.items() if token not in SPECIAL_TOKENS}
    gpt2_pattern = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
    special = {t: vocab[t] for t in SPECIAL_TOKENS}
    return tiktoken.Encoding("jielong-bpe", pat_str=gpt2_pattern, mergeable_ranks=ranks, special_tokens=special), \
        "jielong-bpe"


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2's reversible byte -> printable character table (also what HF ByteLevel uses)
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def mb_per_s(encode, texts: list[str], repeats: int = 3) -> float:
    size = sum(len(t.encode("utf-8")) for t in texts) / 2**20
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        encode(texts)
        best = min(best, time.perf_counter() - start)
    return size / best


def validate(out: Path, hf: PreTrainedTokenizerFast, vocab_size: int) -> None:
    ids = {t: hf.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    chat = hf.apply_chat_template([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}],
                                  tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    frame = pd.DataFrame({
        "token": list(ids), "id": list(ids.values()),
        "roundtrip": [hf.decode([i]) == t for t, i in ids.items()],
    })
    expect(f"{out} special tokens", frame, [
        gx.expectations.ExpectColumnValuesToBeUnique(column="id"),
        gx.expectations.ExpectColumnValuesToBeBetween(column="id", min_value=0, max_value=vocab_size - 1),
        gx.expectations.ExpectColumnValuesToBeInSet(column="roundtrip", value_set=[True]),
    ])
    masked = pd.DataFrame({"n_assistant_tokens": [sum(chat["assistant_masks"])],
                           "vocab": [len(hf)]})
    expect(f"{out} chat template", masked, [
        gx.expectations.ExpectColumnValuesToBeBetween(column="n_assistant_tokens", min_value=1),
        gx.expectations.ExpectColumnValuesToBeBetween(column="vocab", min_value=len(SPECIAL_TOKENS) + 256,
                                                      max_value=vocab_size),
    ])


# ---------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=Path("data/corpus"))
    ap.add_argument("--out", type=Path, default=Path("data/tokenizer"))
    ap.add_argument("--metrics", type=Path, default=Path("metrics/tokenizer.json"))
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = ap.parse_args(argv)
    params = load("tokenizer", args.params)

    corpus = read_documents(args.corpus)
    held = corpus["id"].map_elements(lambda i: in_fraction(i, params.heldout_fraction, salt="tokenizer-heldout"), return_dtype=pl.Boolean)
    train_texts = corpus.filter(~held)["text"].to_list()
    heldout = corpus.filter(held)
    if heldout.height == 0:  # tiny corpora: measure on the training text rather than on nothing
        log.warning("no held-out documents at heldout_fraction=%s; measuring on training text", params.heldout_fraction)
        heldout = corpus
    log.info("training byte-level BPE: vocab %d on %d documents (%.1f MB)", params.vocab_size, len(train_texts),
             sum(map(len, train_texts)) / 2**20)

    start = time.perf_counter()
    tok = train(train_texts, params.vocab_size, params.min_frequency)
    train_s = time.perf_counter() - start
    hf = to_hf(tok)

    metrics: dict = {"vocab_size": tok.get_vocab_size(), "train_s": round(train_s, 3), "bytes_per_token": {}}
    for (lang,), group in heldout.group_by(["language"], maintain_order=True):
        texts = group["text"].to_list()
        n_tokens = sum(len(e.ids) for e in tok.encode_batch(texts, add_special_tokens=False))
        metrics["bytes_per_token"][lang] = round(sum(len(t.encode()) for t in texts) / max(n_tokens, 1), 4)
    texts = heldout["text"].to_list()
    twin, twin_name = tiktoken_twin(tok)
    ours = mb_per_s(lambda ts: tok.encode_batch(ts, add_special_tokens=False), texts)
    theirs = mb_per_s(lambda ts: twin.encode_ordinary_batch(ts), texts)
    metrics.update(encode_mb_per_s=round(ours, 3), tiktoken_mb_per_s=round(theirs, 3),
                   encode_vs_tiktoken=round(ours / theirs, 3))
    log.info("encode %.2f MB/s vs tiktoken (%s) %.2f MB/s", ours, twin_name, theirs)

    with atomic_dir(args.out) as tmp:
        hf.save_pretrained(tmp)
        validate(args.out, PreTrainedTokenizerFast.from_pretrained(tmp), params.vocab_size)
    write_metrics(args.metrics, metrics)
    log.info("tokenizer: vocab %d, %s bytes/token, trained in %.1fs", metrics["vocab_size"],
             metrics["bytes_per_token"], train_s)


if __name__ == "__main__":
    run(main)
