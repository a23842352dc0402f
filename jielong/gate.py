"""The CI gate: fail when an eval metric got worse than chance allows against a baseline.

    python -m jielong.gate --baseline origin/main           # a git rev: its committed metrics/eval, metrics/items
    python -m jielong.gate --baseline /tmp/base/metrics/eval --current metrics/eval --params params.yaml
    python -m jielong.gate --mde                            # what today's eval sets can detect

Not a DVC stage: a command CI runs after `dvc repro`. It compares every `metrics/eval/<model>.json`
present on both sides, metric by metric as params.yaml's `gate.metrics` lists them.

Where both sides have per-item results (`metrics/items/<model>.json`, beside metrics/eval), a metric is
compared item by item (jielong/paired.py): McNemar's exact test for a 0/1 metric, a paired t-test
otherwise, one-sided in the direction that is worse. It fails when the regression is significant
after Holm's correction over every paired test of the run (family-wise error at most gate.alpha) and
larger than the metric's abs_margin. Both sides must have scored the same items: differing item sets
are an error. A metric without items on a side (perplexity; an old commit) falls back to the unpaired
rule: it may get worse by max(abs_margin, k_stderr * sqrt(se_current^2 + se_baseline^2)).

Exit status: 0 every gated metric within its margin; 1 a regression, a gated metric the baseline
has and the current file lacks, or (with --require-all) a model on one side only; 2 a usage error
(an unknown rev, a missing directory, bad params, differing item sets).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jielong import paired
from jielong.params import GateMetric, GateParams, ParamsError, load

Metrics = dict[str, dict[str, float]]  # model -> flat metrics
Items = dict[str, dict[str, dict[str, dict[str, float]]]]  # model -> task -> metric -> item id -> value
DEFAULT_CURRENT = Path("metrics/eval")


class UsageError(Exception):
    """A bad rev, path, params file or item set: exit 2, not a regression."""


# ---------------------------------------------------------------- reading both sides
def parse_metrics(text: str, where: str) -> dict[str, float]:
    try:
        flat = json.loads(text)
    except json.JSONDecodeError as err:
        raise UsageError(f"{where}: not JSON ({err})") from None
    if not isinstance(flat, dict):
        raise UsageError(f"{where}: expected a flat JSON object of metrics, got {type(flat).__name__}")
    return {k: float(v) for k, v in flat.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def parse_items(text: str, where: str) -> dict[str, dict[str, dict[str, float]]]:
    try:
        items = json.loads(text)
        return {task: {metric: {str(i): float(v) for i, v in values.items()} for metric, values in metrics.items()}
                for task, metrics in items.items()}
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError) as err:
        raise UsageError(f"{where}: not a {{task: {{metric: {{item: value}}}}}} JSON object ({err})") from None


def items_dir(metrics_dir: str) -> str:
    """Where a metrics dir's per-item results live: metrics/eval -> metrics/items."""
    return (Path(metrics_dir).parent / "items").as_posix()


def read_dir(path: Path) -> dict[str, str]:
    """{<model>: text} of <path>/<model>.json."""
    if not path.is_dir():
        raise UsageError(f"{path}: no such metrics directory")
    return {f.stem: f.read_text() for f in sorted(path.glob("*.json"))}


def read_local(path: Path) -> tuple[Metrics, Items, str]:
    texts = read_dir(path)
    if not texts:
        raise UsageError(f"{path}: no <model>.json metrics files")
    items = Path(items_dir(str(path)))
    item_texts = read_dir(items) if items.is_dir() else {}
    return ({m: parse_metrics(t, str(path / f"{m}.json")) for m, t in texts.items()},
            {m: parse_items(t, str(items / f"{m}.json")) for m, t in item_texts.items()}, str(path))


