"""Tokenise the corpus into shards with document boundaries and a train/val split by document.

    python -m stages.tokens --corpus data/corpus --tokenizer data/tokenizer --out data/tokens

Deterministic: documents are taken in id order, split by a hash of their id, and each is
followed by <|endoftext|>. Shards are uint16 when the vocabulary fits, uint32 otherwise.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from transformers import PreTrainedTokenizerFast

from jielong.chat import EOT
from jielong.checks import expect, gx
from jielong.documents import in_fraction, read_documents
from jielong.io import atomic_dir
from jielong.log import get_logger, progress, run
from jielong.params import load
from jielong.tokens import dtype_for, load_split

log = get_logger("tokens")


class ShardWriter:
    """Appends token arrays to <split>-NNNNN.bin files of at most `shard_tokens` tokens."""

    def __init__(self, root: Path, split: str, dtype: np.dtype, shard_tokens: int):
        self.root, self.split, self.dtype, self.shard_tokens = root, split, dtype, shard_tokens
        self.shard, self.in_shard, self.tokens, self.docs = 0, 0, 0, 0
        self.file = None

    def write(self, ids: np.ndarray) -> None:
        self.docs += 1
        while len(ids):
            if self.file is None or self.in_shard == self.shard_tokens:
                self._next()
            take = ids[: self.shard_tokens - self.in_shard]
            take.astype(self.dtype).tofile(self.file)
            self.in_shard += len(take)
            self.tokens += len(take)
            ids = ids[len(take):]

    def _next(self) -> None:
        if self.file:
            self.file.close()
            self.shard += 1
        self.file = open(self.root / f"{self.split}-{self.shard:05d}.bin", "wb")  # noqa: SIM115
        self.in_shard = 0

    def close(self) -> None:
        if self.file is None:  # an empty split still gets one (empty) shard
            self._next()
        self.file.close()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=Path("data/corpus"))
    ap.add_argument("--tokenizer", type=Path, default=Path("data/tokenizer"))
    ap.add_argument("--out", type=Path, default=Path("data/tokens"))
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = ap.parse_args(argv)
    params = load("tokens", args.params)

    tok = PreTrainedTokenizerFast.from_pretrained(args.tokenizer)
    eot = tok.convert_tokens_to_ids(EOT)
    vocab = len(tok)
    dtype = dtype_for(vocab)
    corpus = read_documents(args.corpus).sort("id")
    start = time.perf_counter()
    with atomic_dir(args.out) as tmp:
        writers = {s: ShardWriter(tmp, s, dtype, params.shard_tokens) for s in ("train", "val")}
        batch = 512
        for i in progress(range(0, corpus.height, batch), desc="tokens: encoding", unit="batch"):
            chunk = corpus.slice(i, batch)
            encoded = tok.backend_tokenizer.encode_batch(chunk["text"].to_list(), add_special_tokens=False)
            for doc_id, enc in zip(chunk["id"].to_list(), encoded, strict=True):
                split = "val" if in_fraction(doc_id, params.val_fraction, salt="val") else "train"
                writers[split].write(np.array([*enc.ids, eot], dtype=np.int64))
        for w in writers.values():
            w.close()
        meta = {"dtype": dtype.name, "vocab_size": vocab, "eot_id": eot,
                **{f"{s}_tokens": w.tokens for s, w in writers.items()},
                **{f"{s}_docs": w.docs for s, w in writers.items()}}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        validate(tmp, args.out, meta)
    seconds = time.perf_counter() - start
    log.info("tokens: %d train + %d val tokens (%s) from %d documents in %.1fs (%.0f tokens/s)",
             meta["train_tokens"], meta["val_tokens"], dtype.name, corpus.height, seconds,
             (meta["train_tokens"] + meta["val_tokens"]) / seconds)


def validate(root: Path, label: Path, meta: dict) -> None:
    rows = []
    for split in ("train", "val"):
        arr = load_split(root, split)
        rows.append({"split": split, "tokens": len(arr), "max_id": int(arr.max()) if len(arr) else -1,
                     "min_id": int(arr.min()) if len(arr) else 0,
                     "ends_with_eot": bool(len(arr) and arr[-1] == meta["eot_id"]),
                     "docs_match_eot": int((arr == meta["eot_id"]).sum()) == meta[f"{split}_docs"]})
    expect(f"{label}", pd.DataFrame(rows), [
        gx.expectations.ExpectColumnValuesToBeBetween(column="tokens", min_value=1),
        gx.expectations.ExpectColumnValuesToBeBetween(column="max_id", max_value=meta["vocab_size"] - 1),
        gx.expectations.ExpectColumnValuesToBeBetween(column="min_id", min_value=0),
        gx.expectations.ExpectColumnValuesToBeInSet(column="ends_with_eot", value_set=[True]),
        gx.expectations.ExpectColumnValuesToBeInSet(column="docs_match_eot", value_set=[True]),
    ])


if __name__ == "__main__":
    run(main)
