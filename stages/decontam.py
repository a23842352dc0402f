"""Decontaminate: eval sets clean of the training corpus, and the corpus clean of eval items.

    python -m stages.decontam --world data/world --corpus data/corpus --tasks evals/tasks \
        --out data/evals --corpus-out data/corpus_clean --metrics metrics/decontam.json

Every evaluation item (question and answer text; a held-out page) is checked for n-gram overlap
against every corpus document (jielong/decontam.py: 13-grams, a shorter n for short items, xxhash).
The corpus is streamed batch by batch, so memory stays bounded however large it is. Writes:
    data/evals/<task>.jsonl        the clean eval set each evals/tasks/<task>.yaml reads
    data/evals/fewshot_known.jsonl, fewshot_questions.jsonl
                                   few-shot pools: questions about people outside the eval split
                                   (sft and rl people, as when the world had one train split);
    data/evals/questions_sft.jsonl sft-split questions, the base model's "knows" probe;
                                   neither are evaluation items, so not checked
    data/evals/contamination.parquet  per contaminated item: the document, its url, the overlap
    data/corpus_clean/*.parquet    the corpus without contaminating documents (decontam.corpus: drop)
    metrics/decontam.json          per task items / contaminated / rate; planted_leaks_recall,
                                   false_positives (clean items flagged); corpus counts, mb_per_s
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from jielong.checks import expect, gx
from jielong.decontam import EvalIndex, Normalisation
from jielong.io import atomic_dir, atomic_file, write_parquet
from jielong.log import get_logger, progress, run
from jielong.metrics import write_metrics
from jielong.params import load
from jielong.world.people import attribute_values

log = get_logger("decontam")


# ---------------------------------------------------------------- eval sets from the world
def world_sets(world: Path) -> tuple[dict[str, pl.DataFrame], dict[str, pl.DataFrame]]:
    """({task: eval items}, {name: other questions written unchecked}); `item_id` keys items.

    The few-shot pools hold every person outside the eval split, so a base model's few-shot prompts
    stay what they were before rl people were split off from the sft people."""
    q = pl.read_parquet(world / "questions.parquet")
    q = q.join(attribute_values(q), on="attribute", how="left").with_columns(item_id=pl.col("qid"))
    ev, rest = q.filter(pl.col("split") == "eval"), q.filter(pl.col("split") != "eval")
    heldout = pl.read_parquet(world / "heldout.parquet").with_columns(item_id=pl.col("id"))
    known = ev.filter(pl.col("known"))
    sets = {
        "world_facts_mc": known, "world_facts_gen": known, "world_known": known,
        "world_unknown": ev.filter(~pl.col("known")), "consistency": ev,
        "world_heldout_ppl": heldout,
    }
    return sets, {"fewshot_known": rest.filter(pl.col("known")), "fewshot_questions": rest,
                  "questions_sft": q.filter(pl.col("split") == "sft")}


def segments(sets: dict[str, pl.DataFrame]) -> tuple[pl.DataFrame, list[str]]:
    """One row per checked text of every distinct item: question and answer, or a page's text."""
    rows: dict[str, list[str]] = {}
    for frame in sets.values():
        fields = ["question", "answer"] if "question" in frame.columns else ["text"]
        for row in frame.select("item_id", *fields).iter_rows():
            rows.setdefault(row[0], list(row[1:]))
    keys = sorted(rows)
    seg = [(i, text) for i, key in enumerate(keys) for text in rows[key]]
    return pl.DataFrame(seg, schema={"item": pl.Int64, "text": pl.String}, orient="row"), keys


def check_task_files(tasks_dir: Path, written: set[str]) -> None:
    """Every data file a world task YAML reads under data/evals/ must be one this stage writes."""
    class _Loader(yaml.SafeLoader):
        pass
    _Loader.add_constructor("!function", lambda loader, node: None)
    for path in sorted(tasks_dir.glob("*.yaml")):
        cfg = yaml.load(path.read_text(), Loader=_Loader) or {}  # noqa: S506 (SafeLoader subclass)
        for split, file in ((cfg.get("dataset_kwargs") or {}).get("data_files") or {}).items():
            if str(file).startswith("data/evals/") and Path(file).name not in written:
                raise SystemExit(f"decontam: {path} reads {file} ({split}), which this stage does not write; "
                                 f"it writes {sorted(written)}")


