"""Judges of a policy's replies: the world's truth, or a chat model asked whether a reply is good (RLAIF).

The on-policy samples (issue 27) are scored by one of two judges, and the model judge is reported
against the world judge:

- world: the world's ground truth of one reply to a question-bank item, jielong/grading.py's gold
  reward, with what the reply did (`right`, `wrong`, `refused`, `non_answer` about a known person;
  `abstained`, `hallucinated`, `non_answer` about someone never written about).
- ModelJudge: any local Hugging Face chat model, shown a judging template (a format string with
  {question}, {reply} and optionally {reference}) as one user turn of its own chat template, scores
  a reply by how much more likely it opens its verdict with the good word than with the bad one.
- pairwise_agreement: how often two judges order two replies to the same prompt the same way.
"""

from __future__ import annotations

import inspect
import math
import string
from collections import defaultdict
from itertools import combinations
from pathlib import Path

import torch

from jielong import generation, grading
from jielong.log import get_logger, progress

log = get_logger("judge")


# ---------------------------------------------------------------- the world judge
def world(reply: str, doc: dict) -> tuple[float, str]:
    """(gold reward, outcome) of `reply` to the question-bank item `doc` (a row with `known`, `attribute`,
    `answer`, and when present `values`, `choices`, `name`, as the eval sets and questions.parquet carry
    them). The outcome is the correctness term's reading of the reply; the score adds the length and
    boilerplate penalties (grading.py's gold reward comment)."""
    return grading.gold_reward(reply, doc), grading.gold_outcome(reply, doc)


# ---------------------------------------------------------------- the model judge
FIELDS = {"question", "reply", "reference"}


def template_fields(template: str) -> set[str]:
    """The fields a judging template fills; refuses a template that does not show the question and the
    reply, or names any other field (str.format would fail on it mid-run, or judge without the reply)."""
    try:
        names = {field for _, field, _, _ in string.Formatter().parse(template) if field is not None}
    except ValueError as err:  # an unmatched brace
        raise ValueError(f"judge template {template!r} is not a format string: {err}") from None
    names = {name.split(".")[0].split("[")[0] for name in names}
    if unknown := names - FIELDS:
        raise ValueError(f"judge template {template!r} names {sorted(unknown)}; it may use only "
                         f"{{question}}, {{reply}} and {{reference}} (write a literal brace as {{{{ or }}}})")
    if missing := {"question", "reply"} - names:
        raise ValueError(f"judge template {template!r} lacks {', '.join('{' + m + '}' for m in sorted(missing))}: "
                         "the judge must see the question and the reply it judges")
    return names


