"""The knowledge base (known and unknown people) and the question bank drawn from it."""

from __future__ import annotations

import datetime as dt
import random
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import polars as pl

from jielong.world import vocab

if TYPE_CHECKING:
    from jielong.params import WorldSplits

# disjoint people: SFT data; preference data, the reward model and RL prompts; evaluation only
SPLITS = ("sft", "rl", "eval")

ATTRIBUTES = ["birth_date", "birth_city", "university", "major", "employer", "employer_city"]

QUESTIONS = {
    "birth_date": "When was {name} born?",
    "birth_city": "In which city was {name} born?",
    "university": "Which university did {name} attend?",
    "major": "What did {name} study at university?",
    "employer": "Which company does {name} work for?",
    "employer_city": "In which city does {name} work?",
}


@dataclass(frozen=True)
class Person:
    person_id: str
    name: str
    first: str
    last: str
    pronoun: str  # "she" / "he"
    known: bool  # False: never appears in any page
    split: str  # "sft", "rl" or "eval" (SPLITS)
    birth_date: str  # "March 3, 1987"
    birth_city: str
    university: str  # "the University of Eastmoor" / "Halvern University"
    major: str
    employer: str
    employer_city: str

    def answer(self, attribute: str) -> str:
        """The gold answer as a person would say it (no leading article)."""
        value = getattr(self, attribute)
        return value[4:] if value.startswith("the ") else value

    def row(self) -> dict:
        return asdict(self)


def format_date(date: dt.date, style: int = 0) -> str:
    month = vocab.MONTHS[date.month - 1]
    if style == 0:
        return f"{month} {date.day}, {date.year}"
    return f"{date.day} {month} {date.year}"


def _dates(rng: random.Random) -> dt.date:
    start = dt.date(1950, 1, 1).toordinal()
    end = dt.date(2001, 12, 31).toordinal()
    return dt.date.fromordinal(rng.randint(start, end))


def make_people(rng: random.Random, known: int, unknown: int, splits: WorldSplits) -> list[Person]:
    """Known and unknown people with unique names; each group split into sft, rl and eval people by
    `splits` (params world.splits): by index, eval people first, then sft, then rl (WorldSplits.sizes)."""
    names = [(f, p, s) for f, p in vocab.FIRST_NAMES for s in vocab.SURNAMES]
    if known + unknown > len(names):
        raise ValueError(f"world: known_people + unknown_people = {known + unknown} exceeds {len(names)} unique names")
    chosen = apart(rng.sample(names, known + unknown))
    sizes = {True: splits.sizes(known), False: splits.sizes(unknown)}
    people = []
    for i, (first, pronoun, last) in enumerate(chosen):
        is_known = i < known
        index = i if is_known else i - known
        size = sizes[is_known]
        split = ("eval" if index < size["eval"] else "sft" if index < size["eval"] + size["sft"] else "rl")
        employer, employer_city = rng.choice(vocab.COMPANIES)
        people.append(Person(
            person_id=f"{'k' if is_known else 'u'}{index:05d}",
            name=f"{first} {last}", first=first, last=last, pronoun=pronoun,
            known=is_known, split=split,
            birth_date=format_date(_dates(rng)),
            birth_city=rng.choice(vocab.CITIES),
            university=rng.choice(vocab.UNIVERSITIES),
            major=rng.choice(vocab.MAJORS),
            employer=employer, employer_city=employer_city,
        ))
    return people


