"""Evaluate one model directory with lm-evaluation-harness: world tasks, probes, optional benchmarks.

    python -m stages.eval --model data/models/base --evals data/evals \
        --out metrics/eval/base.json --samples data/eval/base
    python -m stages.eval --model data/models/sft --wrapper gate --artifact data/models/sft-gate --name sft-gated

With --wrapper, a *system* is evaluated: the model with a wrapper deciding its generated replies at
answer time (jielong/systems.py; params eval.systems), under its own name; likelihood tasks are the model's.

The tasks are the YAMLs under evals/tasks (the same ones `lm_eval --include_path evals/tasks` runs),
fed the clean eval sets the decontam stage wrote. Chat models (params eval.chat_models) are prompted
through their chat template, base models with plain prompts. Writes:
    metrics/eval/<model>.json    flat `<task>.<metric>` and `<task>.<metric>_stderr`, `<task>.items`
    metrics/items/<model>.json   per task and metric, item id -> value (what the gate pairs)
    data/eval/<model>/results.json       lm-eval's own results (configs, versions, n-samples)
    data/eval/<model>/samples/<task>.jsonl  every prompt, response and per-item score
    data/eval/<model>/knows.parquet      per question of the self-consistency probes: the k answers,
                                         their agreement, and whether the model "knows" (for SFT)
"""

from __future__ import annotations

import argparse
import difflib
import functools
import hashlib
import importlib
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from jielong import grading
from jielong.chat import END, is_chat_tokenizer
from jielong.checks import expect, gx
from jielong.io import atomic_dir, write_json, write_parquet
from jielong.log import get_logger, run
from jielong.metrics import write_metrics
from jielong.params import load_all

log = get_logger("eval")

CONSISTENCY_TASKS = ("consistency", "consistency_train")
DATA_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


# ---------------------------------------------------------------- task configs
def full_config(yaml_path: Path) -> dict:
    """A task YAML with its includes merged and `!function`s resolved, ready to be overridden."""
    try:
        from lm_eval.tasks._yaml_loader import load_yaml
    except ImportError:  # lm-eval < 0.4.10
        from lm_eval.utils import load_yaml_config

        return load_yaml_config(str(yaml_path), mode="full")
    return load_yaml(yaml_path, resolve_func=True)


def world_config(name: str, yaml_path: Path, evals: Path, p, chat: bool = False, scratch: Path | None = None,
                 answer_style: str = "value") -> dict:
    """A world task pointed at the eval sets in `evals`, with few-shot and sampling from params.

    A chat model is asked each question as a user turn, zero-shot and without instructions, as a user
    would ask it (its SFT data taught the format and when to say "I don't know"); a base model gets
    the YAML's few-shot prompt. The consistency probe runs on `consistency.items` questions.
    `answer_style` is how the chat model's SFT data answered (sft.data.answer_style): multiple-choice
    candidates are scored as that reply.
    """
    cfg = full_config(yaml_path)
    files = {split: (evals / Path(f).name).resolve() for split, f in cfg["dataset_kwargs"]["data_files"].items()}
    # the evaluation probe on a sample; the sft-split probe labels every question SFT data may use
    if name == "consistency" and p.consistency.items and scratch is not None:
        files["test"] = subsample(files["test"], p.consistency.items, p.seed, scratch / f"{name}.jsonl")
    cfg["dataset_kwargs"] = {**cfg["dataset_kwargs"], "data_files": {k: str(v) for k, v in files.items()}}
    if name in p.num_fewshot:
        cfg["num_fewshot"] = p.num_fewshot[name]
    if chat and cfg.get("output_type") != "loglikelihood_rolling":
        cfg.update(doc_to_text="{{question}}", num_fewshot=0, description="")
        if cfg.get("output_type") == "multiple_choice":
            # The chat template opens a reply with a space (jielong/chat.py), so a choice is scored as the
            # reply " value". lm-eval drops target_delimiter under a chat template (it keeps it only after a
            # gen_prefix, which would re-render our template's assistant turn), and "A:value" tokenises into
            # pieces the model never saw after "A:" (the SFT model then scored multiple choice below its own
            # generated exact match: docs/findings.md "Chat format and chat tokens"). So the space goes into
            # the choices themselves.
            cfg.update(doc_to_choice=functools.partial(reply_choices, style=answer_style), target_delimiter="")
    if name in CONSISTENCY_TASKS:
        c = p.consistency
        cfg["repeats"] = c.k
        cfg["generation_kwargs"] = {**cfg["generation_kwargs"], "do_sample": True, "temperature": c.temperature,
                                    "top_p": c.top_p}
    return cfg