class ModelJudge:
    """A local chat model as judge. score = log p(good) - log p(bad) of the judge's first reply token.

    Log-odds rather than the normalised probability p(good) / (p(good) + p(bad)): that is the sigmoid
    of this score, so both order replies the same way, but in float32 the sigmoid rounds to exactly 1.0
    (or 0.0) once the judge is sure by more than about 17 nats, and replies it is sure about would tie
    and drop out of the preference pairs. Zero is the point where the judge is undecided.
    """

    def __init__(self, model_dir: Path, template: str, good: str, bad: str, batch_size: int = 16,
                 device: str = "cpu", dtype: torch.dtype | str = torch.float32):
        self.fields = template_fields(template)
        self.template, self.batch_size = template, batch_size
        if batch_size < 1:
            raise ValueError(f"judge batch_size must be positive, got {batch_size}")
        # generation.load refuses a directory that is not a causal LM (a reward model's, say), whose
        # body transformers would otherwise load under a fresh, random LM head
        self.tok, model = generation.load(Path(model_dir), device)
        if self.tok.chat_template is None:
            raise ValueError(f"{model_dir}: the judge's tokenizer has no chat template; a chat model judges")
        if self.tok.pad_token is None:  # many chat models ship none; pads are masked, any token will do
            self.tok.pad_token = self.tok.eos_token
        self.tok.padding_side = "left"  # every row's last position is its own last token
        self.model = model.to(_dtype(dtype, model.config))
        self.good, self.bad = good, bad
        self.good_id, self.bad_id = self._verdict_ids(good, bad)
        # only the last position's logits are read: models that can skip the others' (a vocabulary-wide
        # row per token of every prompt) are asked to
        self._last_only = ({"logits_to_keep": 1}
                           if "logits_to_keep" in inspect.signature(self.model.forward).parameters else {})

    # -------- prompts
    def prompt(self, question: str, reply: str, reference: str | None = None) -> str:
        """The text the judge continues: the filled template as one user turn, with the generation prompt."""
        if "reference" in self.fields and reference is None:
            raise ValueError("the judge template shows {reference}, but no reference facts were given")
        content = self.template.format(question=question, reply=reply, reference=reference)
        return generation.encode(self.tok, True, content)

    def _encode(self, text: str) -> list[int]:
        # the chat template writes any BOS itself (as generation.generate_batch encodes prompts)
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def _verdict_ids(self, good: str, bad: str) -> tuple[int, int]:
        """The first token of each verdict word as the judge would write it to open its reply.

        Tokenised after a generation prompt, not alone: a tokenizer may write a word differently at the
        start of a text (SentencePiece's prefix space) than where the reply starts."""
        if not good or not bad or good == bad:
            raise ValueError(f"judge verdict words must be two different non-empty strings, got {good!r} and {bad!r}")
        head = self.prompt("?", "?", "?")
        head_ids = self._encode(head)
        first = {}
        for word in (good, bad):
            ids = self._encode(head + word)
            if ids[:len(head_ids)] != head_ids or len(ids) == len(head_ids):
                raise ValueError(f"judge verdict {word!r} merges with the end of the judge's generation prompt "
                                 f"{head[-20:]!r} into other tokens; choose a verdict that starts a new token")
            word_ids = ids[len(head_ids):]
            if len(word_ids) > 1:
                log.warning("judge verdict %r is %d tokens %s; its first, %r, is scored", word, len(word_ids),
                            self.tok.convert_ids_to_tokens(word_ids), self.tok.convert_ids_to_tokens(word_ids[0]))
            first[word] = word_ids[0]
        if first[good] == first[bad]:
            raise ValueError(f"judge verdicts {good!r} and {bad!r} share their first token "
                             f"{self.tok.convert_ids_to_tokens(first[good])!r}, so the judge cannot tell them "
                             "apart; choose verdict words that start differently")
        return first[good], first[bad]

    # -------- scores
    @torch.no_grad()
    def score(self, questions: list[str], replies: list[str], references: list[str] | None = None) -> list[float]:
        """The judge's score of each reply to its question, in the given order (see the class docstring)."""
        if len(questions) != len(replies) or (references is not None and len(references) != len(replies)):
            raise ValueError(f"judge: {len(questions)} questions, {len(replies)} replies, "
                             f"{'no' if references is None else len(references)} references; one each per reply")
        if references is not None and "reference" not in self.fields:
            raise ValueError("reference facts were given, but the judge template has no {reference} to show them")
        refs = references if references is not None else [None] * len(replies)
        encoded = [self._encode(self.prompt(q, r, ref)) for q, r, ref in zip(questions, replies, refs, strict=True)]
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if limit and encoded and (longest := max(len(ids) for ids in encoded)) > limit:
            raise ValueError(f"judge prompt of {longest} tokens exceeds the judge's {limit} positions; "
                             "shorten the template or the replies")
        # batches of similar length waste less on padding; scores go back to the given order
        order = sorted(range(len(encoded)), key=lambda i: (len(encoded[i]), i))
        scores = [0.0] * len(encoded)
        batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        for batch in progress(batches, desc="judge", unit="batch"):
            for i, value in zip(batch, self._score_batch([encoded[i] for i in batch]), strict=True):
                scores[i] = value
        return scores

    def _score_batch(self, sequences: list[list[int]]) -> list[float]:
        """One forward pass over left-padded token sequences: log p(good) - log p(bad) after each."""
        enc = self.tok.pad({"input_ids": sequences}, return_tensors="pt")
        input_ids, mask = enc["input_ids"].to(self.model.device), enc["attention_mask"].to(self.model.device)
        # positions count real tokens only, as generate() sets them for left-padded rows: a plain forward
        # pass numbers pads too, which shifts a padded row's positions (exact for rotary attention only
        # up to rounding, and wrong for absolute position embeddings), so a reply's score would depend on
        # its batch
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                            **self._last_only).logits[:, -1, :]
        logp = logits.float().log_softmax(-1)
        return (logp[:, self.good_id] - logp[:, self.bad_id]).tolist()


def _dtype(dtype: torch.dtype | str, config) -> torch.dtype:
    """A torch dtype from its name (as params write it); "auto": the checkpoint's own, float32 if unstated.
    (generation.load reads every model in float32, so the judge casts after loading.)"""
    if dtype == "auto":
        dtype = getattr(config, "dtype", None) or torch.float32
    if isinstance(dtype, str):
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ValueError(f"judge dtype {dtype!r}: expected float32, bfloat16, float16 or auto")
        dtype = getattr(torch, dtype)
    return dtype


# ---------------------------------------------------------------- agreement between judges
def agreement_counts(scores_a: list[float], scores_b: list[float], groups: list) -> tuple[int, int]:
    """(pairs both judges order the same way, pairs both judges order) over every two replies of one group
    (replies to the same prompt). A pair either judge scores equal is left out: a tie says neither reply
    is better, and the world judge ties often (two right replies of one length)."""
    if not len(scores_a) == len(scores_b) == len(groups):
        raise ValueError(f"agreement: {len(scores_a)} and {len(scores_b)} scores for {len(groups)} group labels")
    members = defaultdict(list)
    for i, group in enumerate(groups):
        members[group].append(i)
    agree = total = 0
    for indices in members.values():
        for i, j in combinations(indices, 2):
            a, b = scores_a[i] - scores_a[j], scores_b[i] - scores_b[j]
            if a != 0 and b != 0:
                total += 1
                agree += (a > 0) == (b > 0)
    return agree, total


def pairwise_agreement(scores_a: list[float], scores_b: list[float], groups: list) -> float:
    """The share of reply pairs (same group, neither judge tied) the two judges order the same way;
    NaN when there is no such pair."""
    agree, total = agreement_counts(scores_a, scores_b, groups)
    return agree / total if total else math.nan


__all__ = ["ModelJudge", "agreement_counts", "pairwise_agreement", "template_fields", "world"]