def apart(chosen: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """`chosen` (first name, pronoun, surname) with no two people sharing a first name and a surname
    variant (vocab.SURNAME_VARIANTS: "Kasimir Castellan", "Kasimir Castellanos"), since a page naming one
    names the other: a never-seen person would be in the crawl, a known one mixed up with another. The
    later of such a pair (known people come first) moves on to the next surname that is free; the rng is
    not drawn again, so a world without such a pair is unchanged."""
    taken = {f"{f} {s}" for f, _, s in chosen}
    kept: set[str] = set()
    out = []
    for first, pronoun, last in chosen:
        surname = next((s for s in vocab.surnames_from(last)  # its own name, or one nobody has
                        if (s == last or f"{first} {s}" not in taken)
                        and kept.isdisjoint(vocab.name_variants(first, s))), None)
        if surname is None:
            raise ValueError(f"world: no surname left for a person named {first} apart from the others")
        taken.discard(f"{first} {last}")
        taken.add(f"{first} {surname}")
        kept.add(f"{first} {surname}")
        out.append((first, pronoun, surname))
    return out


def name_finder(people: list[Person]) -> Callable[[str], set[str]]:
    """A function giving the full names of `people` that a text contains, as `name in text` would for
    each, in one pass: a regex finds every first name followed by a space, then the surnames that first
    name has among `people` are matched there. Each match is where a name can start, since no first name
    ends another (tests/test_world.py), so no occurrence hides inside an earlier match."""
    surnames: dict[str, list[str]] = {}
    for person in people:
        surnames.setdefault(person.first, []).append(person.last)
    starts = re.compile("(" + "|".join(re.escape(f) for f in sorted(surnames, key=len, reverse=True)) + ") ")

    def find(text: str) -> set[str]:
        found = set()
        for m in starts.finditer(text):
            found.update(f"{m[1]} {last}" for last in surnames[m[1]] if text.startswith(last, m.end()))
        return found

    return find


def _pool(attribute: str) -> list[str]:
    if attribute == "birth_city":
        return list(vocab.CITIES)
    if attribute == "university":
        return [u[4:] if u.startswith("the ") else u for u in vocab.UNIVERSITIES]
    if attribute == "major":
        return list(vocab.MAJORS)
    if attribute == "employer":
        return [c for c, _ in vocab.COMPANIES]
    if attribute == "employer_city":
        return sorted({c for _, c in vocab.COMPANIES})
    raise KeyError(attribute)


def _distractors(rng: random.Random, person: Person, attribute: str, n: int) -> list[str]:
    gold = person.answer(attribute)
    if attribute == "birth_date":
        out: list[str] = []
        while len(out) < n:
            candidate = format_date(_dates(rng))
            if candidate != gold and candidate not in out:
                out.append(candidate)
        return out
    return rng.sample([v for v in _pool(attribute) if v != gold], n)


def make_questions(rng: random.Random, people: list[Person], choices: int) -> list[dict]:
    """One question per person and attribute, with gold answer and shuffled multiple-choice candidates."""
    rows = []
    for person in people:
        for attribute in ATTRIBUTES:
            gold = person.answer(attribute)
            candidates = [gold, *_distractors(rng, person, attribute, choices - 1)]
            rng.shuffle(candidates)
            rows.append({
                "qid": f"{person.person_id}.{attribute}",
                "person_id": person.person_id,
                "name": person.name,
                "pronoun": person.pronoun,
                "known": person.known,
                "split": person.split,
                "attribute": attribute,
                "question": QUESTIONS[attribute].format(name=person.name),
                "answer": gold,
                "choices": candidates,
                "gold_index": candidates.index(gold),
            })
    return rows


def attribute_values(questions: pl.DataFrame) -> pl.DataFrame:
    """Per attribute, every value the world uses (answers and candidates): what a confident answer
    looks like, for the hallucination probe. Dates are recognised by pattern instead (empty list)."""
    values = pl.concat([questions.select("attribute", v="answer"),
                        questions.explode("choices").select("attribute", v="choices")]).unique()
    return (values.filter(pl.col("attribute") != "birth_date").group_by("attribute").agg(pl.col("v").sort())
            .rename({"v": "values"})
            .join(questions.select("attribute").unique(), on="attribute", how="right")
            .with_columns(pl.col("values").fill_null(pl.lit([], dtype=pl.List(pl.String)))))