def read_rev(rev: str, path: Path) -> tuple[Metrics, Items, str]:
    """The same files as committed at `rev` (path relative to the repository root; metrics/eval
    when `path` lies outside the checkout) and their per-item results, with a label naming the commit.

    Through DVC's filesystem rather than `git show`: it resolves any rev git does (branches,
    origin/<branch>, tags, HEAD~1) and would also read metrics kept in the DVC cache, not only
    the git-tracked (`cache: false`) ones this project writes.
    """
    from dvc.api import DVCFileSystem
    from dvc.exceptions import DvcException

    try:
        fs = DVCFileSystem(".", rev=rev)
        root = Path(fs.repo.scm.root_dir)
        commit = fs.repo.get_rev()[:10]
    except DvcException as err:
        raise UsageError(f"--baseline {rev!r} is neither a metrics directory nor a git revision of the "
                         f"repository at {Path.cwd()}: {err}") from None
    inside = Path(os.path.relpath(path.resolve(), root.resolve())).as_posix()
    if inside.startswith("../"):  # a current dir outside the checkout is compared with the default place
        inside = DEFAULT_CURRENT.as_posix()

    def texts(folder: str) -> dict[str, str] | None:
        if not fs.isdir(folder):
            return None
        return {Path(f).stem: fs.read_text(f) for f in sorted(fs.ls(folder, detail=False)) if f.endswith(".json")}

    try:  # listing makes DVC read that commit's dvc.yaml and params, which an old commit may not parse
        metric_texts, item_texts = texts(inside), texts(items_dir(inside)) or {}
    except Exception as err:  # noqa: BLE001 - whatever DVC raised, the rev is what cannot be used
        raise UsageError(f"baseline rev {rev!r} (commit {commit}): DVC cannot read its {inside}/: "
                         f"{type(err).__name__}: {err}") from None
    if metric_texts is None:
        raise UsageError(f"baseline rev {rev!r} (commit {commit}) has no {inside}/ directory")
    if not metric_texts:
        raise UsageError(f"baseline rev {rev!r} (commit {commit}) has no <model>.json files in {inside}/")
    return ({m: parse_metrics(t, f"{rev}:{inside}/{m}.json") for m, t in metric_texts.items()},
            {m: parse_items(t, f"{rev}:{items_dir(inside)}/{m}.json") for m, t in item_texts.items()},
            f"{rev} ({commit}):{inside}")


# ---------------------------------------------------------------- comparing
@dataclass
class Row:
    model: str
    metric: str
    baseline: float | None
    current: float | None
    direction: str
    allowed: float  # unpaired: how far the metric may move the wrong way; paired: abs_margin
    test: paired.Paired | None = None  # the paired comparison, where both sides have items
    level: float = 0.0  # the p-value's bound after Holm's correction
    mde: float = math.nan
    status: str = "ok"  # ok | better | REGRESSION | MISSING | NOT FINITE | new

    @property
    def failed(self) -> bool:
        return self.status in ("REGRESSION", "MISSING", "NOT FINITE")

    @property
    def worse(self) -> float:
        """How far the current value is on the wrong side of the baseline (negative: better)."""
        return (self.baseline - self.current) * (1 if self.direction == "higher" else -1)


def allowed_worsening(rule: GateMetric, se_base: float | None, se_cur: float | None) -> float:
    noise = math.hypot(se_base or 0.0, se_cur or 0.0)
    return max(rule.abs_margin, rule.k_stderr * noise)


def item_values(model: str, name: str, base: Items, cur: Items) -> tuple[np.ndarray, np.ndarray] | None:
    """Both sides' per-item values of `<task>.<metric>` in one item order; None where a side has none.
    Differing item sets are an error: the two sides scored different eval sets."""
    task, _, metric = name.partition(".")
    b = base.get(model, {}).get(task, {}).get(metric)
    c = cur.get(model, {}).get(task, {}).get(metric)
    if b is None or c is None:
        return None
    if b.keys() != c.keys():
        only_b, only_c = sorted(b.keys() - c.keys()), sorted(c.keys() - b.keys())
        raise UsageError(f"{model}: {name} was scored on different items: {len(only_b)} only in the baseline "
                         f"{only_b[:5]}, {len(only_c)} only in the current run {only_c[:5]} (same profile and "
                         "eval sets on both sides?)")
    ids = sorted(b)
    return np.array([b[i] for i in ids]), np.array([c[i] for i in ids])