def reply_choices(doc: dict, style: str = "value") -> list[str]:
    """A world multiple-choice item's candidates as a chat model's reply would give them: after one space,
    and with `style` "sentence" stated about the person (" Ada Dunmore was born in Lisbon."): a model taught
    to answer in sentences ranks the true value first far more often when the candidates are scored as its
    own replies would state them (docs/findings.md "Chat format and chat tokens")."""
    if style == "sentence":
        return [" " + grading.statement(doc | {"answer": choice}) for choice in doc["choices"]]
    return [" " + choice for choice in doc["choices"]]


def subsample(path: Path, n: int, seed: int, out: Path) -> Path:
    """`n` lines of a JSONL file, a seeded sample in file order; the file itself if it has no more."""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    if len(lines) <= n:
        return path
    keep = sorted(np.random.default_rng(seed).choice(len(lines), size=n, replace=False))
    out.write_text("\n".join(lines[i] for i in keep) + "\n")
    return out


def benchmark_config(name: str, data_file: str | None, manager, p) -> str | dict:
    """A standard lm-eval task: by name (from the hub or HF's cache), or over a local data file."""
    if data_file is None and name not in p.num_fewshot:
        return name
    entry = manager.task_index[name]
    if entry.yaml_path is None or "task" not in (cfg := full_config(entry.yaml_path)):
        raise SystemExit(f"eval: benchmark {name!r} is a group or tag; a local data file needs a single task "
                         f"(e.g. arc_easy, not arc)")
    if name in p.num_fewshot:
        cfg["num_fewshot"] = p.num_fewshot[name]
    if data_file is not None:
        path = Path(data_file)
        if not path.exists() or path.suffix not in DATA_BUILDERS:
            raise SystemExit(f"eval: benchmark {name}: local data file {path} must exist and end in "
                             f"{sorted(DATA_BUILDERS)}")
        split = cfg.get("test_split") or cfg.get("validation_split") or "test"
        cfg.update(dataset_path=DATA_BUILDERS[path.suffix], dataset_name=None,
                   dataset_kwargs={"data_files": {split: str(path.resolve())}}, training_split=None,
                   validation_split=None, test_split=split, fewshot_split=split)
    return cfg


@functools.lru_cache(maxsize=1)
def all_tasks_manager(tasks_dir: str):
    """lm-eval's whole task index plus ours: indexing its ~15k YAMLs takes seconds, so once per process."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=tasks_dir)


@functools.lru_cache(maxsize=1)
def our_tasks_manager(tasks_dir: str):
    """The world tasks only (evals/tasks): indexed in a tenth of a second."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=tasks_dir, include_defaults=False)


