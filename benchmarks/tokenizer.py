"""Tokenizer throughput: our trained BPE in HF tokenizers vs the same merges in tiktoken's engine.

    python benchmarks/tokenizer.py [--tokenizer data/tokenizer] [--text data/corpus] [--mb 4]

Both encode the same documents (a documents Parquet file or directory, a `.jsonl` with a `text`
field, or a plain text file, one document per blank-line-separated block), repeated until they hold
`--mb` MB, with special tokens off, as the tokenizer stage measures it: `stages.tokenizer.tiktoken_twin`
builds the tiktoken side (our merges, since tiktoken's GPT-2 ranks cannot be fetched offline; its GPT-2
encoding when cached) and `stages.tokenizer.mb_per_s` times both (best of `--repeats`). Prints MB/s
of each and the ratio. Both engines are multi-threaded: tokenizers' batch encode uses a Rayon pool of
every core (RAYON_NUM_THREADS), tiktoken's batch encode a pool of 8 Python threads.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks import result  # noqa: E402


def read_texts(path: Path) -> list[str]:
    from jielong.documents import read_documents

    if path.is_dir() or path.suffix == ".parquet":
        return read_documents(path, columns=("text",))["text"].to_list()
    if path.suffix == ".jsonl":
        return [json.loads(line)["text"] for line in path.read_text().splitlines() if line.strip()]
    if path.suffix in (".txt", ".md", ""):
        return [block for block in path.read_text().split("\n\n") if block.strip()]
    raise SystemExit(f"tokenizer benchmark: cannot read documents from {path} (a Parquet file or dir, .jsonl "
                     "or .txt)")


def run(tokenizer: Path = REPO / "data" / "tokenizer", text: Path = REPO / "data" / "corpus", mb: float = 4.0,
        repeats: int = 3) -> dict:
    from tokenizers import Tokenizer

    from stages.tokenizer import mb_per_s, tiktoken_twin

    if not (tokenizer / "tokenizer.json").exists():
        raise SystemExit(f"tokenizer benchmark: no {tokenizer}/tokenizer.json; run `dvc repro tokenizer` first")
    if not text.exists():
        raise SystemExit(f"tokenizer benchmark: no {text}; run `dvc repro corpus` first or pass --text")
    tok = Tokenizer.from_file(str(tokenizer / "tokenizer.json"))
    docs = read_texts(text)
    size = sum(len(t.encode("utf-8")) for t in docs) / 2**20
    if not docs or size == 0:
        raise SystemExit(f"tokenizer benchmark: {text} holds no text")
    texts = docs * max(1, round(mb / size))
    twin, twin_name = tiktoken_twin(tok)
    # the same token ids from both engines, or the comparison is not like for like
    sample = docs[: min(len(docs), 50)]
    same = twin_name == "gpt2" or all(e.ids == twin.encode_ordinary(t) for e, t in
                                      zip(tok.encode_batch(sample, add_special_tokens=False), sample, strict=True))
    ours = mb_per_s(lambda ts: tok.encode_batch(ts, add_special_tokens=False), texts, repeats)
    reference = mb_per_s(lambda ts: twin.encode_ordinary_batch(ts), texts, repeats)
    threads = int(os.environ.get("RAYON_NUM_THREADS") or os.cpu_count() or 1)
    megabytes = sum(len(t.encode("utf-8")) for t in texts) / 2**20
    return result("tokenizer", "MB/s", ours, reference, threads,
                  f"{megabytes:.1f} MB, vocab {tok.get_vocab_size()}, tiktoken {twin_name} "
                  f"({'same ids' if same else 'IDS DIFFER'}), tiktoken pool 8 threads",
                  megabytes=megabytes, tiktoken_encoding=twin_name, same_ids=same)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", type=Path, default=REPO / "data" / "tokenizer", help="HF tokenizer dir")
    ap.add_argument("--text", type=Path, default=REPO / "data" / "corpus", help="documents to encode")
    ap.add_argument("--mb", type=float, default=4.0, help="repeat the documents up to about this many MB")
    ap.add_argument("--repeats", type=int, default=3, help="timed passes per engine; the best counts")
    a = ap.parse_args(argv)
    r = run(a.tokenizer, a.text, a.mb, a.repeats)
    print(f"{r['notes']}; threads {r['threads']}")
    print(f"ours (HF tokenizers)   {r['ours']:8.2f} MB/s")
    print(f"reference (tiktoken)   {r['reference']:8.2f} MB/s")
    print(f"ratio                  {r['ratio']:8.2f}x")


if __name__ == "__main__":
    main()