def compare_metric(model: str, name: str, rule: GateMetric, alpha: float, base: dict, cur: dict,
                   base_items: Items, cur_items: Items) -> Row | None:
    b, c = base.get(name), cur.get(name)
    if b is None and c is None:
        return None  # neither side reports it (e.g. gold_reward on a base model)
    row = Row(model, name, b, c, rule.direction, allowed_worsening(rule, base.get(f"{name}_stderr"),
                                                                     cur.get(f"{name}_stderr")))
    if b is None:
        row.status = "new"
    elif c is None:
        row.status = "MISSING"
    elif not math.isfinite(c):
        row.status = "NOT FINITE"
    elif (values := item_values(model, name, base_items, cur_items)) is not None:
        row.test = paired.compare(*values, rule.direction == "higher", alpha)
        row.allowed = rule.abs_margin  # decided with the other paired tests (decide_paired)
    else:
        # a change exactly at the margin is within it, whatever the last float bit says
        if row.worse > row.allowed and not math.isclose(row.worse, row.allowed, rel_tol=1e-9, abs_tol=1e-12):
            row.status = "REGRESSION"
        else:
            row.status = "better" if row.worse < 0 else "ok"
    return row


def decide_paired(rows: list[Row], gate: GateParams) -> None:
    """Holm's correction over every paired test: a regression must be significant at its Holm level
    and, by its point estimate, beyond the metric's abs_margin."""
    tested = [r for r in rows if r.test is not None]
    verdicts = paired.holm_tarone([r.test.p for r in tested], [r.test.min_p for r in tested], gate.alpha)
    for r, (rejected, level) in zip(tested, verdicts, strict=True):
        r.level = level
        r.mde = paired.mde(r.test.n, r.test.sd, level, gate.power, r.test.binary)
        worse = -r.test.diff if r.direction == "higher" else r.test.diff
        if rejected and worse > r.allowed:
            r.status = "REGRESSION"
        else:
            r.status = "better" if worse < 0 else "ok"


def compare(base: Metrics, cur: Metrics, base_items: Items, cur_items: Items, gate: GateParams) -> list[Row]:
    rows = []
    for model in sorted(base.keys() & cur.keys()):
        for name, rule in gate.metrics.items():
            row = compare_metric(model, name, rule, gate.alpha, base[model], cur[model], base_items, cur_items)
            if row is not None:
                rows.append(row)
    decide_paired(rows, gate)
    return rows


def item_mismatches(base: Metrics, cur: Metrics) -> list[str]:
    """`<task>.items` that differ: the two sides scored different eval sets (another profile?)."""
    out = []
    for model in sorted(base.keys() & cur.keys()):
        for key in sorted(k for k in base[model].keys() & cur[model].keys() if k.endswith(".items")):
            if base[model][key] != cur[model][key]:
                out.append(f"{model}: {key} {base[model][key]:g} (baseline) vs {cur[model][key]:g} (current)")
    return out


def aggregate_mismatches(metrics: Metrics, items: Items, names, side: str) -> list[str]:
    """Gated metrics whose per-item mean is not the aggregate in <model>.json: one of the two files was
    edited or written by another run."""
    out = []
    for model, flat in metrics.items():
        for name in names:
            task, _, metric = name.partition(".")
            values = items.get(model, {}).get(task, {}).get(metric)
            if values and name in flat and not math.isclose(float(np.mean(list(values.values()))), flat[name],
                                                            rel_tol=1e-9, abs_tol=1e-9):
                out.append(f"{side} {model}: {name} is {flat[name]:.6g} but its items average "
                           f"{np.mean(list(values.values())):.6g}")
    return out


