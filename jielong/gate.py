"""The CI gate: fail when an eval metric got worse than its allowed margin against a baseline.

    python -m jielong.gate --baseline origin/main           # a git rev: its committed metrics/eval
    python -m jielong.gate --baseline /tmp/base/metrics/eval --current metrics/eval --params params.yaml

Not a DVC stage: a command CI runs after `dvc repro`. It compares every `metrics/eval/<model>.json`
present on both sides, metric by metric as params.yaml's `gate.metrics` lists them. A metric may
get worse by max(abs_margin, k_stderr * sqrt(se_current^2 + se_baseline^2)), where se is the
metric's `<metric>_stderr` on each side (missing: 0). Both sides must come from the same profile:
the tiny profile's 40 items per task and the default profile's hundreds are different measurements.

Exit status: 0 every gated metric within its margin; 1 a regression, a gated metric the baseline
has and the current file lacks, or (with --require-all) a model on one side only; 2 a usage error
(an unknown rev, a missing directory, bad params).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from jielong.params import GateMetric, ParamsError, load

Metrics = dict[str, dict[str, float]]  # model -> flat metrics
DEFAULT_CURRENT = Path("metrics/eval")


class UsageError(Exception):
    """A bad rev, path or params file: exit 2, not a regression."""


# ---------------------------------------------------------------- reading both sides
def parse_metrics(text: str, where: str) -> dict[str, float]:
    try:
        flat = json.loads(text)
    except json.JSONDecodeError as err:
        raise UsageError(f"{where}: not JSON ({err})") from None
    if not isinstance(flat, dict):
        raise UsageError(f"{where}: expected a flat JSON object of metrics, got {type(flat).__name__}")
    return {k: float(v) for k, v in flat.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def read_dir(path: Path) -> Metrics:
    """<path>/<model>.json for every model."""
    if not path.is_dir():
        raise UsageError(f"{path}: no such metrics directory")
    found = {f.stem: parse_metrics(f.read_text(), str(f)) for f in sorted(path.glob("*.json"))}
    if not found:
        raise UsageError(f"{path}: no <model>.json metrics files")
    return found


def read_rev(rev: str, path: Path) -> tuple[Metrics, str]:
    """The same files as committed at `rev` (path relative to the repository root; metrics/eval
    when `path` lies outside the checkout), and a label naming the commit they came from.

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
    try:  # listing makes DVC read that commit's dvc.yaml and params, which an old commit may not parse
        listed = fs.ls(inside, detail=False) if fs.isdir(inside) else None
        texts = {f: fs.read_text(f) for f in sorted(listed or []) if f.endswith(".json")}
    except Exception as err:  # noqa: BLE001 - whatever DVC raised, the rev is what cannot be used
        raise UsageError(f"baseline rev {rev!r} (commit {commit}): DVC cannot read its {inside}/: "
                         f"{type(err).__name__}: {err}") from None
    if listed is None:
        raise UsageError(f"baseline rev {rev!r} (commit {commit}) has no {inside}/ directory")
    if not texts:
        raise UsageError(f"baseline rev {rev!r} (commit {commit}) has no <model>.json files in {inside}/")
    found = {Path(f).stem: parse_metrics(text, f"{rev}:{f}") for f, text in texts.items()}
    return found, f"{rev} ({commit}):{inside}"


# ---------------------------------------------------------------- comparing
@dataclass(frozen=True)
class Row:
    model: str
    metric: str
    baseline: float | None
    current: float | None
    allowed: float  # how far the metric may move the wrong way
    direction: str
    status: str  # ok | better | REGRESSION | MISSING | NOT FINITE | new

    @property
    def failed(self) -> bool:
        return self.status in ("REGRESSION", "MISSING", "NOT FINITE")


def allowed_worsening(rule: GateMetric, se_base: float | None, se_cur: float | None) -> float:
    noise = math.hypot(se_base or 0.0, se_cur or 0.0)
    return max(rule.abs_margin, rule.k_stderr * noise)


def compare_metric(model: str, name: str, rule: GateMetric, base: dict, cur: dict) -> Row | None:
    b, c = base.get(name), cur.get(name)
    allowed = allowed_worsening(rule, base.get(f"{name}_stderr"), cur.get(f"{name}_stderr"))
    if b is None and c is None:
        return None  # neither side reports it (e.g. gold_reward on a base model)
    if b is None:
        status = "new"
    elif c is None:
        status = "MISSING"
    elif not math.isfinite(c):
        status = "NOT FINITE"
    else:
        worse = (b - c) if rule.direction == "higher" else (c - b)
        # a change exactly at the margin is within it, whatever the last float bit says
        if worse > allowed and not math.isclose(worse, allowed, rel_tol=1e-9, abs_tol=1e-12):
            status = "REGRESSION"
        else:
            status = "better" if worse < 0 else "ok"
    return Row(model, name, b, c, allowed, rule.direction, status)


