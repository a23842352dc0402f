"""N-gram decontamination: which evaluation items a training corpus contains, in bounded memory.

Text becomes words the same way on both sides: Unicode-normalised, lowercased, punctuation
dropped, each CJK character a word of its own. An evaluation item has segments (a question, an
answer, a page). A segment of at least `n` words gives its n-grams (13 by default, as in GPT-3); a
shorter one of at least `min_n` words gives one n-gram of its whole length; a segment shorter than
that gives none, because an answer such as "Paris" or "March 3, 1987" is evidence of nothing. A
document contaminates an item when it holds at least `min_overlap` of one segment's n-grams.

Hashing: each distinct word of the evaluation items is hashed once with xxh3-64 and an n-gram's
hash is a polynomial rolling combination of its words' hashes (mod 2^64). The corpus side never
hashes a string: a corpus word outside the evaluation vocabulary cannot be part of a matching
n-gram, so each corpus word is only looked up in that vocabulary (a polars hash map), and n-gram
hashes are computed in numpy for the few windows made entirely of evaluation words.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import xxhash

# Odd 64-bit multiplier (the golden-ratio constant) for the rolling combination of word hashes.
_MULT = np.uint64(0x9E3779B97F4A7C15)
_BITMAP_MASK = (1 << 22) - 1  # 4M-entry prefilter per n-gram length
_WORD = r"\p{Han}|\p{Hiragana}|\p{Katakana}|\p{Hangul}|[\p{L}\p{M}\p{N}]+"


@dataclass(frozen=True)
class Normalisation:
    lowercase: bool = True
    strip_punctuation: bool = True  # False: words are whitespace-separated runs, punctuation kept
    unicode_form: str | None = "NFKC"  # NFC / NFKC / NFD / NFKD, or None


def words(texts: pl.Series | list[str], norm: Normalisation) -> pl.Series:
    """Each text as its list of normalised words (the tokenisation every n-gram is built on)."""
    s = pl.Series("text", texts, dtype=pl.String).fill_null("")
    if norm.unicode_form:
        # ASCII is unchanged by every normal form and normalising is the slowest step: skip it
        rows = (s.str.len_bytes() != s.str.len_chars()).arg_true()
        if len(rows):
            s = s.scatter(rows, s.gather(rows).str.normalize(norm.unicode_form))
    if norm.lowercase:
        s = s.str.to_lowercase()
    return s.str.extract_all(_WORD if norm.strip_punctuation else r"\S+")


def word_hash(word: str) -> int:
    # 0 marks "not an evaluation word" on the corpus side, so no word may hash to it.
    return xxhash.xxh3_64_intdigest(word.encode("utf-8")) or 1


def window_hashes(ids: np.ndarray, starts: np.ndarray, n: int) -> np.ndarray:
    """Hashes of the n-grams ids[s:s+n] for each s in `starts` (uint64 arithmetic wraps mod 2^64)."""
    h = np.zeros(len(starts), dtype=np.uint64)
    for j in range(n):
        h = h * _MULT + ids[starts + j]
    return h


def segment_ngram_length(length: int, n: int, min_n: int) -> int:
    """The n-gram length used for a segment of `length` words; 0 when it is too short to check."""
    if length >= n:
        return n
    return length if length >= min_n else 0


# ---------------------------------------------------------------- the evaluation side
class EvalIndex:
    """The n-gram hashes of every checked segment, and what a corpus batch contaminates."""

    def __init__(self, segments: pl.DataFrame, n: int = 13, min_n: int = 5, min_overlap: float = 0.5,
                 norm: Normalisation = Normalisation()):
        """`segments`: one row per segment with columns `item` (int) and `text`."""
        if not 1 <= min_n <= n:
            raise ValueError(f"need 1 <= min_n <= n, got min_n={min_n}, n={n}")
        self.n, self.min_n, self.min_overlap, self.norm = n, min_n, min_overlap, norm
        toks = words(segments["text"], norm).to_list()
        vocab = sorted({w for ws in toks for w in ws})
        self.vocab_words = pl.Series("w", vocab, dtype=pl.String)
        self.vocab_hashes = pl.Series("h", [word_hash(w) for w in vocab], dtype=pl.UInt64)
        lookup = dict(zip(vocab, self.vocab_hashes.to_list(), strict=True))

        rows_n, rows_hash, rows_seg, seg_count, seg_item = [], [], [], [], []
        for seg, (item, ws) in enumerate(zip(segments["item"].to_list(), toks, strict=True)):
            size = segment_ngram_length(len(ws), n, min_n)
            ids = np.array([lookup[w] for w in ws], dtype=np.uint64)
            hashes = np.unique(window_hashes(ids, np.arange(len(ws) - size + 1), size)) if size else []
            rows_n += [size] * len(hashes)
            rows_hash += list(hashes)
            rows_seg += [seg] * len(hashes)
            seg_count.append(len(hashes))
            seg_item.append(item)
        self.segment_ngrams = np.array(seg_count, dtype=np.int64)  # 0: too short to check
        self.segment_item = np.array(seg_item, dtype=np.int64)
        self.pairs = pl.DataFrame({"n": rows_n, "hash": rows_hash, "seg": rows_seg},
                                  schema={"n": pl.Int32, "hash": pl.UInt64, "seg": pl.Int64})
        self.by_n = {int(k): np.unique(g["hash"].to_numpy())
                     for (k,), g in self.pairs.group_by("n", maintain_order=True)}
        self.ns = sorted(self.by_n)
        self.bitmap = {}
        for k, table in self.by_n.items():
            bits = np.zeros(_BITMAP_MASK + 1, dtype=bool)
            bits[(table & np.uint64(_BITMAP_MASK)).astype(np.int64)] = True
            self.bitmap[k] = bits

    @property
    def checked_items(self) -> set[int]:
        """Items with at least one segment long enough to check."""
        return set(self.segment_item[self.segment_ngrams > 0].tolist())

    def scan(self, texts: pl.Series | list[str]) -> pl.DataFrame:
        """(doc, item, overlap) for every document of `texts` that contaminates an item.

        `doc` is the row number within `texts`; overlap is the largest share of one segment's
        n-grams the document holds. Memory is bounded by the batch, not by the corpus.
        """
        empty = pl.DataFrame(schema={"doc": pl.Int64, "item": pl.Int64, "overlap": pl.Float64})
        if not self.ns:
            return empty
        exploded = (pl.DataFrame({"w": words(texts, self.norm)}).with_row_index("doc")
                    .explode("w").drop_nulls("w"))
        if exploded.height == 0:
            return empty
        ids = exploded["w"].replace_strict(self.vocab_words, self.vocab_hashes, default=0,
                                           return_dtype=pl.UInt64).to_numpy()
        doc = exploded["doc"].to_numpy().astype(np.int64)
        outside = np.concatenate([[0], np.cumsum(ids == 0)])
        found = []
        # h[i] holds the hash of the k-gram starting at i, grown one word at a time up to the longest n
        h = ids.copy()
        for k in range(1, self.ns[-1] + 1):
            if k > 1:
                h = h[:-1] * _MULT + ids[k - 1:]
            if k not in self.by_n or not len(h):
                continue
            m = len(h)
            # a window can match only if all k words are evaluation words and lie in one document
            starts = np.flatnonzero((outside[k:] - outside[:m] == 0) & (doc[:m] == doc[k - 1:]))
            cand = h[starts]
            # cheap bitmap test first; the exact sorted-table lookup only for what passes it
            maybe = self.bitmap[k][(cand & np.uint64(_BITMAP_MASK)).astype(np.int64)]
            starts, cand = starts[maybe], cand[maybe]
            table = self.by_n[k]
            hit = table[np.minimum(np.searchsorted(table, cand), len(table) - 1)] == cand
            if hit.any():
                found.append(pl.DataFrame({"doc": doc[starts[hit]], "n": np.full(hit.sum(), k, np.int32),
                                           "hash": cand[hit]}))
        if not found:
            return empty
        per_segment = (pl.concat(found).unique().join(self.pairs, on=["n", "hash"])
                       .group_by("doc", "seg").len())
        counts = self.segment_ngrams[per_segment["seg"].to_numpy()]
        per_segment = per_segment.with_columns(
            overlap=pl.Series(per_segment["len"].to_numpy() / counts),
            item=pl.Series(self.segment_item[per_segment["seg"].to_numpy()]),
        )
        return (per_segment.filter(pl.col("overlap") >= self.min_overlap)
                .group_by("doc", "item").agg(pl.col("overlap").max())
                .select(pl.col("doc").cast(pl.Int64), "item", "overlap").sort("doc", "item"))


__all__ = ["EvalIndex", "Normalisation", "segment_ngram_length", "window_hashes", "word_hash", "words"]