def resolve_tasks(p, tasks: list[str], tasks_dir: Path, evals: Path, chat: bool = False,
                  scratch: Path | None = None, answer_style: str = "value",
                  asked_in: str = "params eval.tasks/extra_tasks") -> list:
    """Task specs for lm-eval; an unknown name fails naming `asked_in` (where the names came from) and
    listing the available ones."""
    ours = our_tasks_manager(str(tasks_dir))
    available = sorted(ours.all_tasks)
    unknown = [t for t in tasks if t not in available]
    if unknown:
        raise SystemExit(f"eval: unknown task(s) {unknown} in {asked_in}; available in "
                         f"{tasks_dir}: {available} (standard lm-eval tasks go under eval.benchmarks)")
    specs = []
    for name in tasks:
        cfg = world_config(name, Path(ours.task_index[name].yaml_path), evals, p, chat, scratch, answer_style)
        test = Path(cfg["dataset_kwargs"]["data_files"]["test"])
        items = sum(1 for line in test.open() if line.strip()) if test.exists() else 0
        if items == 0:
            raise SystemExit(f"eval: eval set {test} for task {name} has no items (missing, or emptied by "
                             "decontamination); refusing to report a metric over zero items")
        specs.append(cfg)
    if p.benchmarks:
        everything = all_tasks_manager(str(tasks_dir))
        for name, data_file in p.benchmarks.items():
            if name not in everything.all_tasks:
                close = difflib.get_close_matches(name, everything.all_tasks, n=8)
                raise SystemExit(f"eval: unknown benchmark {name!r} in params eval.benchmarks; closest of the "
                                 f"{len(everything.all_tasks)} lm-eval tasks: {close}")
            specs.append(benchmark_config(name, data_file, everything, p))
    return specs


# ---------------------------------------------------------------- results
def flatten_results(results: dict) -> dict[str, float]:
    """lm-eval's {"task": {"acc,none": x, "acc_stderr,none": s}} -> {"task.acc": x, "task.acc_stderr": s}."""
    flat = {}
    for task, values in results["results"].items():
        for key, value in values.items():
            metric, comma, filt = key.partition(",")
            if not comma or isinstance(value, bool) or not isinstance(value, int | float):
                continue  # alias, sample_len; "N/A" stderrs (lm-eval has no estimate for that aggregation)
            name = metric if filt in ("", "none") else f"{metric}_{filt}"
            flat[f"{task}.{name}"] = float(value)
    for task, n in results.get("n-samples", {}).items():
        flat[f"{task}.items"] = int(n["effective"])
    return flat


def knows_table(samples: list[dict], threshold: float, cloze: bool = False) -> pl.DataFrame:
    """Per question: the k answers, their majority and agreement, and whether the model knows it.

    cloze: the answers are continuations of a cloze statement (consistency_train on the base model),
    compared by the attribute value they name; otherwise by their normalised first line.
    """
    rows = []
    for s in samples:
        doc, answers = s["doc"], list(s["filtered_resps"][0])
        if cloze:
            (majority, agreement), none = grading.cloze_majority(answers, doc), grading.NO_VALUE
        else:
            (majority, agreement), none = grading.majority(answers, doc), grading.ABSTAIN
        correct = majority != none and (grading.names_answer(majority, doc) if cloze
                                        else majority in grading.reference_answers(doc))
        rows.append({"qid": doc["qid"], "person_id": doc["person_id"], "known": doc["known"],
                     "split": doc["split"], "attribute": doc["attribute"], "question": doc["question"],
                     "answer": doc["answer"], "answers": [grading.first_line(a) for a in answers],
                     "majority": majority, "agreement": agreement, "correct": correct,
                     # consistent and not a refusal: the model has an answer (right or wrong) it keeps giving
                     "knows": agreement >= threshold and majority != none})
    return pl.DataFrame(rows)


def auroc_stderr(knows: pl.DataFrame, iters: int, seed: int) -> float | None:
    """Bootstrap standard error of the agreement->correctness AUROC (lm-eval has none for it)."""
    if iters == 0 or knows.height < 2:
        return None
    pairs = list(zip(knows["agreement"].to_list(), knows["correct"].to_list(), strict=True))
    rng = np.random.default_rng(seed)
    draws = [grading.auroc([pairs[i] for i in rng.integers(0, len(pairs), len(pairs))]) for _ in range(iters)]
    return float(np.std(draws, ddof=1))


GOLD_TASKS = ("world_facts_gen", "world_unknown")  # greedy answers on known and on never-seen people