def compare(base: Metrics, cur: Metrics, rules: dict[str, GateMetric]) -> list[Row]:
    rows = []
    for model in sorted(base.keys() & cur.keys()):
        for name, rule in rules.items():
            if (row := compare_metric(model, name, rule, base[model], cur[model])) is not None:
                rows.append(row)
    return rows


def item_mismatches(base: Metrics, cur: Metrics) -> list[str]:
    """`<task>.items` that differ: the two sides scored different eval sets (another profile?)."""
    out = []
    for model in sorted(base.keys() & cur.keys()):
        for key in sorted(k for k in base[model].keys() & cur[model].keys() if k.endswith(".items")):
            if base[model][key] != cur[model][key]:
                out.append(f"{model}: {key} {base[model][key]:g} (baseline) vs {cur[model][key]:g} (current)")
    return out


# ---------------------------------------------------------------- report
STYLE = {"ok": "green", "better": "green", "new": "cyan", "REGRESSION": "bold red", "MISSING": "bold red",
         "NOT FINITE": "bold red"}


def fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.4g}"


def table(rows: list[Row], baseline_label: str, current_label: str):
    from rich.markup import escape
    from rich.table import Table

    t = Table(title=escape(f"eval gate: {current_label} vs baseline {baseline_label}"), title_justify="left")
    for col, justify in [("model", "left"), ("metric", "left"), ("baseline", "right"), ("current", "right"),
                         ("delta", "right"), ("allowed", "right"), ("status", "left")]:
        t.add_column(col, justify=justify, no_wrap=True)
    for r in rows:
        delta = "—" if r.baseline is None or r.current is None else f"{r.current - r.baseline:+.4g}"
        # the bound on delta: a higher-is-better metric may fall by `allowed`, a lower-is-better one rise
        allowed = f"≥ {-r.allowed:+.4g}" if r.direction == "higher" else f"≤ {r.allowed:+.4g}"
        t.add_row(escape(r.model), escape(r.metric), fmt(r.baseline), fmt(r.current), delta, allowed,
                  f"[{STYLE[r.status]}]{r.status}[/]")
    return t


def explain(r: Row, current_dir: Path) -> str:
    if r.status == "MISSING":
        return (f"{r.model}: {r.metric} is in the baseline ({fmt(r.baseline)}) but missing from "
                f"{current_dir / (r.model + '.json')}")
    if r.status == "NOT FINITE":
        return f"{r.model}: {r.metric} is {r.current} in {current_dir / (r.model + '.json')}"
    better = "higher" if r.direction == "higher" else "lower"
    return (f"{r.model}: {r.metric} regressed {fmt(r.baseline)} -> {fmt(r.current)} (delta "
            f"{r.current - r.baseline:+.4g}, {better} is better, allowed {r.allowed:.4g} the wrong way)")


# ---------------------------------------------------------------- main
def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape

    # CI logs are no terminal: a fixed width keeps metric names whole instead of 80-column wrapping
    console = Console(width=None if sys.stdout.isatty() else 160, highlight=False)
    try:
        rules = load("gate", args.params).metrics
    except ParamsError as err:
        raise UsageError(str(err)) from None
    current = read_dir(args.current)
    if Path(args.baseline).is_dir():
        baseline, label = read_dir(Path(args.baseline)), str(args.baseline)
    else:
        baseline, label = read_rev(args.baseline, args.current)

    rows = compare(baseline, current, rules)
    if rows:
        console.print(table(rows, label, str(args.current)))
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

    failed = [r for r in rows if r.failed]
    for r in failed:
        console.print(f"[bold red]FAIL[/] {escape(explain(r, args.current))}")
    if args.require_all and one_side:
        console.print(f"[bold red]FAIL[/] --require-all: {len(one_side)} model(s) on one side only")
    if failed or (args.require_all and one_side):
        console.print(f"[bold red]eval gate failed[/]: {len(failed)} of {len(rows)} gated metric(s) failed")
        return 1
    models = len(baseline.keys() & current.keys())
    console.print(f"[green]eval gate passed[/]: {len(rows)} gated metric(s) on {models} model(s) "
                  "within their margins")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", required=True,
                    help="a git rev (its committed metrics) or a metrics directory")
    ap.add_argument("--current", type=Path, default=DEFAULT_CURRENT, help="directory of <model>.json")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"), help="its `gate` section")
    ap.add_argument("--require-all", action="store_true", help="fail when a model is on one side only")
    args = ap.parse_args(argv)
    try:
        return run(args)
    except UsageError as err:
        print(f"gate: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
