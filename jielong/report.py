"""The report card's pieces: read metrics and curves, draw curves, render Markdown and HTML.

stages/report.py decides what the report says, as a list of blocks (a heading, a paragraph, a
table, a figure); this module knows how to say it. Both renderers take the same blocks, so
report.md and report.html never disagree.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass
from pathlib import Path

import polars as pl
from matplotlib.figure import Figure as MplFigure
from matplotlib.ticker import FuncFormatter

Metrics = dict[str, float]  # one flat metrics file: "<a>.<b>" -> number


class ReportError(Exception):
    """An input the report cannot read: a metrics file that is not flat JSON numbers, a broken CSV."""


# ---------------------------------------------------------------- blocks
@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Text:
    text: str  # one paragraph of plain text: both renderers escape it, neither interprets markup


@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[str]]  # already formatted cells
    text: tuple[int, ...] = (0,)  # columns holding words (left-aligned); the others hold numbers


@dataclass(frozen=True)
class Image:
    path: str  # relative to the report directory, e.g. figures/pretrain_loss.png
    caption: str


Block = Heading | Text | Table | Image


# ---------------------------------------------------------------- reading
def read_metrics(path: Path) -> Metrics | None:
    """A flat metrics JSON file, or None when the stage that writes it has not run."""
    if not path.exists():
        return None
    try:
        # Python's json reads NaN and Infinity too, so a non-finite metric reaches the report as one
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ReportError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(raw, dict):
        raise ReportError(f"{path}: expected a flat JSON object of metrics, got {type(raw).__name__}")
    for key, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ReportError(f"{path}: metric {key!r} is not a number: {value!r}")
    return raw


def read_column(path: Path, x: str, y: str) -> tuple[list[float], list[float]] | None:
    """Columns x and y of a DVC plots CSV (rows where both are numbers), or None when absent."""
    if not path.exists():
        return None
    try:
        frame = pl.read_csv(path, infer_schema_length=None)
    except pl.exceptions.NoDataError:
        return None  # an empty file: the stage wrote no curve
    except pl.exceptions.PolarsError as err:
        raise ReportError(f"{path}: not a readable CSV ({err})") from None
    if x not in frame.columns or y not in frame.columns:
        return None
    # a value that is not a number (a NaN logged by a trainer, an empty cell) is left out of the curve
    both = (frame.select(pl.col(c).cast(pl.Float64, strict=False) for c in (x, y))
            .filter(pl.col(x).is_finite() & pl.col(y).is_finite()))
    if both.height == 0:
        return None
    return both[x].to_list(), both[y].to_list()


# ---------------------------------------------------------------- numbers
def number(value: float | int | None, digits: int = 4) -> str:
    """An int as it is, a float to `digits` significant digits; NaN/inf as nan/inf; None as a dash."""
    if value is None:
        return "–"
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return str(value)  # nan, inf, -inf
    return f"{value:.{digits}g}"


def with_stderr(metrics: Metrics, key: str, digits: int = 4) -> str:
    """`value ± stderr` when metrics hold `<key>_stderr`, else the value alone."""
    value = metrics.get(key)
    if value is None:
        return "–"
    stderr = metrics.get(f"{key}_stderr")
    return number(value, digits) if stderr is None else f"{number(value, digits)} ± {number(stderr, digits)}"


# ---------------------------------------------------------------- figures
@dataclass(frozen=True)
class Line:
    """One curve of a figure: column `y` against column `x` of a CSV under plots/."""

    csv: str  # relative to the plots directory, e.g. pretrain/train.csv
    y: str
    label: str
    x: str = "step"
    points: bool = False  # markers only: x is not time (KL), so joining points in step order would zigzag


def _leading_digit(v: float) -> int:
    return round(v / 10 ** math.floor(math.log10(v))) if v > 0 else 0


def draw(out: Path, title: str, lines: list[tuple[Line, list[float], list[float]]], xlabel: str,
         ylabel: str, dpi: int, logy: bool = False) -> None:
    """A line plot written as PNG, byte for byte the same on every run with the same data."""
    # Figure without pyplot: no global figure registry, no GUI backend; PNG goes through Agg.
    fig = MplFigure(figsize=(6.4, 3.6), layout="constrained")
    ax = fig.add_subplot()
    for line, xs, ys in lines:
        ax.plot(xs, ys, marker="o", markersize=3 if line.points else 2.5,
                linestyle="none" if line.points else "-", linewidth=1.2, label=line.label)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy and all(y > 0 for _, _, ys in lines for y in ys):
        ax.set_yscale("log")
        # plain numbers on the log axis (0.4, 1, 2) rather than matplotlib's 4x10^-1, and only the
        # 2-, 4- and 6-multiples of the minor ticks labelled so a loss spanning two decades stays readable
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(
            lambda v, _: f"{v:g}" if _leading_digit(v) in (2, 4, 6) else ""))
    ax.grid(alpha=0.3)
    ax.legend()
    # PNG metadata would name the matplotlib version ("Software"): left out so the bytes depend on data only
    fig.savefig(out, dpi=dpi, format="png", metadata={"Software": None})


# ---------------------------------------------------------------- rendering
def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks: list[Block]) -> str:
    parts = []
    for b in blocks:
        if isinstance(b, Heading):
            parts.append(f"{'#' * b.level} {b.text}")
        elif isinstance(b, Text):
            parts.append(b.text)
        elif isinstance(b, Table):
            align = [":---" if i in b.text else "---:" for i in range(len(b.header))]
            lines = ["| " + " | ".join(_md_cell(h) for h in b.header) + " |", "|" + "|".join(align) + "|"]
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows]
            parts.append("\n".join(lines))
        elif isinstance(b, Image):
            parts.append(f"![{b.caption}]({b.path})")
    return "\n\n".join(parts) + "\n"


# The HTML is written here rather than converted from the Markdown: the `markdown` package is not a
# dependency, and the report is only headings, paragraphs, tables and images, each a few lines of HTML
# from the same blocks. Every piece of text goes through html.escape.
_CSS = """
body { font-family: system-ui, sans-serif; max-width: 960px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
figure { margin: 1em 0; }
figure img { max-width: 100%; }
figcaption { font-size: 0.9em; color: #555; }
"""


def _html_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.header)
    body = []
    for row in table.rows:
        cells = [f"<td>{html.escape(c)}</td>" if i in table.text else f'<td class="num">{html.escape(c)}</td>'
                 for i, c in enumerate(row)]
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(body) + "\n</tbody>\n</table>"


def to_html(blocks: list[Block], title: str) -> str:
    parts = []
    for b in blocks:
        if isinstance(b, Heading):
            parts.append(f"<h{b.level}>{html.escape(b.text, quote=False)}</h{b.level}>")
        elif isinstance(b, Text):
            parts.append(f"<p>{html.escape(b.text, quote=False)}</p>")
        elif isinstance(b, Table):
            parts.append(_html_table(b))
        elif isinstance(b, Image):
            src, cap = html.escape(b.path, quote=True), html.escape(b.caption)
            parts.append(f'<figure><img src="{src}" alt="{cap}"><figcaption>{cap}</figcaption></figure>')
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            + "\n".join(parts) + "\n</body>\n</html>\n")