# ---------------------------------------------------------------- the corpus pass
def scan_corpus(index: EvalIndex, files: list[Path], out: Path | None, batch_rows: int,
                leak_urls: set[str]) -> tuple[pl.DataFrame, dict, set[str]]:
    """Stream every corpus file; write it to `out` without contaminating documents (None: don't).

    Returns (contaminations: file, id, url, item, overlap), counts, and the planted-leak urls seen.
    """
    hits, seen_leaks = [], set()
    docs = removed = text_bytes = 0
    start = time.perf_counter()
    for path in progress(files, desc="decontam: corpus files", unit="file"):
        pf = pq.ParquetFile(path)
        writer = pq.ParquetWriter(out / path.name, pf.schema_arrow, compression="zstd") if out else None
        wanted = [c for c in ("id", "url", "text") if c in pf.schema_arrow.names]
        for batch in pf.iter_batches(batch_size=batch_rows, columns=None if writer else wanted):
            frame = pl.from_arrow(batch.select(wanted))
            if "url" not in frame.columns:  # the contract has it; tolerate a corpus without
                frame = frame.with_columns(url=pl.lit(None, dtype=pl.String))
            found = index.scan(frame["text"])
            docs += frame.height
            text_bytes += int(frame["text"].str.len_bytes().sum() or 0)
            seen_leaks.update(frame.filter(pl.col("url").is_in(leak_urls))["url"].to_list())
            if found.height:
                # plain Python rows: a frame sliced from the batch would keep the batch's buffers alive
                docs_hit = found["doc"].to_list()
                ids, urls = frame["id"].gather(docs_hit).to_list(), frame["url"].gather(docs_hit).to_list()
                hits += [{"item": item, "overlap": overlap, "id": i, "url": u, "file": path.name}
                         for item, overlap, i, u in zip(found["item"], found["overlap"], ids, urls, strict=True)]
            if writer:
                keep = np.ones(frame.height, dtype=bool)
                keep[found["doc"].unique().to_numpy()] = False
                writer.write_batch(batch.filter(pa.array(keep)))
                removed += int((~keep).sum())
        if writer:
            writer.close()
    seconds = time.perf_counter() - start
    schema = {"item": pl.Int64, "overlap": pl.Float64, "id": pl.String, "url": pl.String, "file": pl.String}
    found = pl.DataFrame(hits, schema=schema)
    counts = {"files": len(files), "docs": docs, "mb": round(text_bytes / 1e6, 3),
              "contaminating_docs": found.select("file", "id").n_unique() if found.height else 0,
              "removed_docs": removed, "seconds": seconds}
    return found, counts, seen_leaks


# ---------------------------------------------------------------- results
def task_metrics(sets: dict[str, pl.DataFrame], flagged: set[str]) -> dict:
    out = {}
    for task, frame in sets.items():
        n = frame.height
        c = int(frame["item_id"].is_in(list(flagged)).sum())
        out[task] = {"items": n, "contaminated": c, "rate": c / n if n else 0.0, "kept": n - c}
    return out


def leak_metrics(truth: pl.DataFrame, seen_leaks: set[str], flagged: set[str], checked_ids: set[str]) -> dict:
    """Against the world's ground truth: planted leaks the corpus still holds, and flags beyond them."""
    planted = set(truth.filter(pl.col("url").is_in(list(seen_leaks)))["leaked_qids"].explode().drop_nulls())
    planted &= checked_ids
    out = {"planted_leaks": len(planted), "false_positives": len(flagged - planted)}
    if planted:  # never a recall over zero items
        out["planted_leaks_recall"] = len(planted & flagged) / len(planted)
    else:
        log.warning("no planted leak page survived into the corpus: planted_leaks_recall is not reported")
    return out


def write_sets(out: Path, sets: dict[str, pl.DataFrame], unchecked: dict[str, pl.DataFrame],
               flagged: set[str], action: str) -> None:
    for name, frame in {**sets, **unchecked}.items():
        frame = frame.with_columns(contaminated=pl.col("item_id").is_in(list(flagged)))
        if action == "drop":
            frame = frame.filter(~pl.col("contaminated"))
        with atomic_file(out / f"{name}.jsonl") as tmp:
            frame.drop("item_id").write_ndjson(tmp)


