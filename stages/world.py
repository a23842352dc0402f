"""Generate the embedded default world: knowledge base, crawl (WARC), ground truth, question bank.

    python -m stages.world --out data/world --metrics metrics/world.json

Same seed and params give byte-identical outputs. Layout of data/world/:
    kb.parquet          known and unknown people with their attributes and split (sft, rl or eval)
    questions.parquet   one question per person and attribute: gold answer, choices, split
    crawl/*.warc.gz     HTTP response records of every crawl page
    truth.parquet       per WARC record: url, kind, language, duplicate group, PII, leaks, facts
    heldout.parquet     person pages never put in the crawl (held-out perplexity)
"""

from __future__ import annotations

import argparse
import random
import time
from collections import Counter
from pathlib import Path

import polars as pl

from jielong.checks import expect, gx
from jielong.io import atomic_dir, write_parquet
from jielong.log import get_logger, progress, run
from jielong.metrics import write_metrics
from jielong.params import load
from jielong.world.crawl import KINDS, build_crawl, heldout_pages
from jielong.world.people import ATTRIBUTES, SPLITS, make_people, make_questions, name_finder
from jielong.world.warc import write_shard

log = get_logger("world")


# ---------------------------------------------------------------- build
def build(params):
    rng = random.Random(params.seed)
    people = make_people(rng, params.known_people, params.unknown_people, params.splits)
    questions = make_questions(rng, people, params.choices)
    records = build_crawl(rng, params, people, questions)
    heldout = heldout_pages(rng, people, params.heldout_pages, params.crawl_date,
                            params.full_name_fraction)
    return rng, people, questions, records, heldout


def write(out: Path, params, rng, people, questions, records, heldout) -> pl.DataFrame:
    """Write every artifact into `out` (a fresh directory); returns the ground truth."""
    kb = pl.DataFrame([p.row() for p in people])
    write_parquet(out / "kb.parquet", kb)
    write_parquet(out / "questions.parquet", pl.DataFrame(questions))
    write_parquet(out / "heldout.parquet", pl.DataFrame([
        {"id": f"heldout-{i:05d}", "url": p.url, "person_id": p.person_id, "text": p.text} for i, p in enumerate(heldout)
    ]))

    (out / "crawl").mkdir()
    shard_size = -(-len(records) // params.warc_shards)
    names, named_in = [p.name for p in people], name_finder(people)
    truth = []
    for shard in progress(range(params.warc_shards), desc="world: writing WARC shards", unit="shard"):
        chunk = records[shard * shard_size:(shard + 1) * shard_size]
        name = f"crawl-{shard:05d}.warc.gz"
        ids = write_shard(out / "crawl" / name, [r.page for r in chunk], rng, params.crawl_date, "jielong-world")
        for rid, r in zip(ids, chunk, strict=True):
            found = named_in(r.page.html) | named_in(r.page.text)
            truth.append({
                "record_id": rid, "warc_file": f"crawl/{name}", "url": r.page.url, "kind": r.kind,
                "subkind": r.subkind, "language": r.page.language, "dup_group": r.dup_group,
                "dup_rank": r.dup_rank, "person_id": r.page.person_id, "title": r.page.title,
                "pii": r.pii, "leaked_qids": r.leaked_qids, "facts": r.page.facts,
                # every world person the page names in full, wherever on the page
                "names": [n for n in names if n in found],
            })
    schema = {"pii": pl.List(pl.Struct({"type": pl.String, "value": pl.String})),
              "leaked_qids": pl.List(pl.String), "facts": pl.List(pl.String), "names": pl.List(pl.String),
              "dup_group": pl.String, "person_id": pl.String}
    truth_df = pl.DataFrame(truth, schema_overrides=schema)
    write_parquet(out / "truth.parquet", truth_df)
    return truth_df


# ---------------------------------------------------------------- checks
def validate(out: Path, params, label: Path) -> None:
    """Expectations on the artifacts in `out`, reported under their final location `label`."""
    kb = pl.read_parquet(out / "kb.parquet")
    expect(f"{label}/kb.parquet", kb, [
        gx.expectations.ExpectTableRowCountToEqual(value=params.known_people + params.unknown_people),
        gx.expectations.ExpectColumnValuesToBeUnique(column="person_id"),
        gx.expectations.ExpectColumnValuesToBeUnique(column="name"),
        gx.expectations.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS)),
        gx.expectations.ExpectColumnDistinctValuesToContainSet(column="split", value_set=list(SPLITS)),
        *[gx.expectations.ExpectColumnValuesToNotBeNull(column=a) for a in ATTRIBUTES],
    ])
    q = pl.read_parquet(out / "questions.parquet").with_columns(
        n_choices=pl.col("choices").list.len(),
        gold_ok=pl.col("choices").list.get(pl.col("gold_index")) == pl.col("answer"),
    )
    expect(f"{label}/questions.parquet", q, [
        gx.expectations.ExpectTableRowCountToEqual(value=len(kb) * len(ATTRIBUTES)),
        gx.expectations.ExpectColumnValuesToBeUnique(column="qid"),
        gx.expectations.ExpectColumnValueLengthsToBeBetween(column="answer", min_value=1),
        gx.expectations.ExpectColumnValuesToBeBetween(column="n_choices", min_value=params.choices,
                                                      max_value=params.choices),
        gx.expectations.ExpectColumnValuesToBeInSet(column="gold_ok", value_set=[True]),
    ])
    truth = pl.read_parquet(out / "truth.parquet")
    # people who must never appear in a page: no page is about an unknown person, and none names one
    # anywhere (a failure lists the names)
    unknown = kb.filter(~pl.col("known"))
    truth = truth.with_columns(
        mentions_unknown=pl.col("person_id").is_in(unknown["person_id"].to_list()).fill_null(False),
        names_unknown=pl.col("names").list.set_intersection(unknown["name"].to_list()).list.join(", "),
    )
    expect(f"{label}/truth.parquet", truth, [
        gx.expectations.ExpectTableRowCountToBeBetween(min_value=1),
        gx.expectations.ExpectColumnValuesToBeUnique(column="record_id"),
        gx.expectations.ExpectColumnValuesToBeInSet(column="kind", value_set=KINDS),
        gx.expectations.ExpectColumnValuesToBeInSet(column="mentions_unknown", value_set=[False]),
        gx.expectations.ExpectColumnValuesToBeInSet(column="names_unknown", value_set=[""]),
        gx.expectations.ExpectColumnValuesToMatchRegex(column="url", regex=r"^https://[a-z0-9.-]+/"),
    ])