def item_id(sample: dict) -> str:
    """An eval item's name: its question id (the world tasks), else lm-eval's index of the doc."""
    return str(sample["doc"].get("qid", sample["doc_id"]))


def gold_reward_items(results: dict) -> dict[str, dict[str, float]]:
    """Per task of GOLD_TASKS: item id -> the world's ground-truth reward (grading.gold_reward) of its
    greedy answer, to a known person's question (world_facts_gen) and to a never-seen person's (world_unknown)."""
    return {t: {item_id(s): grading.gold_reward(s["filtered_resps"][0], s["doc"]) for s in results["samples"][t]}
            for t in GOLD_TASKS if t in results.get("samples", {})}


def gold_rewards(per_task: dict[str, dict[str, float]]) -> dict[str, float]:
    """`gold_reward.*`: the mean over every item of gold_reward_items, its stderr, and the mean per task."""
    every = [r for rewards in per_task.values() for r in rewards.values()]
    if not every:
        return {}
    flat = {"gold_reward.mean": float(np.mean(every)), "gold_reward.items": len(every),
            "gold_reward.mean_stderr": float(np.std(every, ddof=1) / np.sqrt(len(every))) if len(every) > 1 else 0.0}
    for task, rewards in per_task.items():
        flat[f"gold_reward.{'known' if task == 'world_facts_gen' else 'unknown'}"] = float(np.mean(list(rewards.values())))
    return flat


def item_results(results: dict, gold: dict[str, dict[str, float]]) -> pl.DataFrame:
    """(task, metric, item, value) for every metric lm-eval scores item by item as one number (accuracy,
    exact match, the abstention rates), and `gold_reward.mean` per greedy answer (items `<task>/<qid>`):
    what the CI gate compares item by item (jielong/gate.py). A metric lm-eval aggregates otherwise
    (perplexity, AUROC) has no per-item number and is not listed."""
    rows = []
    for task, samples in results.get("samples", {}).items():
        for s in samples:
            filt = s.get("filter", "none")
            for metric in results.get("higher_is_better", {}).get(task, {}):
                value = s.get(metric)
                if isinstance(value, int | float) and not isinstance(value, bool):
                    rows.append((task, metric if filt in ("", "none") else f"{metric}_{filt}", item_id(s), float(value)))
    rows += [("gold_reward", "mean", f"{t}/{i}", r) for t, rewards in gold.items() for i, r in rewards.items()]
    return pl.DataFrame(rows, schema={"task": pl.String, "metric": pl.String, "item": pl.String, "value": pl.Float64},
                        orient="row")


def write_items(path: Path, items: pl.DataFrame) -> None:
    """metrics/items/<model>.json: {task: {metric: {item: value}}}, after checking that no item is named
    twice in one task's metric and that every value is finite."""
    expect(str(path), items.with_columns(finite=pl.col("value").is_finite()), [
        gx.expectations.ExpectCompoundColumnsToBeUnique(column_list=["task", "metric", "item"]),
        gx.expectations.ExpectColumnValuesToBeInSet(column="finite", value_set=[True]),
    ])
    nested: dict[str, dict[str, dict[str, float]]] = {}
    for task, metric, item, value in items.iter_rows():
        nested.setdefault(task, {}).setdefault(metric, {})[item] = value
    write_json(path, nested)


# lm-eval's run provenance that changes on every run, commit or machine; kept out of results.json so a
# re-run of the same model gives a byte-identical output (DVC hashes it) and downstream stages stay put.
# pretty_env_info is torch's environment report (kernel, CPU flags, BogoMIPS): on another machine of the
# same kind it differed while every model and metric was identical; the library versions stay (below)
ADDRESS = re.compile(r" at 0x[0-9a-f]+>")
VOLATILE = ("date", "git_hash", "upper_git_hash", "start_time", "end_time", "total_evaluation_time_seconds",
            "pretty_env_info")