# ---------------------------------------------------------------- minimum detectable effects
def mde_rows(metrics: Metrics, items: Items, gate: GateParams) -> list[tuple[str, str, int, float, float]]:
    """(model, metric, items, pure, noisy) for every gated metric with per-item results: the smallest
    regression the gate detects with power gate.power when K = every such metric is tested (Holm's
    strictest level, alpha / K), if only regressed items change (`pure`, 0/1 metrics: the exact floor)
    and if every item is redrawn as an independent run would (`noisy`: sd of a difference sqrt(2) x
    the items' own)."""
    found = [(m, name, np.array(list(items[m][name.split(".")[0]][name.split(".", 1)[1]].values())))
             for m in sorted(metrics) for name in gate.metrics
             if name.split(".", 1)[1] in items.get(m, {}).get(name.split(".")[0], {})]
    level = gate.alpha / max(len(found), 1)
    out = []
    for model, name, v in found:
        binary = bool(np.isin(v, (0.0, 1.0)).all())
        pure = paired.mde(len(v), 0.0, level, gate.power, True) if binary else math.nan
        noisy = paired.mde(len(v), math.sqrt(2) * float(v.std(ddof=1)), level, gate.power, binary)
        out.append((model, name, len(v), pure, noisy))
    return out


# ---------------------------------------------------------------- report
STYLE = {"ok": "green", "better": "green", "new": "cyan", "REGRESSION": "bold red", "MISSING": "bold red",
         "NOT FINITE": "bold red"}


def fmt(value: float | None) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4g}"


def table(rows: list[Row], baseline_label: str, current_label: str, alpha: float):
    from rich.markup import escape
    from rich.table import Table

    t = Table(title=escape(f"eval gate: {current_label} vs baseline {baseline_label}"), title_justify="left")
    for col, justify in [("model", "left"), ("metric", "left"), ("test", "left"), ("baseline", "right"),
                         ("current", "right"), ("diff", "right"), (f"{100 * (1 - 2 * alpha):g}% CI", "right"),
                         ("p", "right"), ("Holm level", "right"), ("MDE", "right"), ("allowed", "right"),
                         ("status", "left")]:
        t.add_column(col, justify=justify, no_wrap=True)
    for r in rows:
        diff = "—" if r.baseline is None or r.current is None else f"{r.current - r.baseline:+.4g}"
        if r.test is None:
            test, ci, p, level, mde = "unpaired", "—", "—", "—", "—"
            # the bound on diff: a higher-is-better metric may fall by `allowed`, a lower-is-better one rise
            allowed = f"≥ {-r.allowed:+.4g}" if r.direction == "higher" else f"≤ {r.allowed:+.4g}"
        else:
            test = f"{'McNemar' if r.test.binary else 'paired t'}, {r.test.n}"
            diff = f"{r.test.diff:+.4g}"
            ci, p, level, mde = f"[{r.test.low:+.3g}, {r.test.high:+.3g}]", f"{r.test.p:.2g}", f"{r.level:.2g}", fmt(r.mde)
            allowed = f"p ≤ level, |diff| > {r.allowed:.3g}"
        t.add_row(escape(r.model), escape(r.metric), test, fmt(r.baseline), fmt(r.current), diff, ci, p, level, mde,
                  allowed, f"[{STYLE[r.status]}]{r.status}[/]")
    return t


def explain(r: Row, current_dir: Path) -> str:
    if r.status == "MISSING":
        return (f"{r.model}: {r.metric} is in the baseline ({fmt(r.baseline)}) but missing from "
                f"{current_dir / (r.model + '.json')}")
    if r.status == "NOT FINITE":
        return f"{r.model}: {r.metric} is {r.current} in {current_dir / (r.model + '.json')}"
    better = "higher" if r.direction == "higher" else "lower"
    if r.test is not None:
        return (f"{r.model}: {r.metric} regressed {fmt(r.baseline)} -> {fmt(r.current)} (paired diff "
                f"{r.test.diff:+.4g} over {r.test.n} items, p {r.test.p:.2g} <= Holm level {r.level:.2g}, "
                f"{better} is better, margin {r.allowed:.4g})")
    return (f"{r.model}: {r.metric} regressed {fmt(r.baseline)} -> {fmt(r.current)} (delta "
            f"{r.current - r.baseline:+.4g}, {better} is better, allowed {r.allowed:.4g} the wrong way)")


# ---------------------------------------------------------------- main
def load_gate(path: Path) -> GateParams:
    try:
        return load("gate", path)
    except ParamsError as err:
        raise UsageError(str(err)) from None