def counts(params, people, questions, truth: pl.DataFrame, out: Path, seconds: float) -> dict:
    kinds = Counter(truth["kind"].to_list())
    langs = Counter(truth["language"].to_list())
    return {
        "people": {"known": sum(p.known for p in people), "unknown": sum(not p.known for p in people),
                   **{s: sum(p.split == s for p in people) for s in SPLITS}},
        "questions": {"total": len(questions), **{s: sum(q["split"] == s for q in questions) for s in SPLITS}},
        "pages": {"total": len(truth), **{k: kinds.get(k, 0) for k in KINDS}},
        "languages": dict(langs),
        "exact_duplicate_copies": int(truth.filter((pl.col("kind") == "exact_duplicate") & (pl.col("dup_rank") > 0)).height),
        "pii_values": int(truth["pii"].list.len().sum()),
        "leaked_questions": int(truth["leaked_qids"].list.len().sum()),
        "facts_stated": int(truth["facts"].list.len().sum()),
        "heldout_pages": params.heldout_pages,
        "warc_shards": params.warc_shards,
        "warc_mb": round(sum(f.stat().st_size for f in (out / "crawl").glob("*.warc.gz")) / 2**20, 3),
        "wall_s": round(seconds, 2),
    }


# ---------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("data/world"))
    ap.add_argument("--metrics", type=Path, default=Path("metrics/world.json"))
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = ap.parse_args(argv)

    params = load("world", args.params)
    start = time.perf_counter()
    log.info("generating world: seed=%d, %d known + %d unknown people", params.seed, params.known_people,
             params.unknown_people)
    rng, people, questions, records, heldout = build(params)
    with atomic_dir(args.out) as tmp:
        truth = write(tmp, params, rng, people, questions, records, heldout)
        validate(tmp, params, label=args.out)
    seconds = time.perf_counter() - start
    stats = counts(params, people, questions, truth, args.out, seconds)
    # wall time varies run to run; keep it in the log, not in the byte-identical metrics file
    wall = stats.pop("wall_s")
    write_metrics(args.metrics, stats)
    log.info("world: %d pages in %d WARC shards (%.1f MB), %d questions, %.1fs",
             len(truth), params.warc_shards, stats["warc_mb"], len(questions), wall)


if __name__ == "__main__":
    run(main)
