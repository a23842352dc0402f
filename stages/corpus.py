"""Turn a crawl into a pretraining corpus with datatrove, and measure what every step removed.

    python -m stages.corpus --out data/corpus --work data/corpus-work --metrics metrics/corpus.json \
        --truth data/world/truth.parquet

Reads params.yaml `corpus`: the inputs (WARC, JSONL or Parquet; local, globbed or fsspec URLs),
every step's knobs and the executor (local, ray, slurm). The steps, each datatrove's own and each
switchable in params:

    read -> url_filter -> extract -> language -> gopher_repetition -> gopher_quality -> c4
         -> fineweb -> pii -> exact_dedup -> near_dedup (MinHash: signatures, buckets, clusters, filter)

Writes:
    data/corpus/shard-NNNNN.parquet  id, text, url, language, language_score, metadata (JSON provenance)
    data/corpus-work/<key>/          datatrove's logging dirs (completion markers, stats, task logs) and
                                     intermediate shards. <key> hashes params, inputs and code: a killed
                                     run resumes from the markers, a changed one starts afresh.
    metrics/corpus.json              the funnel, recall against the world's ground truth, throughput
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import orjson
import polars as pl
import xxhash
from datatrove.pipeline.dedup import (
    ExactDedupFilter,
    ExactDedupSignature,
    ExactFindDedups,
    MinhashDedupBuckets,
    MinhashDedupCluster,
    MinhashDedupFilter,
    MinhashDedupSignature,
)
from datatrove.pipeline.dedup.exact_dedup import ExactDedupConfig
from datatrove.pipeline.dedup.minhash import MinhashConfig
from datatrove.pipeline.filters import (
    C4QualityFilter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
)
from datatrove.pipeline.writers import JsonlWriter
from datatrove.utils.hashing import HashConfig
from datatrove.utils.typeshelper import Languages

from jielong.checks import expect, gx
from jielong.corpus import funnel as funnel_
from jielong.corpus.dedup import KeepCanonical, RankShard, RecordPriority, doc_text, url_priority
from jielong.corpus.executors import Stage, run_stages
from jielong.corpus.lid import OfflineLanguageFilter
from jielong.corpus.readers import InputFiles, make_readers, resolve_inputs
from jielong.corpus.steps import PHONE, HtmlExtractor, OfflineURLFilter, PIIScrubber, SharedWordTokenizer
from jielong.corpus.truth import truth_metrics
from jielong.io import atomic_dir, write_parquet
from jielong.log import get_logger, run
from jielong.metrics import write_metrics
from jielong.params import CorpusParams, load

log = get_logger("corpus")
REPO = Path(__file__).resolve().parent.parent
HASHES = HashConfig(precision=64, hash_fc="xxhash")


# ---------------------------------------------------------------- the pipeline
def filter_steps(p: CorpusParams, inputs: list[InputFiles]) -> list[tuple[str, object]]:
    """Readers, then every per-document step; keys name the steps in the funnel."""
    steps: list[tuple[str, object]] = [("read", r) for r in make_readers(inputs, p.max_doc_bytes, p.text_key,
                                                                          p.id_key, p.limit)]
    if p.url_filter.enabled:
        u = p.url_filter
        steps.append(("url_filter", OfflineURLFilter(
            soft_word_threshold=u.soft_word_threshold, extra_domains=u.extra_domains or None,
            banned_words=u.extra_words or None, use_integrated_lists=u.use_shipped_lists)))
    if p.extract.enabled:
        e = p.extract
        steps.append(("extract", HtmlExtractor(favour_precision=e.favour_precision, timeout=e.timeout_s,
                                               deduplicate=e.deduplicate, no_fallback=not e.fallback)))
    if p.language.enabled:
        steps.append(("language", OfflineLanguageFilter(p.language.languages, p.language.threshold,
                                                        p.language.model)))
    words = SharedWordTokenizer(Languages.english)  # one spaCy pass per page for all three word-level filters
    if p.gopher_repetition.enabled:
        g = p.gopher_repetition
        steps.append(("gopher_repetition", GopherRepetitionFilter(
            dup_line_frac=g.dup_line_frac, dup_para_frac=g.dup_para_frac, dup_line_char_frac=g.dup_line_char_frac,
            dup_para_char_frac=g.dup_para_char_frac, top_n_grams=tuple(g.top_n_grams),
            dup_n_grams=tuple(g.dup_n_grams), language=words)))
    if p.gopher_quality.enabled:
        g = p.gopher_quality
        steps.append(("gopher_quality", GopherQualityFilter(
            min_doc_words=g.min_doc_words, max_doc_words=g.max_doc_words, min_avg_word_length=g.min_avg_word_length,
            max_avg_word_length=g.max_avg_word_length, max_symbol_word_ratio=g.max_symbol_word_ratio,
            max_bullet_lines_ratio=g.max_bullet_lines_ratio, max_ellipsis_lines_ratio=g.max_ellipsis_lines_ratio,
            max_non_alpha_words_ratio=g.min_alpha_words_ratio, min_stop_words=g.min_stop_words, language=words)))
    if p.c4.enabled:
        steps.append(("c4", C4QualityFilter(**p.c4.model_dump(exclude={"enabled"}), language=words)))
    if p.fineweb.enabled:
        steps.append(("fineweb", FineWebQualityFilter(**p.fineweb.model_dump(exclude={"enabled"}), language=words)))
    if p.pii.enabled:
        steps.append(("pii", PIIScrubber(**p.pii.model_dump(exclude={"enabled"}))))
    return steps


def build_stages(p: CorpusParams, inputs: list[InputFiles], work: Path) -> list[Stage]:
    """The datatrove executors to run in order. Dedup needs all signatures before any filtering, so each
    dedup splits the pipeline: a stage writes its documents per task, the next reads them back."""
    stages: list[Stage] = []
    steps = filter_steps(p, inputs)

    def end_stage(name: str, consumers: list) -> list:
        folder = work / f"docs-{len(stages)}"
        writer = JsonlWriter(str(folder), output_filename="${rank}.jsonl", compression=None)
        stages.append(Stage(name, [*steps, ("", writer), *consumers], p.tasks))
        return [("", RankShard(str(folder), compression=None))]

    if p.exact_dedup.enabled:
        exact = ExactDedupConfig(content_getter=doc_text, hash_config=HASHES,
                                 document_priority=url_priority if p.exact_dedup.keep == "canonical" else None)
        sigs, dups = str(work / "exact" / "sigs"), str(work / "exact" / "dups")
        steps = end_stage("filter", [("", ExactDedupSignature(sigs, exact))])
        stages.append(Stage("exact_find", [("", ExactFindDedups(sigs, dups, exact))], 1))
        steps.append(("exact_dedup", ExactDedupFilter(dups, exact)))
    if p.near_dedup.enabled:
        n, canonical = p.near_dedup, p.near_dedup.keep == "canonical"
        minhash = MinhashConfig(n_grams=n.shingle_size, num_buckets=n.bands, hashes_per_bucket=n.rows, seed=n.seed,
                                hash_config=HASHES)
        sigs, buckets, clusters, priority = (str(work / "minhash" / d) for d in ("sigs", "buckets", "clusters",
                                                                                 "priority"))
        if canonical:
            steps.append(("", RecordPriority(priority)))
        steps = end_stage("minhash_signatures" if stages else "filter", [("", MinhashDedupSignature(sigs, minhash))])
        stages.append(Stage("minhash_buckets", [("", MinhashDedupBuckets(sigs, buckets, config=minhash))], n.bands))
        cluster = [("", MinhashDedupCluster(buckets, clusters, config=minhash, save_cluster_id=canonical))]
        stages.append(Stage("minhash_clusters", cluster + ([("", KeepCanonical(clusters, priority, p.tasks))]
                                                            if canonical else []), 1))
        steps.append(("near_dedup", MinhashDedupFilter(clusters)))
    writer = JsonlWriter(str(work / "output"), output_filename="${rank}.jsonl", compression=None)
    stages.append(Stage("write" if stages else "filter", [*steps, ("", writer)], p.tasks))
    return stages


# ---------------------------------------------------------------- work dir
def work_key(p: CorpusParams, inputs: list[InputFiles]) -> tuple[str, int]:
    """Hash of what the work depends on (params but where tasks run, input contents, code); input bytes."""
    from importlib.metadata import version

    from datatrove.io import get_datafolder

    h = xxhash.xxh64(json.dumps(p.model_dump(mode="json", exclude={"executor", "workers", "ray", "slurm", "output"}),
                                sort_keys=True))
    total = 0
    for i in inputs:
        folder = get_datafolder(i.folder)
        for name in i.files:
            size = folder.size(name)
            total += size
            h.update(f"{i.folder}/{name}:{size}")
            if folder.is_local():
                with folder.open(name, "rb") as f:
                    while chunk := f.read(1 << 22):
                        h.update(chunk)
            else:
                h.update(str(folder.ukey(name)))
    for code in [REPO / "stages" / "corpus.py", *sorted((REPO / "jielong" / "corpus").glob("*.py"))]:
        h.update(code.read_bytes())
    h.update(version("datatrove"))
    return h.hexdigest(), total


def prepare_work(root: Path, key: str) -> Path:
    """data/corpus-work/<key>: reuse it (resume) or start it; the work of other keys is stale."""
    root.mkdir(parents=True, exist_ok=True)
    for old in root.iterdir():
        if old.name != key:
            log.info("removing stale work dir %s", old)
            shutil.rmtree(old) if old.is_dir() else old.unlink()
    work = root / key
    if work.exists():
        log.info("resuming in %s", work)
    return work


# ---------------------------------------------------------------- output
def collect(folder: Path) -> dict[str, pl.DataFrame]:
    """The final JSONL of each task -> a frame per shard, in the DESIGN.md document contract."""
    shards = {}
    for path in sorted(folder.glob("*.jsonl")):
        rows = []
        for line in path.open("rb"):
            doc = orjson.loads(line)
            meta = doc.get("metadata") or {}
            if str(meta.get("file_path", "")).startswith(f"{Path.cwd()}/"):  # provenance independent of the clone's path
                meta["file_path"] = os.path.relpath(meta["file_path"])
            rows.append({
                "id": str(doc["id"]), "text": doc["text"], "url": meta.pop("url", None),
                "language": meta.pop("language", None), "language_score": meta.pop("language_score", None),
                "metadata": json.dumps({k: v for k, v in meta.items() if k != "format" and v is not None},
                                       sort_keys=True, ensure_ascii=False),
            })
        schema = {"id": pl.String, "text": pl.String, "url": pl.String, "language": pl.String,
                  "language_score": pl.Float64, "metadata": pl.String}
        shards[f"shard-{path.stem}.parquet"] = pl.DataFrame(rows, schema=schema)
    return shards


def validate(docs: pl.DataFrame, p: CorpusParams, label: str) -> None:
    from datatrove.pipeline.formatters import PIIFormatter

    pii = PIIFormatter()
    patterns = ([pii.emails_replacer.regex.pattern] if p.pii.enabled and p.pii.emails else []) + \
               ([PHONE.pattern] if p.pii.enabled and p.pii.phones else []) + \
               ([pii.ip_replacer.regex.pattern] if p.pii.enabled and p.pii.ips and not p.pii.only_public_ips else [])
    e = gx.expectations
    expect(label, docs, [
        e.ExpectTableRowCountToBeBetween(min_value=1),
        e.ExpectColumnValuesToBeUnique(column="id"),
        e.ExpectColumnValuesToNotBeNull(column="text"),
        e.ExpectColumnValueLengthsToBeBetween(column="text", min_value=max(1, p.output.min_chars),
                                              max_value=p.output.max_chars),
        *([e.ExpectColumnValuesToBeInSet(column="language", value_set=p.language.languages)]
          if p.language.enabled else []),
        *([e.ExpectColumnValuesToNotMatchRegexList(column="text", regex_list=patterns)] if patterns else []),
    ])


# ---------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("data/corpus"))
    ap.add_argument("--work", type=Path, default=Path("data/corpus-work"))
    ap.add_argument("--metrics", type=Path, default=Path("metrics/corpus.json"))
    ap.add_argument("--truth", type=Path, default=None, help="the world's truth.parquet: recall metrics")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = ap.parse_args(argv)

    p = load("corpus", args.params)
    start = time.perf_counter()
    inputs = resolve_inputs(p.inputs)
    key, input_bytes = work_key(p, inputs)
    work = prepare_work(args.work, key)
    log.info("corpus: %d input files (%.1f MB) -> %d tasks on %s, work in %s",
             sum(len(i.files) for i in inputs), input_bytes / 1e6, p.tasks, p.executor, work)

    stages = build_stages(p, inputs, work)
    run_stages(stages, p, work / "logs")
    funnel = funnel_.funnel(stages)
    shards = collect(work / "output")
    docs = pl.concat(list(shards.values())) if shards else pl.DataFrame(schema={"id": pl.String, "text": pl.String})
    funnel_.check(funnel, docs.height)

    with atomic_dir(args.out) as tmp:
        for name, shard in shards.items():
            if shard.height:
                write_parquet(tmp / name, shard)
        validate(docs, p, label=str(args.out))
    wall = time.perf_counter() - start
    cores = max(1, min(p.workers, p.tasks, os.cpu_count() or 1))
    metrics = {
        **funnel, "docs_out": docs.height,
        **truth_metrics(args.truth, docs, funnel["docs_in"]),
        "wall_s": round(wall, 2),
        "docs_per_s_per_core": round(funnel["docs_in"] / wall / cores, 2),
        "mb_per_s_per_core": round(input_bytes / 1e6 / wall / cores, 4),
    }
    flat = write_metrics(args.metrics, metrics)
    log.info("corpus: %d documents in, %d out (%s) in %.1fs", funnel["docs_in"], docs.height,
             ", ".join(f"{k}: {v}" for k, v in funnel["removed"].items() if v), wall)
    for name in ("good_removed_rate", "pii_recall", *(k for k in flat if k.startswith("recall."))):
        if name in flat:
            log.info("  %s = %.4f", name, flat[name])


if __name__ == "__main__":
    run(main)