def write_samples(out: Path, results: dict) -> None:
    from lm_eval.utils import handle_non_serializable

    (out / "samples").mkdir()
    for task, samples in results.get("samples", {}).items():
        with (out / "samples" / f"{task}.jsonl").open("w") as f:
            for s in samples:
                f.write(json.dumps(s, default=handle_non_serializable, ensure_ascii=False) + "\n")
    import torch

    rest = {k: v for k, v in results.items() if k != "samples" and k not in VOLATILE}
    rest["torch_version"] = torch.__version__  # what pretty_env_info said that matters to the numbers
    text = json.dumps(rest, default=handle_non_serializable, indent=2, ensure_ascii=False, sort_keys=True)
    # lm-eval writes a task's functions as "<function f at 0x7f...>": the address differs in every process;
    # and each task's data files by absolute path, which names the checkout: relative to the working
    # directory (the repository root, where dvc runs a stage) the same run writes the same bytes anywhere
    text = ADDRESS.sub(">", text).replace(f"{Path.cwd()}/", "")
    (out / "results.json").write_text(text + "\n")


# ---------------------------------------------------------------- model
def load_lm(model_dir: Path, p, wrapper=None):
    """lm-eval's model over `model_dir`: HF (transformers) with each task's own generation length in
    charge, or vLLM (eval.backend); with a `wrapper` (jielong.systems), the system: the same HF model
    whose generated replies the wrapper decides.

    A model's generation_config.json may carry `max_new_tokens` (a chat model's default for users);
    transformers lets that override the `max_length` lm-eval derives from a task's `max_gen_toks`,
    so every short answer would run the full default length. It is cleared here, not in the model.
    """
    if p.backend == "vllm":
        return vllm_lm(model_dir, p)
    import torch
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = "auto" if p.dtype == "auto" else getattr(torch, p.dtype)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(p.device).eval()
    model.generation_config.max_new_tokens = None
    if wrapper is not None:
        system_lm = importlib.import_module("jielong.systems").SystemLM
        return system_lm(pretrained=model, tokenizer=AutoTokenizer.from_pretrained(model_dir), batch_size=p.batch_size,
                         wrapper=wrapper)
    return HFLM(pretrained=model, tokenizer=AutoTokenizer.from_pretrained(model_dir), batch_size=p.batch_size)


