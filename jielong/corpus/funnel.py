"""The funnel: how many documents came in, what each step removed and why, how many came out.

Built from the per-task stats datatrove saves in every stage's logging dir (`stats/<rank>.json`),
so a resumed run counts the tasks a killed run had finished as well as its own.

    docs_in                 documents read + records the readers skipped (reasons.read.*)
    removed.<step>          documents that went into <step> and did not come out
    reasons.<step>.<why>    the drop reasons datatrove reports (dropped_<why>, timeout, ...)
    pii.<kind>              placeholders put in (a PII scrub removes no document)
"""

from __future__ import annotations

import json
from collections import defaultdict

from jielong.corpus import CorpusError
from jielong.corpus.executors import Stage

# the order documents pass the steps in; a step not in the pipeline (switched off) is left out
STEPS = ["read", "url_filter", "extract", "language", "gopher_repetition", "gopher_quality", "c4", "fineweb",
         "pii", "exact_dedup", "near_dedup"]
# stats a step keeps that are not drop reasons
NOT_REASONS = {"total", "forwarded", "dropped", "doc_len", "doc_len_tokens", "batches", "extracted", "passed_through",
               "no_url", "documents", "input_files", "skipped", "line-total", "line-kept"}


def _value(stat) -> float:
    return stat["total"] if isinstance(stat, dict) else stat


def step_stats(stages: list[Stage]) -> dict[str, dict[str, float]]:
    """{funnel key: {stat name: total over all tasks}} for every keyed step."""
    totals: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for stage in stages:
        files = sorted((stage.logging_dir / "stats").glob("*.json"))
        for path in files:
            per_step = json.loads(path.read_text())
            if len(per_step) != len(stage.steps):
                raise CorpusError(f"{path}: {len(per_step)} step stats for {len(stage.steps)} steps; "
                                  "the work dir is from another pipeline, delete it")
            for (key, _), stats in zip(stage.steps, per_step, strict=True):
                if key:
                    for name, stat in stats["stats"].items():
                        totals[key][name] += _value(stat)
    return {key: dict(values) for key, values in totals.items()}


def funnel(stages: list[Stage]) -> dict:
    stats = step_stats(stages)
    read = stats.get("read", {})
    out: dict = {"docs_in": int(read.get("documents", 0) + read.get("skipped", 0)), "removed": {}, "reasons": {}}
    out["reasons"]["read"] = {k.removeprefix("skipped_"): int(v) for k, v in read.items() if k.startswith("skipped_")}
    out["removed"]["read"] = int(read.get("skipped", 0))
    for key in STEPS[1:]:
        if key not in stats:
            continue
        s = stats[key]
        if key == "pii":
            out["pii"] = {k.removeprefix("replaced_"): int(v) for k, v in s.items() if k.startswith("replaced_")}
            continue
        out["removed"][key] = int(s.get("total", 0) - s.get("forwarded", 0))
        reasons = {k.removeprefix("dropped_"): int(v) for k, v in s.items()
                   if k not in NOT_REASONS and not k.startswith("line-")}
        if reasons:
            out["reasons"][key] = reasons
    out["reasons"] = {k: v for k, v in out["reasons"].items() if v}
    return out


def check(f: dict, docs_out: int) -> None:
    """Fail when nothing is left (naming the step that removed the last documents) or a document went missing."""
    if f["docs_in"] == 0:
        raise CorpusError("corpus: no document read from corpus.inputs (every file empty?)")
    removed = sum(f["removed"].values())
    if f["docs_in"] - removed != docs_out:
        raise CorpusError(f"corpus: the funnel does not add up: {f['docs_in']} in - {removed} removed "
                          f"!= {docs_out} out ({f['removed']})")
    if docs_out == 0:
        left, last = f["docs_in"], None
        for step, n in f["removed"].items():
            if n and left:
                last, left = (step, n, left), left - n
        step, n, before = last
        why = f["reasons"].get(step, {})
        param = "corpus.inputs" if step == "read" else f"corpus.{step}"
        raise CorpusError(f"corpus: every document was removed; step {step!r} ({param}) removed the last "
                          f"{n} of {before} that reached it{f' (reasons: {why})' if why else ''}")
