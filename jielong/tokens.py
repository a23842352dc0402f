"""Token shards: flat uint16/uint32 arrays on disk, documents separated by <|endoftext|>.

Layout of a tokens directory:
    train-00000.bin, ...   tokens of the training documents
    val-00000.bin, ...     tokens of the validation documents
    meta.json              dtype, vocab_size, eot_id, token and document counts per split
Readers memory-map the shards, so a corpus larger than memory trains fine.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def dtype_for(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def read_meta(root: Path) -> dict:
    path = root / "meta.json"
    if not path.exists():
        raise FileNotFoundError(f"{root}: no meta.json (run the tokens stage first)")
    return json.loads(path.read_text())


def shards(root: Path, split: str) -> list[np.ndarray]:
    """`split`'s shards, each memory-mapped."""
    meta = read_meta(root)
    paths = sorted(root.glob(f"{split}-*.bin"))
    if not paths:
        raise FileNotFoundError(f"{root}: no {split}-*.bin shards")
    return [np.memmap(p, dtype=meta["dtype"], mode="r") for p in paths]


def load_split(root: Path, split: str) -> np.ndarray:
    """All shards of `split` as one array (memory-mapped; concatenated only if there are several)."""
    arrays = shards(root, split)
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


def token_counts(root: Path, split: str = "train") -> np.ndarray:
    """How often each token id occurs in `split`'s shards: an array of meta.json's vocab_size counts."""
    vocab_size = read_meta(root)["vocab_size"]
    counts = np.zeros(vocab_size, dtype=np.int64)
    for shard in shards(root, split):  # shard by shard: no concatenated copy of the corpus
        counts += np.bincount(shard, minlength=vocab_size)
    return counts
