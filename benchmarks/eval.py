"""Evaluation throughput: lm-eval items per second with the eval stage's model vs lm-eval's stock HFLM.

    python benchmarks/eval.py [--model data/models/base] [--tasks world_facts_gen,world_facts_mc] [--limit 50]

Both run `lm_eval.simple_evaluate` on the same task specs (`stages.eval.resolve_tasks`: the YAMLs of
evals/tasks over the clean eval sets in data/evals, few-shot counts from params `eval`), the first
`--limit` items of each task, the same batch size, seed and torch threads, in this one process:

  ours        `stages.eval.load_lm`: the model loaded in params' dtype and device, its generation
              config's `max_new_tokens` cleared so each task's own `max_gen_toks` bounds generation
  reference   `HFLM(pretrained=<model dir>, device=..., batch_size=...)`, as
              `lm_eval --model hf --model_args pretrained=<dir> --device ... --batch_size ...` builds it

Items/s counts the documents lm-eval scored (n-samples) over the wall time from building the model
to the results, after an untimed warm-up run of the same items (no stderr bootstrap, no sample logging; both given a
task manager of evals/tasks alone, so neither pays for indexing lm-eval's whole task library). A
model named in params `eval.chat_models` is prompted through its chat template on both sides.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks import result  # noqa: E402

TASKS = ("world_facts_gen", "world_facts_mc")


def evaluate(build_model, specs: list, manager, batch_size: int, limit: int, chat: bool, seed: int) -> tuple[int, float]:
    """(items scored, seconds) of one simple_evaluate, the model's construction included."""
    import lm_eval

    start = time.perf_counter()
    results = lm_eval.simple_evaluate(
        model=build_model(), tasks=specs, task_manager=manager, batch_size=batch_size, limit=limit,
        apply_chat_template=chat, fewshot_as_multiturn=chat, log_samples=False, bootstrap_iters=0, random_seed=seed,
        numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed)
    seconds = time.perf_counter() - start
    return sum(n["effective"] for n in results["n-samples"].values()), seconds


def run(model: Path = REPO / "data" / "models" / "base", evals: Path = REPO / "data" / "evals",
        tasks: tuple[str, ...] = TASKS, limit: int = 50, params: Path = REPO / "params.yaml",
        tasks_dir: Path = REPO / "evals" / "tasks", repeats: int = 1) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import torch
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from jielong.params import load_all
    from stages.eval import load_lm, resolve_tasks, sft_tokenizer

    if not (model / "config.json").exists():
        raise SystemExit(f"eval benchmark: {model} is not a model directory; run `dvc repro pretrain` first")
    every = load_all(params)
    p = every.eval
    chat = model.name in p.chat_models or sft_tokenizer(model)  # as the eval stage decides
    scratch = Path(tempfile.mkdtemp(prefix="jielong-eval-bench-"))
    try:
        specs = resolve_tasks(p, list(tasks), tasks_dir, evals, chat, scratch,
                              every.sft.data.answer_style, asked_in="--tasks")
        # given our tasks only: without one, lm-eval indexes its ~15k task YAMLs on every call (~10 s here)
        manager = TaskManager(include_path=str(tasks_dir), include_defaults=False)
        builders = {"ours": lambda: load_lm(model, p),
                    "reference": lambda: HFLM(pretrained=str(model), device=p.device, batch_size=p.batch_size)}
        # warm-up at the same limit: datasets into HF's cache, and torch's first call on each new shape
        # (several times slower on CPU), which would otherwise fall on whichever side runs first
        evaluate(builders["ours"], specs, manager, p.batch_size, limit, chat, p.seed)
        best = {name: (0, float("inf")) for name in builders}
        for _ in range(repeats):
            for name, build in builders.items():
                items, seconds = evaluate(build, specs, manager, p.batch_size, limit, chat, p.seed)
                best[name] = min(best[name], (items, seconds), key=lambda r: r[1])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    (items, ours_s), (ref_items, ref_s) = best["ours"], best["reference"]
    assert items == ref_items, f"ours scored {items} items, the reference {ref_items}"
    return result("eval", "items/s", items / ours_s, ref_items / ref_s, torch.get_num_threads(),
                  f"{model.name} on {','.join(tasks)}, {items} items, batch {p.batch_size}; "
                  f"{ours_s:.1f} s vs {ref_s:.1f} s",
                  items=items, ours_s=ours_s, reference_s=ref_s)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=REPO / "data" / "models" / "base")
    ap.add_argument("--evals", type=Path, default=REPO / "data" / "evals", help="the clean eval sets")
    ap.add_argument("--tasks", default=",".join(TASKS), help="comma-separated tasks of evals/tasks")
    ap.add_argument("--limit", type=int, default=50, help="items per task")
    ap.add_argument("--params", type=Path, default=REPO / "params.yaml")
    ap.add_argument("--repeat", type=int, default=1, help="timed runs per side; the fastest counts")
    a = ap.parse_args(argv)
    r = run(a.model, a.evals, tuple(a.tasks.split(",")), a.limit, a.params, repeats=a.repeat)
    print(f"{r['notes']}; torch threads {r['threads']}")
    print(f"ours (stages.eval.load_lm)  {r['ours']:8.2f} items/s")
    print(f"reference (stock HFLM)      {r['reference']:8.2f} items/s")
    print(f"ratio                       {r['ratio']:8.2f}x")


if __name__ == "__main__":
    main()
