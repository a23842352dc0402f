"""Apply a profile: deep-merge profiles/<name>.yaml over the default params.yaml.

    python -m jielong.profile tiny     # tests and CI
    python -m jielong.profile large    # a 200-person world on the same 2 CPU cores
    python -m jielong.profile gpu      # one H100 or H200
    python -m jielong.profile finetune # your checkpoint and data: switches finetune/dvc.yaml on

A profile holds only the values that differ from the default profile, so the result is validated
like any params.yaml before it is written. The written file keeps the values, not params.yaml's
comments; `git checkout params.yaml` returns to the default. A params.yaml that already holds a
profile is refused, since a second profile over it would keep the first one's values wherever the
second is silent (`--stack` does that on purpose, and the header says so).

A profile may bring a pipeline of its own (PIPELINES): the repository's .dvcignore keeps its folder
out of DVC's sight, so the main graph's `dvc status` and `dvc metrics show` never list its stages,
until applying the profile removes that line (`git checkout params.yaml .dvcignore` undoes both).
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import yaml

from jielong.io import atomic_file
from jielong.params import ParamsError, validate

PROFILES = Path(__file__).resolve().parent.parent / "profiles"
HEADER = "# profile: "
PIPELINES = {"finetune": "/finetune/"}  # profile -> its pipeline's folder, as .dvcignore names it


def merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def available(profiles: Path = PROFILES) -> list[str]:
    return sorted(p.stem for p in profiles.glob("*.yaml"))


def applied(params_path: Path) -> str | None:
    """The profile named in `params_path`'s header line, or None for the default params."""
    first = params_path.read_text().split("\n", 1)[0]
    return first[len(HEADER):].split(" (", 1)[0] if first.startswith(HEADER) else None


def apply(name: str, params_path: Path = Path("params.yaml"), profiles: Path = PROFILES,
          stack: bool = False) -> dict:
    source = profiles / f"{name}.yaml"
    if not source.exists():
        raise ParamsError(f"profile {name!r}: no {source}; available: {available(profiles)}")
    if not params_path.is_file():
        raise ParamsError(f"profile {name!r}: no params file {params_path}")
    current = applied(params_path)
    if current is not None and not stack:
        raise ParamsError(f"{params_path} already holds the {current!r} profile; a profile applies over the "
                          f"default params: `git checkout {params_path}` first (or --stack to merge over it)")
    merged = merge(yaml.safe_load(params_path.read_text()) or {}, yaml.safe_load(source.read_text()) or {})
    validate(merged, f"{params_path} with the {name} profile")
    over = f"the {current} profile" if current else "the default params"
    names = f"{name} over {current}" if current else name
    with atomic_file(params_path) as tmp:
        tmp.write_text(f"{HEADER}{names} (from {source.name} over {over})\n"
                       + yaml.safe_dump(merged, sort_keys=False))
    enable_pipeline(name, params_path.resolve().parent)
    return merged


def enable_pipeline(name: str, root: Path) -> str | None:
    """Remove profile `name`'s pipeline folder from `root`/.dvcignore; the folder, or None if nothing changed."""
    folder, ignore = PIPELINES.get(name), root / ".dvcignore"
    if folder is None or not ignore.is_file():
        return None
    lines = ignore.read_text().splitlines(keepends=True)
    kept = [line for line in lines if line.strip() != folder]
    if len(kept) == len(lines):
        return None
    with atomic_file(ignore) as tmp:
        tmp.write_text("".join(kept))
    return folder


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m jielong.profile",
                                 description="Deep-merge profiles/<name>.yaml over the default params.yaml.")
    ap.add_argument("name", help=f"one of {', '.join(available())}")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--stack", action="store_true",
                    help="merge over a params file that already holds a profile (its values stay where this one is silent)")
    args = ap.parse_args(argv)
    try:
        apply(args.name, args.params, stack=args.stack)
    except ParamsError as err:
        sys.exit(f"error: {err}")
    print(f"{args.params} now holds the {args.name} profile")
    if args.name in PIPELINES:
        folder = PIPELINES[args.name].strip("/")
        print(f"{folder}/dvc.yaml is on (.dvcignore no longer hides it): dvc repro {folder}/dvc.yaml")


if __name__ == "__main__":
    main()