def validate(out: Path, sets: dict[str, pl.DataFrame], label: Path) -> None:
    for name in sets:
        frame = pl.read_ndjson(out / f"{name}.jsonl")
        key = "qid" if "qid" in frame.columns else "id"
        text = "question" if "question" in frame.columns else "text"
        expect(f"{label}/{name}.jsonl", frame, [
            gx.expectations.ExpectTableRowCountToBeBetween(min_value=1),
            gx.expectations.ExpectColumnValuesToBeUnique(column=key),
            gx.expectations.ExpectColumnValueLengthsToBeBetween(column=text, min_value=1),
        ])


# ---------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.splitlines()[0])
    ap.add_argument("--world", type=Path, default=Path("data/world"))
    ap.add_argument("--corpus", type=Path, default=Path("data/corpus"))
    ap.add_argument("--tasks", type=Path, default=Path("evals/tasks"))
    ap.add_argument("--out", type=Path, default=Path("data/evals"))
    ap.add_argument("--corpus-out", type=Path, default=Path("data/corpus_clean"))
    ap.add_argument("--metrics", type=Path, default=Path("metrics/decontam.json"))
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = ap.parse_args(argv)
    p = load("decontam", args.params)

    sets, unchecked = world_sets(args.world)
    check_task_files(args.tasks, {f"{name}.jsonl" for name in {**sets, **unchecked}})
    seg, keys = segments(sets)
    norm = Normalisation(p.lowercase, p.strip_punctuation, None if p.unicode_form == "none" else p.unicode_form)
    index = EvalIndex(seg, p.n, p.min_n, p.min_overlap, norm)
    unchecked_items = len(keys) - len(index.checked_items)
    log.info("%d eval items in %d tasks, %d n-gram hashes (lengths %s); %d items too short to check",
             len(keys), len(sets), index.pairs.height, index.ns, unchecked_items)

    files = sorted(args.corpus.glob("*.parquet"))
    if not files:
        raise SystemExit(f"decontam: no *.parquet in {args.corpus}")
    truth = pl.read_parquet(args.world / "truth.parquet")
    leak_urls = set(truth.filter(pl.col("kind") == "leak")["url"])
    with atomic_dir(args.corpus_out) as corpus_tmp:
        found, counts, seen_leaks = scan_corpus(index, files, corpus_tmp if p.corpus == "drop" else None,
                                                p.batch_rows, leak_urls)
        if p.corpus == "keep":
            for path in files:
                shutil.copy2(path, corpus_tmp / path.name)
        expect(f"{args.corpus_out}", pl.DataFrame({"docs": [sum(pq.ParquetFile(f).metadata.num_rows
                                                                 for f in corpus_tmp.glob("*.parquet"))]}), [
            gx.expectations.ExpectColumnValuesToBeBetween(
                column="docs", min_value=counts["docs"] - counts["removed_docs"],
                max_value=counts["docs"] - counts["removed_docs"]),
        ])
        found = found.with_columns(item_id=pl.Series([keys[i] for i in found["item"].to_list()], dtype=pl.String))
        flagged = set(found["item_id"].to_list())

        metrics = task_metrics(sets, flagged)
        emptied = [t for t, m in metrics.items() if m["kept"] == 0 and p.contaminated_items == "drop"]
        if emptied:
            raise SystemExit(f"decontam: eval set(s) {emptied} are empty after removing contaminated items "
                             f"({ {t: metrics[t]['items'] for t in emptied} } items, all contaminated); no metric "
                             "would mean anything. Check the corpus, raise decontam.min_overlap, or set "
                             "decontam.contaminated_items: flag")
        with atomic_dir(args.out) as tmp:
            write_sets(tmp, sets, unchecked, flagged, p.contaminated_items)
            write_parquet(tmp / "contamination.parquet", found.drop("item").sort("item_id", "file", "id"))
            validate(tmp, sets, args.out)
    checked_ids = {keys[i] for i in index.checked_items}
    mb_per_s = counts["mb"] / counts.pop("seconds") if counts["mb"] else 0.0
    stats = {**metrics, **leak_metrics(truth, seen_leaks, flagged, checked_ids),
             "unchecked_items": unchecked_items, "corpus": counts, "mb_per_s": round(mb_per_s, 2)}
    write_metrics(args.metrics, stats)
    log.info("decontam: %d of %d eval items contaminated by %d documents; %.1f MB at %.1f MB/s; recall %s, "
             "false positives %d", len(flagged), len(keys), counts["contaminating_docs"], counts["mb"], mb_per_s,
             stats.get("planted_leaks_recall"), stats["false_positives"])


if __name__ == "__main__":
    run(main)
