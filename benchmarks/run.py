"""Every throughput benchmark in turn: ours, the reference and the ratio, one table, one JSON file.

    python -m benchmarks.run [--only corpus,decontam,tokenizer,pretrain,eval] [--quick] [--out metrics/benchmarks.json]
    python benchmarks/run.py --quick

| benchmark | ours | reference | unit |
|---|---|---|---|
| corpus    | the corpus stage (`python -m stages.corpus`) | datatrove's own pipeline of the same steps | documents/s per busy worker |
| decontam  | jielong.decontam's n-gram scan | datatrove's NGramsDecontFilter | MB of text/s |
| tokenizer | our BPE in HF tokenizers | the same merges in tiktoken | MB/s |
| pretrain  | the pretrain stage's step (transformers Llama) | a nanoGPT-style loop, same shape | tokens/s (and MFU in the notes) |
| eval      | lm-eval with the eval stage's model loading | lm-eval's stock HFLM | items/s |

Each module in benchmarks/ is also a script with its own options and a longer description. Ratios are
ours / reference, so above 1 is faster than the reference. `--quick` uses small inputs (one WARC file,
2 MB for decontam, a few training steps on a smaller batch, 10 eval items per task) so that the whole
run takes a couple of minutes on 2 cores: a smoke run, not numbers to quote. The machine (CPUs, load
average before each benchmark, torch threads) is recorded with the results, since every number here
moves with whatever else the machine is doing. Exit status 1 when a benchmark failed (its row says why).
"""

from __future__ import annotations

import argparse
import glob
import importlib
import json
import math
import os
import platform
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as a script: import the package, not the scripts beside this one
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "benchmarks"]
    sys.path.insert(0, str(REPO))

BENCHMARKS = ("corpus", "decontam", "tokenizer", "pretrain", "eval")


# ---------------------------------------------------------------- the benchmarks' arguments
def arguments(name: str, a: argparse.Namespace) -> dict:
    """Keyword arguments of benchmarks.<name>.run for a full or a --quick run."""
    q = a.quick
    if name == "corpus":
        inputs = a.inputs
        if q:  # one file of the crawl
            files = sorted(glob.glob(inputs if os.path.isabs(inputs) else str(REPO / inputs)))
            inputs = files[0] if files else inputs
        return {"inputs": inputs, "params": a.params, "repeat": 1 if q else a.repeat}
    if name == "decontam":
        return {"mb": 2.0 if q else 20.0}
    if name == "tokenizer":
        return {"tokenizer": a.tokenizer, "text": a.text, "mb": 1.0 if q else 4.0, "repeats": 2 if q else 3}
    if name == "pretrain":
        return {"params": a.params, "steps": 3, "warmup": 1, "batch_size": 8} if q else \
            {"params": a.params, "steps": 20}
    if name == "eval":
        return {"model": a.model, "evals": a.evals, "params": a.params, "limit": 10 if q else 50,
                "repeats": 1 if q else a.repeat}
    raise KeyError(name)


# ---------------------------------------------------------------- machine and table
def machine() -> dict:
    import torch

    return {"cpus": os.cpu_count(), "load_avg": [round(x, 2) for x in os.getloadavg()],
            "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def fmt(x) -> str:
    if not isinstance(x, int | float) or isinstance(x, bool) or not math.isfinite(x):
        return "-"
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.3g}" if abs(x) < 10 else f"{x:.1f}"


def print_table(context: dict, rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"jielong benchmarks: {context['cpus']} CPUs, load average {context['load_avg'][0]} "
                        f"at start, {'quick' if context['quick'] else 'full'} run")
    for col, justify in [("benchmark", "left"), ("unit", "left"), ("ours", "right"), ("reference", "right"),
                         ("ratio", "right"), ("threads", "right"), ("load", "right"), ("notes", "left")]:
        table.add_column(col, justify=justify, overflow="fold")
    for r in rows:
        if "error" in r:
            table.add_row(r["name"], "", "", "", "", "", fmt(r["load_avg_1m"]), f"[red]failed: {r['error']}[/red]")
            continue
        ratio = f"{r['ratio']:.2f}x" if math.isfinite(r["ratio"]) else "-"
        table.add_row(r["name"], r["unit"], fmt(r["ours"]), fmt(r["reference"]), ratio, str(r["threads"]),
                      fmt(r["load_avg_1m"]), r["notes"])
    Console(width=200).print(table)


# ---------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(BENCHMARKS), help=f"comma-separated, of {','.join(BENCHMARKS)}")
    ap.add_argument("--quick", action="store_true", help="small inputs: a smoke run of a couple of minutes")
    ap.add_argument("--out", type=Path, default=REPO / "metrics" / "benchmarks.json", help="results JSON")
    ap.add_argument("--params", type=Path, default=REPO / "params.yaml")
    ap.add_argument("--repeat", type=int, default=2, help="corpus and eval: runs per side, the fastest counts")
    ap.add_argument("--inputs", default="data/world/crawl/*.warc.gz", help="corpus: one glob of WARC files")
    ap.add_argument("--tokenizer", type=Path, default=REPO / "data" / "tokenizer", help="tokenizer: HF dir")
    ap.add_argument("--text", type=Path, default=REPO / "data" / "corpus", help="tokenizer: documents to encode")
    ap.add_argument("--model", type=Path, default=REPO / "data" / "models" / "base", help="eval: model dir")
    ap.add_argument("--evals", type=Path, default=REPO / "data" / "evals", help="eval: the clean eval sets")
    a = ap.parse_args(argv)
    names = [n.strip() for n in a.only.split(",") if n.strip()]
    if unknown := [n for n in names if n not in BENCHMARKS]:
        ap.error(f"unknown benchmark(s) {unknown}; choose from {','.join(BENCHMARKS)}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("JIELONG_PROGRESS", "0")

    context = {**machine(), "quick": a.quick}
    rows = []
    for name in names:
        load_1m = os.getloadavg()[0]
        print(f"benchmark {name} (load average {load_1m:.2f}) ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        try:
            row = importlib.import_module(f"benchmarks.{name}").run(**arguments(name, a))
        except (Exception, SystemExit) as e:  # noqa: BLE001 - one failed benchmark must not hide the others
            message = str(e) if isinstance(e, SystemExit) else f"{type(e).__name__}: {e}"
            traceback.print_exc()
            row = {"name": name, "error": message.strip().splitlines()[-1] if message.strip() else repr(e)}
        rows.append({**row, "load_avg_1m": round(load_1m, 2), "wall_s": round(time.perf_counter() - start, 1)})
        if "error" not in row:
            print(f"  {name}: ours {fmt(row['ours'])} {row['unit']}, reference {fmt(row['reference'])}, "
                  f"ratio {row['ratio']:.2f}x ({rows[-1]['wall_s']} s)", file=sys.stderr, flush=True)
    context["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]

    print_table(context, rows)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = a.out.with_name(a.out.name + ".tmp")
    tmp.write_text(json.dumps({"machine": context, "benchmarks": rows}, indent=2, default=str) + "\n")
    tmp.rename(a.out)
    print(f"wrote {a.out}", file=sys.stderr)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
