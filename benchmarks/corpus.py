"""Corpus throughput: the jielong corpus stage vs datatrove's own reference pipeline, same steps, same input.

    python -m stages.world                      # the default world's crawl (if not there yet)
    python benchmarks/corpus.py [--inputs 'data/world/crawl/*.warc.gz'] [--repeat 2] [--work /tmp/corpus-bench]

Both run the steps of params.yaml `corpus`, with its thresholds, tasks and workers, in their own
process, from a cold work dir:

  ours        `python -m stages.corpus` (readers that count bad records, the offline URL filter and
              LID, a shared word tokenizer, canonical-URL dedup, expectations and metrics included)
  reference   a plain datatrove pipeline as its docs write it: WarcReader -> URLFilter -> Trafilatura
              -> LanguageFilter -> GopherRepetition -> GopherQuality -> C4Quality -> FineWebQuality ->
              PIIFormatter -> exact dedup (signature, find, filter) -> MinHash (signature, buckets,
              cluster, filter), every stage a LocalPipelineExecutor with datatrove's defaults.

The reference needs two things to run offline at all, and gets them without changing a step: the
compact lid.176 model is placed where datatrove's FT176LID looks for its download (a private
HF_ASSETS_CACHE), and URLFilter's tldextract is handed the bundled public suffix snapshot (in its
default form it tries the internet first). Prints documents per second per core for each (core =
a worker busy: min(workers, tasks, input files, CPUs)), the ratio, and the wall times; with
--repeat, the best of the runs of each. Wall times include each process's start-up (imports, block
lists), as a `dvc repro` of the stage pays it.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks import result  # noqa: E402

WORK = Path(tempfile.gettempdir()) / "jielong-corpus-bench"


# ---------------------------------------------------------------- the reference pipeline
def reference(inputs: str, work: Path, params: dict) -> int:
    """datatrove's pipeline for the same steps; returns the number of documents read."""
    from datatrove.executor import LocalPipelineExecutor
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
    from datatrove.pipeline.extractors import Trafilatura
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
        LanguageFilter,
        URLFilter,
    )
    from datatrove.pipeline.formatters import PIIFormatter
    from datatrove.pipeline.readers import JsonlReader, WarcReader
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.hashing import HashConfig
    from tldextract import TLDExtract

    c = params
    folder, pattern = os.path.split(inputs)
    url_filter = URLFilter()
    url_filter.tldextractor = TLDExtract(suffix_list_urls=())  # offline: the bundled snapshot
    g, q, n = c["gopher_repetition"], c["gopher_quality"], c["near_dedup"]
    exact = ExactDedupConfig(content_getter=text_of, hash_config=HashConfig(64, "xxhash"))
    minhash = MinhashConfig(n_grams=n["shingle_size"], num_buckets=n["bands"], hashes_per_bucket=n["rows"],
                            seed=n["seed"], hash_config=HashConfig(64, "xxhash"))
    tasks, workers = c["tasks"], c["workers"]
    stages = [
        ([WarcReader(folder, glob_pattern=pattern), url_filter,
          Trafilatura(favour_precision=True, timeout=c["extract"]["timeout_s"], deduplicate=False),
          LanguageFilter(languages=c["language"]["languages"], language_threshold=c["language"]["threshold"]),
          GopherRepetitionFilter(dup_line_frac=g["dup_line_frac"], dup_para_frac=g["dup_para_frac"],
                                 dup_line_char_frac=g["dup_line_char_frac"], dup_para_char_frac=g["dup_para_char_frac"],
                                 top_n_grams=tuple(map(tuple, g["top_n_grams"])),
                                 dup_n_grams=tuple(map(tuple, g["dup_n_grams"]))),
          GopherQualityFilter(min_doc_words=q["min_doc_words"], max_doc_words=q["max_doc_words"],
                              min_avg_word_length=q["min_avg_word_length"], max_avg_word_length=q["max_avg_word_length"],
                              max_symbol_word_ratio=q["max_symbol_word_ratio"],
                              max_bullet_lines_ratio=q["max_bullet_lines_ratio"],
                              max_ellipsis_lines_ratio=q["max_ellipsis_lines_ratio"],
                              max_non_alpha_words_ratio=q["min_alpha_words_ratio"], min_stop_words=q["min_stop_words"]),
          C4QualityFilter(**{k: v for k, v in c["c4"].items() if k != "enabled"}),
          FineWebQualityFilter(**{k: v for k, v in c["fineweb"].items() if k != "enabled"}),
          PIIFormatter(),
          JsonlWriter(str(work / "filtered")),
          ExactDedupSignature(str(work / "exact_sigs"), exact)], tasks),
        ([ExactFindDedups(str(work / "exact_sigs"), str(work / "exact_dups"), exact)], 1),
        ([JsonlReader(str(work / "filtered")), ExactDedupFilter(str(work / "exact_dups"), exact),
          JsonlWriter(str(work / "deduped")), MinhashDedupSignature(str(work / "sigs"), minhash)], tasks),
        ([MinhashDedupBuckets(str(work / "sigs"), str(work / "buckets"), config=minhash)], n["bands"]),
        ([MinhashDedupCluster(str(work / "buckets"), str(work / "clusters"), config=minhash)], 1),
        ([JsonlReader(str(work / "deduped")), MinhashDedupFilter(str(work / "clusters")),
          JsonlWriter(str(work / "output"))], tasks),
    ]
    for i, (pipeline, n_tasks) in enumerate(stages):
        LocalPipelineExecutor(pipeline, tasks=n_tasks, workers=min(workers, n_tasks),
                              logging_dir=str(work / "logs" / str(i))).run()
    stats = json.loads((work / "logs" / "0" / "stats.json").read_text())
    docs = stats[0]["stats"]["documents"]
    return docs["total"] if isinstance(docs, dict) else docs