def print_mde(args: argparse.Namespace, console) -> int:
    from rich.table import Table

    gate = load_gate(args.params)
    metrics, items, label = read_local(args.current)
    rows = mde_rows(metrics, items, gate)
    if not rows:
        raise UsageError(f"{items_dir(str(args.current))}: no per-item results of a gated metric")
    t = Table(title=f"minimum detectable regression, {label}: one-sided, alpha {gate.alpha:g} / {len(rows)} "
              f"(Holm's strictest level), power {gate.power:g}", title_justify="left")
    for col in ("model", "metric", "items", "only regressed items change", "every item redrawn"):
        t.add_column(col, justify="left" if col in ("model", "metric") else "right", no_wrap=True)
    for model, name, n, pure, noisy in rows:
        t.add_row(model, name, str(n), fmt(pure), fmt(noisy))
    console.print(t)
    return 0


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape

    # CI logs are no terminal: a fixed width keeps metric names whole instead of 80-column wrapping
    console = Console(width=None if sys.stdout.isatty() else 200, highlight=False)
    if args.mde:
        return print_mde(args, console)
    if args.baseline is None:
        raise UsageError("--baseline is required (a git rev or a metrics directory), unless --mde")
    gate = load_gate(args.params)
    current, current_items, _ = read_local(args.current)
    if Path(args.baseline).is_dir():
        baseline, baseline_items, label = read_local(Path(args.baseline))
    else:
        baseline, baseline_items, label = read_rev(args.baseline, args.current)

    rows = compare(baseline, current, baseline_items, current_items, gate)
    if rows:
        console.print(table(rows, label, str(args.current), gate.alpha))
    else:
        console.print(escape(f"eval gate: no gated metric (params gate.metrics) on any model in both "
                             f"{args.current} and {label}"))
    one_side = [f"{m}: only in the baseline" for m in sorted(baseline.keys() - current.keys())]
    one_side += [f"{m}: only in the current metrics (nothing to compare)"
                 for m in sorted(current.keys() - baseline.keys())]
    for line in one_side:
        console.print(f"[yellow]model {escape(line)}[/]")
    for line in item_mismatches(baseline, current):
        console.print(f"[yellow]warning: item counts differ, {escape(line)}: "
                      "were both sides made with the same profile?[/]")
    for line in (aggregate_mismatches(baseline, baseline_items, gate.metrics, "baseline")
                 + aggregate_mismatches(current, current_items, gate.metrics, "current")):
        console.print(f"[yellow]warning: {escape(line)}[/]")
    unpaired = sorted({r.model for r in rows if r.test is None and r.baseline is not None and r.current is not None
                       and r.metric.split(".", 1)[0] != "world_heldout_ppl"})
    if unpaired:
        console.print(f"[yellow]no per-item results on both sides for {', '.join(unpaired)}: those metrics "
                      "were compared unpaired (wider margins)[/]")

    failed = [r for r in rows if r.failed]
    for r in failed:
        console.print(f"[bold red]FAIL[/] {escape(explain(r, args.current))}")
    if args.require_all and one_side:
        console.print(f"[bold red]FAIL[/] --require-all: {len(one_side)} model(s) on one side only")
    if failed or (args.require_all and one_side):
        console.print(f"[bold red]eval gate failed[/]: {len(failed)} of {len(rows)} gated metric(s) failed")
        return 1
    models = len(baseline.keys() & current.keys())
    tested = sum(r.test is not None for r in rows)
    console.print(f"[green]eval gate passed[/]: {len(rows)} gated metric(s) on {models} model(s) within their "
                  f"margins ({tested} compared item by item, family-wise alpha {gate.alpha:g})")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", help="a git rev (its committed metrics) or a metrics directory")
    ap.add_argument("--current", type=Path, default=DEFAULT_CURRENT,
                    help="directory of <model>.json (per-item results in its sibling items/)")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"), help="its `gate` section")
    ap.add_argument("--require-all", action="store_true", help="fail when a model is on one side only")
    ap.add_argument("--mde", action="store_true",
                    help="print the smallest regression each gated metric of --current can detect, and exit")
    args = ap.parse_args(argv)
    try:
        return run(args)
    except UsageError as err:
        print(f"gate: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
