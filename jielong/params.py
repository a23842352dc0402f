"""One typed view of params.yaml.

Each stage reads its own section: `params = load("world")`. Every section is a
pydantic model with `extra="forbid"`, so a misspelt or out-of-range knob fails at
start-up with an error naming params.yaml, the dotted param and the value seen.
Stages that do not exist yet simply have no section here.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

PARAMS_FILE = Path("params.yaml")

PosInt = Annotated[int, Field(ge=1)]
NonNegInt = Annotated[int, Field(ge=0)]
Fraction = Annotated[float, Field(gt=0.0, lt=1.0)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- world
class WorldDirt(Section):
    """How many pages of each planted kind the crawl holds."""

    ad_copies: NonNegInt = 300  # one advertisement page repeated verbatim on many URLs
    syndicated: NonNegInt = 20  # good pages copied verbatim onto a second site
    near_duplicates: NonNegInt = 60  # a good page with a changed date, tracking query or sentence
    low_quality: NonNegInt = 80  # keyword spam, symbol soup, very short, repeated lines
    foreign: NonNegInt = 60  # zh / de / fr / es pages
    foreign_languages: list[str] = ["zh", "de", "fr", "es"]
    pii: NonNegInt = 40  # good pages carrying emails, phone numbers, IP addresses
    blocklisted: NonNegInt = 30  # pages on domains from datatrove's shipped URL block list
    leaks: NonNegInt = 20  # pages quoting evaluation questions with their answers
    questions_per_leak: PosInt = 4


class WorldParams(Section):
    seed: int = 1234
    known_people: PosInt = 200
    unknown_people: PosInt = 60
    eval_fraction: Fraction = 0.5  # share of people (known and unknown) reserved for evaluation
    pages_per_person: PosInt = 5  # each in a different template and attribute order
    articles: NonNegInt = 150  # good pages about everyday topics (no facts)
    heldout_pages: NonNegInt = 60  # person pages rendered but never put in the crawl
    choices: Annotated[int, Field(ge=2)] = 4  # candidate values per multiple-choice question
    warc_shards: PosInt = 4
    crawl_date: dt.date = dt.date(2024, 5, 1)
    dirt: WorldDirt = WorldDirt()

    @model_validator(mode="after")
    def _languages(self) -> WorldParams:
        allowed = {"zh", "de", "fr", "es"}
        bad = [code for code in self.dirt.foreign_languages if code not in allowed]
        if bad or not self.dirt.foreign_languages:
            raise ValueError(f"dirt.foreign_languages must be a non-empty subset of {sorted(allowed)}, got {bad}")
        return self


# ---------------------------------------------------------------- all of it
class Params(Section):
    world: WorldParams = WorldParams()


class ParamsError(ValueError):
    """params.yaml is missing, unreadable or holds a bad value."""


def _format(err: ValidationError, path: Path) -> str:
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"])
        lines.append(f"{path}: {where}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def load_all(path: str | Path = PARAMS_FILE) -> Params:
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: not found (run from the repository root)")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ParamsError(_format(err, path)) from None


def load(section: str, path: str | Path = PARAMS_FILE):
    """The typed section `section` of params.yaml."""
    return getattr(load_all(path), section)
