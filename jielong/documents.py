"""The documents contract between stages: Parquet files with at least id, text, url, language."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import xxhash


def read_documents(path: Path, columns: tuple[str, ...] = ("id", "text", "language")) -> pl.DataFrame:
    """All documents under `path` (a directory of *.parquet or one file); a clear error when there are none."""
    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    if not files or not files[0].exists():
        raise FileNotFoundError(f"{path}: no parquet files")
    df = pl.concat([pl.read_parquet(f, columns=list(columns)) for f in files])
    if df.height == 0:
        raise ValueError(f"{path}: the corpus is empty (0 documents)")
    return df


def in_fraction(doc_id: str, fraction: float, salt: str = "") -> bool:
    """Deterministic membership by a hash of the document id, stable whatever the corpus order."""
    return xxhash.xxh64_intdigest(salt + doc_id) % 10_000 < fraction * 10_000