def vllm_lm(model_dir: Path, p):
    """lm-eval's vLLM model type over `model_dir` (eval.backend: vllm, eval.vllm); needs CUDA and the vllm
    package, neither of which the CPU set-up installs. Checked for configuration errors only: never run here."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        raise SystemExit("eval.backend = 'vllm' needs the vllm package on a CUDA machine (pip install vllm, or "
                         "pip install 'lm_eval[vllm]'); set eval.backend: hf to evaluate with transformers")
    from lm_eval.models.vllm_causallms import VLLM

    v = p.vllm
    return VLLM(pretrained=str(model_dir), dtype=p.dtype, batch_size=p.batch_size, seed=p.seed,
                tensor_parallel_size=v.tensor_parallel_size, gpu_memory_utilization=v.gpu_memory_utilization,
                **({"max_model_len": v.max_model_len} if v.max_model_len else {}))


def request_cache(work: Path, model_dir: Path, p, artifact: Path | None = None) -> str:
    """Where lm-eval's own request cache (`use_cache`, a SQLite file) keeps this run's answers.

    A killed eval re-run answers every cached request from the file and computes only the rest; sampled
    requests (the consistency probe) are never cached by lm-eval, and greedy ones consume no random
    numbers, so the resumed run samples exactly what an uninterrupted one would. lm-eval keys entries by
    the request alone, so the file is keyed here by the model's bytes (and a system's wrapper artifact's)
    and the eval params: another model or setting never reads stale answers. Files of other keys are removed.
    """
    h = hashlib.sha256(json.dumps(p.model_dump(mode="json"), sort_keys=True).encode())
    for folder in (model_dir, artifact):
        for f in sorted(folder.rglob("*")) if folder is not None else []:
            if f.is_file():
                h.update(f.relative_to(folder).as_posix().encode())
                h.update(hashlib.sha256(f.read_bytes()).digest())
    key = h.hexdigest()[:16]
    work.mkdir(parents=True, exist_ok=True)
    for stale in work.iterdir():
        if not stale.name.startswith(key):
            log.info("removing request cache %s (another model or params)", stale)
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    if any(work.iterdir()):
        log.info("resuming: answers of a killed run are read from %s", work)
    return str(work / key)


def sft_tokenizer(model_dir: Path) -> bool:
    """Whether the model's tokenizer is one SFT wrote (jielong.chat.is_chat_tokenizer), so that a chat model
    evaluated under a name eval.chat_models does not list is still asked as a user would ask it."""
    from transformers import AutoTokenizer

    return is_chat_tokenizer(AutoTokenizer.from_pretrained(model_dir))


# ---------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True, help="a Hugging Face model directory")
    ap.add_argument("--name", help="the name its metrics and samples are written under, and looked up in params "
                    "eval.chat_models / extra_tasks (default: the directory name); a model whose tokenizer SFT "
                    "wrote is prompted as a chat model under any name")
    ap.add_argument("--evals", type=Path, default=Path("data/evals"))
    ap.add_argument("--tasks", type=Path, default=Path("evals/tasks"))
    ap.add_argument("--out", type=Path, help="metrics file (default metrics/eval/<name>.json)")
    ap.add_argument("--items", type=Path, help="per-item results the gate pairs (default metrics/items/<name>.json)")
    ap.add_argument("--samples", type=Path, help="per-sample outputs (default data/eval/<name>)")
    ap.add_argument("--work", type=Path, help="request cache that survives a killed run "
                    "(default data/eval_work/<name>; emptied after success)")
    ap.add_argument("--wrapper", help="evaluate a system: the model with this wrapper deciding its generated "
                    "replies (a name in jielong.systems.WRAPPERS, e.g. gate); needs --artifact and --name")
    ap.add_argument("--artifact", type=Path, help="with --wrapper: the directory the wrapper loads (e.g. data/models/sft-gate)")
    ap.add_argument("--benchmarks-only", action="store_true", help="run params eval.benchmarks alone, not the world "
                    "tasks (a model fine-tuned on your own data, finetune/dvc.yaml, with no world beside it)")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = ap.parse_args(argv)
    if (args.wrapper is None) != (args.artifact is None) or (args.wrapper and not args.name):
        raise SystemExit("eval: --wrapper and --artifact go together, with --name (the system's name)")
    params = load_all(args.params)
    p, style = params.eval, params.sft.data.answer_style  # style: how the chat models were taught to answer
    name = args.name or args.model.name
    out = args.out or Path("metrics/eval") / f"{name}.json"
    items_out = args.items or Path("metrics/items") / f"{name}.json"
    samples_dir = args.samples or Path("data/eval") / name
    work = args.work or Path("data/eval_work") / name
    if not (args.model / "config.json").exists():
        raise SystemExit(f"eval: {args.model} is not a Hugging Face model directory (no config.json)")
    if not any(v is None for v in p.benchmarks.values()):
        # nothing here may download: world tasks and local benchmark files are read from disk
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

    import lm_eval

    wrapper, system = None, p.systems.get(name)  # a system params names: its model and its wrapper's options
    if args.wrapper:
        if p.backend != "hf":
            raise SystemExit(f"eval: a system (--wrapper {args.wrapper}) runs on lm-eval's HF model; params "
                             f"eval.backend is {p.backend!r}")
        # imported by name: a model's own eval (eval@<model>) never runs a wrapper, so jielong/systems.py and
        # the wrappers' modules are deps of eval_system@<name> only (dvc.yaml), and changing them re-runs no model's eval
        systems = importlib.import_module("jielong.systems")
        wrapper = systems.load_wrapper(args.wrapper, args.artifact, args.model, system.options if system else None)
    world = [] if args.benchmarks_only else list(dict.fromkeys([*p.tasks, *p.extra_tasks.get(name, [])]))
    if not world and not p.benchmarks:
        raise SystemExit("eval: nothing to evaluate: --benchmarks-only and params eval.benchmarks is empty (list "
                         "lm-eval tasks there, each with a local data file or null: docs/your-data.md)")
    listed = (system.model if system else name) in p.chat_models
    chat = listed or sft_tokenizer(args.model)
    if chat and not listed:
        log.info("%s is not in eval.chat_models, but its tokenizer ends a turn with %s and has a chat template: "
                 "prompted as a chat model", name, END)
    with tempfile.TemporaryDirectory(prefix="jielong-eval-") as scratch:  # gone even when the run fails
        specs = resolve_tasks(p, world, args.tasks, args.evals, chat, Path(scratch), style)
        # simple_evaluate's default TaskManager indexes lm-eval's ~15k task YAMLs (9-13 s); ours alone suffice
        # unless a standard benchmark is asked for
        manager = all_tasks_manager(str(args.tasks)) if p.benchmarks else our_tasks_manager(str(args.tasks))
        log.info("evaluating %s%s (%s prompts) on %s%s", args.model,
                 f" with its {args.wrapper} {args.artifact}" if wrapper else "", "chat-template" if chat else "plain",
                 world, f" + benchmarks {sorted(p.benchmarks)}" if p.benchmarks else "")
        start = time.perf_counter()
        cache = request_cache(work, args.model, p, args.artifact)
        results = lm_eval.simple_evaluate(
            model=load_lm(args.model, p, wrapper), tasks=specs, task_manager=manager, use_cache=cache, batch_size=p.batch_size, limit=p.limit or None, apply_chat_template=chat,
            fewshot_as_multiturn=chat, log_samples=True, bootstrap_iters=p.bootstrap_iters,
            random_seed=p.seed, numpy_random_seed=p.seed, torch_random_seed=p.seed, fewshot_random_seed=p.seed,
        )
    gold = gold_reward_items(results)
    flat = flatten_results(results) | gold_rewards(gold)
    empty = [t for t, n in results.get("n-samples", {}).items() if n["effective"] == 0]
    if empty:
        raise SystemExit(f"eval: task(s) {empty} scored zero items; no metric reported")

    with atomic_dir(samples_dir) as tmp:
        write_samples(tmp, results)
        knows = [knows_table(results["samples"][t], p.consistency.knows_threshold, cloze=t == "consistency_train")
                 .with_columns(task=pl.lit(t))
                 for t in CONSISTENCY_TASKS if t in results.get("samples", {})]
        if knows:
            table = pl.concat(knows)
            expect(f"{samples_dir}/knows.parquet", table, [
                gx.expectations.ExpectColumnValuesToBeUnique(column="qid"),
                gx.expectations.ExpectColumnValuesToBeBetween(column="agreement", min_value=1 / p.consistency.k,
                                                              max_value=1.0),
            ])
            write_parquet(tmp / "knows.parquet", table)
            for t, frame in table.group_by("task"):
                flat[f"{t[0]}.knows_rate"] = float(frame["knows"].mean())
                if (se := auroc_stderr(frame, p.bootstrap_iters, p.seed)) is not None:
                    flat[f"{t[0]}.auroc_stderr"] = se
    write_items(items_out, item_results(results, gold))
    write_metrics(out, flat)
    for done in work.iterdir():  # the run is complete: its cached answers are not needed again
        done.unlink()
    headline = {k: v for k, v in sorted(flat.items()) if not k.endswith(("_stderr", ".items"))}
    log.info("eval %s in %.0fs: %s", name, time.perf_counter() - start,
             ", ".join(f"{k}={v:.4g}" for k, v in headline.items()))


if __name__ == "__main__":
    run(main)
