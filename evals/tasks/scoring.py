"""lm-eval's hooks for the world tasks and the hallucination probes (`!function scoring.x` in the YAMLs).

lm-eval loads this file by its path, so it holds only what the task YAMLs name: each hook turns
lm-eval's doc and model output into the task's metrics through jielong.grading, where what counts
as right, an abstention or a hallucination is defined once for the whole pipeline. `lm_eval
--include_path evals/tasks` therefore runs wherever jielong is installed (`bash setup.sh`).
"""

from __future__ import annotations

from jielong.grading import (
    ABSTAIN,
    ABSTAIN_TARGET,
    auroc,  # consistency.yaml's aggregation
    cloze_majority,
    contains_gold,
    extract_value,
    is_abstention,
    is_attribute_value,
    is_correct,
    majority,
    names_answer,
    reference_answers,
)

__all__ = ["abstain_target", "auroc", "keep_all", "process_consistency", "process_consistency_cloze",
           "process_facts_cloze", "process_facts_gen", "process_known", "process_unknown"]

def abstain_target(doc: dict) -> str:
    """Few-shot target of the abstention tasks: the answer for a known person, else an abstention."""
    return doc["answer"] if doc["known"] else ABSTAIN_TARGET


def keep_all(resps, docs):
    """Identity filter: keep all k sampled answers (lm-eval's default filter keeps only the first)."""
    return resps


def process_facts_gen(doc: dict, results: list) -> dict:
    response = results[0]
    return {"exact_match": float(is_correct(response, doc)),
            "contains": float(contains_gold(response, doc["answer"]))}


def process_unknown(doc: dict, results: list) -> dict:
    response = results[0]
    return {"abstain_rate": float(is_abstention(response)),
            "hallucination_rate": float(is_attribute_value(response, doc["attribute"], doc.get("values")))}


def process_known(doc: dict, results: list) -> dict:
    response = results[0]
    return {"false_abstain_rate": float(is_abstention(response)),
            "exact_match": float(is_correct(response, doc))}


def process_facts_cloze(doc: dict, results: list) -> dict:
    """Recall: the first value of the asked attribute the continuation names is the true one."""
    return {"recall": float(names_answer(extract_value(results[0], doc["attribute"], doc.get("values")), doc))}


def process_consistency(doc: dict, results: list) -> dict:
    responses = results[0]  # the k samples, kept by keep_all
    answer, agreement = majority(responses, doc)
    correct = answer != ABSTAIN and answer in reference_answers(doc)
    return {"agreement": agreement, "majority_correct": float(correct), "auroc": (agreement, correct)}


def process_consistency_cloze(doc: dict, results: list) -> dict:
    answer, agreement = cloze_majority(results[0], doc)
    correct = names_answer(answer, doc)
    return {"agreement": agreement, "majority_correct": float(correct), "auroc": (agreement, correct)}
