"""Scoring for the world tasks and the hallucination probes; lm-eval calls it as `!function scoring.x`.

Standard library only, so `lm_eval --include_path evals/tasks` works from any checkout and on any
model. lm-eval loads this file by its path; the eval stage imports it as `evals.tasks.scoring`.

- normalise_answer: SQuAD-style answer normalisation for exact match (case, punctuation, articles).
- is_abstention: an "I don't know"-style answer; is_attribute_value: a confident value of the asked
  attribute (a date, or one of the attribute's values seen in the knowledge base).
- agreement: how often k sampled answers agree with their majority; auroc: how well a score (the
  agreement) separates right answers from wrong ones. "A model that answers the same question
  differently each time does not know the answer."
"""

from __future__ import annotations

import re
import string
from collections import Counter

ABSTAIN_TARGET = "I don't know"
ABSTAIN = "<abstain>"  # what every abstention normalises to, so two phrasings of it agree

# ---------------------------------------------------------------- normalisation
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans({c: " " for c in string.punctuation + "“”‘’«»–—…"})


def first_line(response: str) -> str:
    """The answer proper: the first non-empty line, without an echoed "Answer:" label."""
    for line in (response or "").splitlines():
        line = line.strip()
        if line:
            return re.sub(r"^(answer|a)\s*:\s*", "", line, flags=re.IGNORECASE)
    return ""


def normalise_text(text: str) -> str:
    """Lowercase, apostrophes dropped ("don't" -> "dont"), other punctuation to spaces, spaces collapsed."""
    text = (text or "").lower().replace("’", "'").replace("'", "")
    return " ".join(text.translate(_PUNCT).split())


def normalise_answer(text: str) -> str:
    """normalise_text without articles: "the University of Eastmoor." == "University of Eastmoor"."""
    return " ".join(_ARTICLES.sub(" ", normalise_text(text)).split())


# ---------------------------------------------------------------- abstention and hallucination
# Phrases in normalise_text form. Matched as whole words anywhere in the answer's first line.
ABSTAIN_PHRASES = [
    "i dont know", "i do not know", "dont know", "do not know", "not sure", "unsure", "no idea",
    "unknown", "no information", "not enough information", "cannot say", "cant say", "cannot answer",
    "cant answer", "not aware", "never heard", "no record", "no knowledge", "i have no", "not known",
]
_ABSTAIN_RE = re.compile(r"\b(" + "|".join(re.escape(p) for p in ABSTAIN_PHRASES) + r")\b")
_MONTHS = ("january|february|march|april|may|june|july|august|september|october|november|december")
_DATE_RE = re.compile(rf"\b({_MONTHS}) \d{{1,2}} \d{{4}}\b|\b\d{{1,2}} ({_MONTHS}) \d{{4}}\b|\b(1[89]|20)\d\d\b")


def is_abstention(response: str) -> bool:
    return bool(_ABSTAIN_RE.search(normalise_text(first_line(response))))


def is_attribute_value(response: str, attribute: str, values: list[str] | None) -> bool:
    """A confident answer of the right kind: a date for birth_date, else one of the attribute's values."""
    text = normalise_text(first_line(response))
    if not text or is_abstention(response):
        return False
    if attribute == "birth_date":
        return bool(_DATE_RE.search(text))
    padded = f" {text} "
    return any(f" {normalise_text(v)} " in padded for v in values or [] if normalise_text(v))


def canonical(response: str) -> str:
    """The form answers are compared in for agreement: abstentions collapse to one token."""
    return ABSTAIN if is_abstention(response) else normalise_answer(first_line(response))


def is_correct(response: str, gold: str) -> bool:
    return not is_abstention(response) and normalise_answer(first_line(response)) == normalise_answer(gold)


def contains_gold(response: str, gold: str) -> bool:
    return f" {normalise_answer(gold)} " in f" {normalise_answer(first_line(response))} "


# ---------------------------------------------------------------- self-consistency
def majority(responses: list[str]) -> tuple[str, float]:
    """(majority answer in canonical form, agreement = share of the k answers equal to it).

    Ties go to the answer seen first, so the result does not depend on hash order.
    """
    forms = [canonical(r) for r in responses]
    if not forms:
        raise ValueError("majority of zero answers")
    counts = Counter(forms)
    top = max(counts.values())
    winner = next(f for f in forms if counts[f] == top)
    return winner, top / len(forms)


def auroc(pairs: list[tuple[float, bool]]) -> float:
    """Area under the ROC curve of `score` as a predictor of `label` (Mann-Whitney U, ties count 1/2).

    0.5 (chance) when every label is the same: the curve is undefined then, and a model that is
    always wrong has shown nothing about calibration either way.
    """
    pos = sorted(s for s, y in pairs if y)
    neg = sorted(s for s, y in pairs if not y)
    if not pos or not neg:
        return 0.5
    # rank-sum with average ranks for ties
    ranked = sorted([(s, 1) for s in pos] + [(s, 0) for s in neg])
    rank_sum, i = 0.0, 0
    while i < len(ranked):
        j = i
        while j < len(ranked) and ranked[j][0] == ranked[i][0]:
            j += 1
        avg = (i + j + 1) / 2  # ranks i+1 .. j
        rank_sum += avg * sum(label for _, label in ranked[i:j])
        i = j
    u = rank_sum - len(pos) * (len(pos) + 1) / 2
    return u / (len(pos) * len(neg))


# ---------------------------------------------------------------- lm-eval hooks
def abstain_target(doc: dict) -> str:
    """Few-shot target of the abstention tasks: the answer for a known person, else an abstention."""
    return doc["answer"] if doc["known"] else ABSTAIN_TARGET


def keep_all(resps, docs):
    """Identity filter: keep all k sampled answers (lm-eval's default filter keeps only the first)."""
    return resps


def process_facts_gen(doc: dict, results: list) -> dict:
    response = results[0]
    return {"exact_match": float(is_correct(response, doc["answer"])),
            "contains": float(contains_gold(response, doc["answer"]))}


def process_unknown(doc: dict, results: list) -> dict:
    response = results[0]
    return {"abstain_rate": float(is_abstention(response)),
            "hallucination_rate": float(is_attribute_value(response, doc["attribute"], doc.get("values")))}


def process_known(doc: dict, results: list) -> dict:
    response = results[0]
    return {"false_abstain_rate": float(is_abstention(response)),
            "exact_match": float(is_correct(response, doc["answer"]))}


def process_consistency(doc: dict, results: list) -> dict:
    responses = results[0]  # the k samples, kept by keep_all
    answer, agreement = majority(responses)
    correct = answer != ABSTAIN and answer == normalise_answer(doc["answer"])
    return {"agreement": agreement, "majority_correct": float(correct), "auroc": (agreement, correct)}


__all__ = [
    "ABSTAIN", "ABSTAIN_TARGET", "abstain_target", "auroc", "canonical", "contains_gold",
    "first_line", "is_abstention", "is_attribute_value", "is_correct", "keep_all", "majority",
    "normalise_answer", "normalise_text", "process_consistency", "process_facts_gen", "process_known",
    "process_unknown",
]
