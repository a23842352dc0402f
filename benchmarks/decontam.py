"""Decontamination throughput: jielong's n-gram pass vs datatrove's NGramsDecontFilter, same input.

    python benchmarks/decontam.py [--mb 20] [--n 13] [--only ours|datatrove] [--work /tmp/decontam-bench]

Input: the default world's crawl pages as a corpus stage would leave them (leak pages included),
repeated with fresh ids until the corpus holds `--mb` MB of text, in Parquet files of ~32 MB. Both
engines read those files, check them against the same eval items (the world's eval questions with
their answers, and the held-out pages) with n-grams of the same n, and write the documents they keep
back to Parquet. Each engine runs in its own process, so its peak RSS is its own.

datatrove's NGramsDecontIndexer needs lighteval (and fetches tasks from the hub), so its index is
written here with the indexer's own normalisation, word tokenizer and hash (query = the question,
label = the answer, query and overlap n-grams on) into the `.index.hashes` file its filter reads.
Prints MB/s, peak RSS, documents removed, how many planted leak pages each caught and how many clean
pages each removed, and the speed ratio.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks import result  # noqa: E402

WORK = Path("/tmp/jielong-decontam-bench")


# ---------------------------------------------------------------- input
def make_input(work: Path, mb: float) -> tuple[Path, Path]:
    """(corpus dir, world dir): the default world, and its crawl repeated up to `mb` MB of text."""
    from jielong.params import load
    from stages.world import main as world_main

    world = work / "world"
    if not (world / "questions.parquet").exists():
        world_main(["--out", str(world), "--metrics", str(work / "world.json"), "--params", str(REPO / "params.yaml")])
    corpus = work / f"corpus-{mb:g}mb"
    if corpus.exists():
        return corpus, world
    from stages.world import build

    _, _, _, records, _ = build(load("world", REPO / "params.yaml"))
    keep = [r for r in records if r.kind not in ("low_quality", "blocklisted")
            and not (r.kind == "exact_duplicate" and r.dup_rank > 0)]
    base = pl.DataFrame({"text": [r.page.text for r in keep], "url": [r.page.url for r in keep],
                         "language": [r.page.language for r in keep], "leak": [r.kind == "leak" for r in keep]})
    per_copy = base["text"].str.len_bytes().sum() / 1e6
    copies = max(1, int(np.ceil(mb / per_copy)))
    per_file = max(1, int(32 / per_copy))
    tmp = corpus.with_suffix(".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f, start in enumerate(range(0, copies, per_file)):
        n = min(per_file, copies - start)
        frame = pl.concat([base.with_columns(id=pl.lit(f"c{start + c:05d}-") + pl.int_range(base.height).cast(pl.String))
                           for c in range(n)])
        frame.select("id", "text", "url", "language", "leak").write_parquet(tmp / f"part-{f:05d}.parquet")
    tmp.rename(corpus)
    return corpus, world


def summary(out_dir: Path, corpus: Path) -> dict:
    """Documents kept vs the input: removed, leak pages caught, clean pages removed."""
    ids = pl.concat([pl.read_parquet(f, columns=["id", "leak"]) for f in sorted(corpus.glob("*.parquet"))])
    kept = set(pl.concat([pl.read_parquet(f, columns=["id"]) for f in sorted(out_dir.rglob("*.parquet"))])["id"])
    removed = ids.filter(~pl.col("id").is_in(list(kept)))
    leaks = int(ids["leak"].sum())
    return {"docs": ids.height, "removed": removed.height,
            "leak_pages_caught": f"{int(removed['leak'].sum())}/{leaks}",
            "clean_pages_removed": int((~removed["leak"]).sum())}


# ---------------------------------------------------------------- engines
def run_ours(corpus: Path, world: Path, out: Path, n: int) -> dict:
    from jielong.decontam import EvalIndex, Normalisation
    from jielong.params import load
    from stages.decontam import scan_corpus, segments, world_sets

    p = load("decontam", REPO / "params.yaml")
    sets, _ = world_sets(world)
    seg, _ = segments(sets)
    index = EvalIndex(seg, n, min(p.min_n, n), p.min_overlap, Normalisation())
    out.mkdir(parents=True)
    files = sorted(corpus.glob("*.parquet"))
    start = time.perf_counter()
    _, counts, _ = scan_corpus(index, files, out, p.batch_rows, set())
    return {"seconds": time.perf_counter() - start, "mb": counts["mb"]}


def run_datatrove(corpus: Path, world: Path, out: Path, n: int) -> dict:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.decont import NGramsDecontConfig, NGramsDecontFilter
    from datatrove.pipeline.readers import ParquetReader
    from datatrove.pipeline.writers import ParquetWriter
    from datatrove.utils.hashing import create_hash_func
    from datatrove.utils.text import ngrams, simplify_text
    from datatrove.utils.word_tokenizers import load_word_tokenizer

    from stages.decontam import world_sets

    config = NGramsDecontConfig(n_grams=n, find_query_ngrams=True, find_overlap_ngrams=True)
    tokenizer, hash_func = load_word_tokenizer("en"), create_hash_func(config.hash_config)

    def tokens(text: str) -> list[str]:
        return tokenizer.word_tokenize(simplify_text(text, config.norm_config))

    # NGramsDecontIndexer.compute_hashes, without the lighteval import its run() needs
    def compute_hashes(label: str, query: str | None) -> list[int]:
        label_tokens = tokens(label)
        grams = list(ngrams(label_tokens, n))
        if query is not None:
            query_tokens = tokens(query)
            grams.extend(ngrams(query_tokens, n))
            grams.extend(query_tokens[-n + 1 + i:] + label_tokens[: i + 1] for i in range(n - 1)
                         if len(query_tokens) >= n - 1 - i and len(label_tokens) >= i + 1)
        return [hash_func(" ".join(g)) for g in grams]

    sets, _ = world_sets(world)
    hashes: set[int] = set()
    for frame in sets.values():
        if "question" in frame.columns:
            for q, a in frame.select("question", "answer").unique().iter_rows():
                hashes.update(compute_hashes(a, q))
        else:
            for (text,) in frame.select("text").iter_rows():
                hashes.update(compute_hashes(text, None))
    index = out.parent / "datatrove-index"
    index.mkdir(parents=True, exist_ok=True)
    np.array(sorted(hashes), dtype=config.hash_config.np_descr).tofile(index / "world.index.hashes")

    start = time.perf_counter()
    LocalPipelineExecutor(pipeline=[
        ParquetReader(str(corpus), text_key="text", id_key="id"),
        NGramsDecontFilter(index_folder=str(index), config=config),
        ParquetWriter(str(out), output_filename="${rank}.parquet"),
    ], tasks=1, workers=1, logging_dir=str(out.parent / "datatrove-logs")).run()
    seconds = time.perf_counter() - start
    mb = sum(pl.read_parquet(f, columns=["text"])["text"].str.len_bytes().sum() for f in corpus.glob("*.parquet")) / 1e6
    return {"seconds": seconds, "mb": mb}


# ---------------------------------------------------------------- main
def child(args) -> None:
    out = args.work / f"out-{args.only}"
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(args.work / "datatrove-logs", ignore_errors=True)
    engine = run_ours if args.only == "ours" else run_datatrove
    r = engine(args.corpus, args.world, out, args.n)
    # peak memory of the engine itself, before the summary reads every id back
    r.update(mb_per_s=r["mb"] / r["seconds"], peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    r.update(summary(out, args.corpus))
    print("RESULT " + json.dumps(r))


def run(mb: float = 20.0, n: int = 13, work: Path = WORK, engines: tuple[str, ...] = ("ours", "datatrove")) -> dict:
    """Both engines in their own process on the same input; `engines` of one runs that one alone."""
    work.mkdir(parents=True, exist_ok=True)
    corpus, world = make_input(work, mb)
    results = {}
    for engine in engines:
        proc = subprocess.run([sys.executable, __file__, "--only", engine, "--n", str(n), "--work", str(work),
                               "--corpus", str(corpus), "--world", str(world)], capture_output=True, text=True)
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not line:
            sys.exit(f"{engine} failed:\n{proc.stderr[-3000:]}")
        results[engine] = json.loads(line[0][len("RESULT "):])
    ours, ref = results.get("ours"), results.get("datatrove")
    notes = "; ".join(f"{e}: peak RSS {r['peak_rss_mb']:.0f} MB, leak pages caught {r['leak_pages_caught']}, "
                      f"clean pages removed {r['clean_pages_removed']}" for e, r in results.items())
    return result("decontam", "MB/s", ours["mb_per_s"] if ours else float("nan"),
                  ref["mb_per_s"] if ref else float("nan"), 1,
                  f"{mb:g} MB, n={n}, one task each; {notes}", corpus=str(corpus), engines=results)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=20.0, help="MB of text in the benchmark corpus")
    ap.add_argument("--n", type=int, default=13, help="n-gram length for both engines")
    ap.add_argument("--only", choices=["ours", "datatrove"])
    ap.add_argument("--work", type=Path, default=WORK)
    ap.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--world", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.corpus:  # a child process running one engine
        child(args)
        return
    r = run(args.mb, args.n, args.work, (args.only,) if args.only else ("ours", "datatrove"))
    print(f"corpus: {r['corpus']} ({args.mb:g} MB of text), n={args.n}")
    for engine, e in r["engines"].items():
        print(f"{engine:>10}: {e['mb_per_s']:8.2f} MB/s  {e['seconds']:7.1f} s  peak RSS {e['peak_rss_mb']:6.0f} MB  "
              f"removed {e['removed']}/{e['docs']}  leak pages caught {e['leak_pages_caught']}  "
              f"clean pages removed {e['clean_pages_removed']}")
    if len(r["engines"]) == 2:
        print(f"speed ratio ours/datatrove: {r['ratio']:.1f}x")


if __name__ == "__main__":
    main()