def text_of(doc) -> str:
    return doc.text


def offline_assets(root: Path) -> Path:
    """A private HF_ASSETS_CACHE holding what the reference would otherwise download or re-extract."""
    from datatrove.io import strip_protocol
    from datatrove.utils.lid import FT176LID
    from huggingface_hub import cached_assets_path

    from jielong.corpus.lid import bundled_model

    lid = root / "datatrove" / "lid" / "ft176"
    lid.mkdir(parents=True, exist_ok=True)
    model = lid / strip_protocol(FT176LID.MODEL_URL).replace("/", "_")  # as cached_asset_path_or_download names it
    shutil.copy(bundled_model(), model)
    Path(f"{model}.completed").touch()
    # datatrove extracts its URL block lists into the assets cache once per machine; reuse that copy
    url_lists = Path(cached_assets_path(library_name="datatrove", namespace="filters", subfolder="url_filter"))
    (root / "datatrove" / "filters").mkdir(parents=True, exist_ok=True)
    if (url_lists / "domains").exists():
        (root / "datatrove" / "filters" / "url_filter").symlink_to(url_lists)
    return root


# ---------------------------------------------------------------- runs
def timed_cmd(cmd: list[str], env: dict) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return time.perf_counter() - start


def run(inputs: str = "data/world/crawl/*.warc.gz", params: Path = REPO / "params.yaml", repeat: int = 1,
        work: Path = WORK, verbose: bool = False) -> dict:
    files = glob.glob(inputs if os.path.isabs(inputs) else str(REPO / inputs))
    if not files:
        raise SystemExit(f"corpus benchmark: no file matches {inputs}; run `python -m stages.world` first")
    all_params = yaml.safe_load(params.read_text())
    corpus = all_params["corpus"]
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "JIELONG_PROGRESS": "0", "PYTHONPATH": str(REPO)}
    ours_params = work / "params.yaml"
    ours_params.write_text(yaml.safe_dump({**all_params, "corpus": {**corpus, "inputs": [inputs]}}))
    ref_env = {**env, "HF_ASSETS_CACHE": str(offline_assets(work / "assets"))}

    best = {"ours": float("inf"), "reference": float("inf")}
    for i in range(repeat):
        for name in ("reference", "ours"):
            out = work / f"{name}-{i}"
            if name == "ours":
                cmd = [sys.executable, "-m", "stages.corpus", "--out", str(out / "corpus"), "--work",
                       str(out / "work"), "--metrics", str(out / "corpus.json"), "--params", str(ours_params)]
                seconds = timed_cmd(cmd, env)
            else:
                cmd = [sys.executable, str(Path(__file__).resolve()), "--inputs", inputs, "--params",
                       str(params), "--reference-only", str(out)]
                seconds = timed_cmd(cmd, ref_env)
            best[name] = min(best[name], seconds)
            if verbose:
                print(f"run {i + 1}: {name:9s} {seconds:6.1f} s", flush=True)
    docs = json.loads((work / "ours-0" / "corpus.json").read_text())["docs_in"]
    cores = min(corpus["workers"], corpus["tasks"], len(files), os.cpu_count() or 1)
    return result("corpus", "docs/s/core", docs / best["ours"] / cores, docs / best["reference"] / cores, cores,
                  f"{docs} documents in {len(files)} file(s), {corpus['tasks']} tasks, {cores} worker(s); "
                  f"{best['ours']:.1f} s vs {best['reference']:.1f} s",
                  docs=docs, ours_s=best["ours"], reference_s=best["reference"])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inputs", default="data/world/crawl/*.warc.gz", help="one glob of WARC files")
    ap.add_argument("--params", type=Path, default=REPO / "params.yaml")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--work", type=Path, default=WORK)
    ap.add_argument("--reference-only", type=Path, help=argparse.SUPPRESS)  # internal: run the reference here
    args = ap.parse_args(argv)

    if args.reference_only:
        docs = reference(args.inputs, args.reference_only, yaml.safe_load(args.params.read_text())["corpus"])
        print(json.dumps({"docs_in": docs}))
        return
    r = run(args.inputs, args.params, args.repeat, args.work, verbose=True)
    print(f"\n{r['notes']}")
    print(f"ours       {r['ours']:7.2f} docs/s/core  ({r['ours_s']:.1f} s)")
    print(f"reference  {r['reference']:7.2f} docs/s/core  ({r['reference_s']:.1f} s)")
    print(f"ratio      {r['ratio']:7.2f}x")


if __name__ == "__main__":
    main()
