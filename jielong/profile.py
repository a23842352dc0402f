"""Apply a profile: deep-merge profiles/<name>.yaml over params.yaml.

    python -m jielong.profile tiny     # tests and CI
    python -m jielong.profile gpu      # one H100 or H200

A profile holds only the values that differ from the default profile, so the
result is validated like any params.yaml before it is written.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import yaml

from jielong.io import atomic_file
from jielong.params import Params, ParamsError

PROFILES = Path(__file__).resolve().parent.parent / "profiles"


def merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def apply(name: str, params_path: Path = Path("params.yaml"), profiles: Path = PROFILES) -> dict:
    source = profiles / f"{name}.yaml"
    if not source.exists():
        available = sorted(p.stem for p in profiles.glob("*.yaml"))
        raise ParamsError(f"profile {name!r}: no {source}; available: {available}")
    merged = merge(yaml.safe_load(params_path.read_text()) or {}, yaml.safe_load(source.read_text()) or {})
    Params.model_validate(merged)
    with atomic_file(params_path) as tmp:
        tmp.write_text(f"# profile: {name} (from {source.name} over the default params)\n"
                       + yaml.safe_dump(merged, sort_keys=False))
    return merged


def main() -> None:
    ap = argparse.ArgumentParser(description="Deep-merge profiles/<name>.yaml over params.yaml")
    ap.add_argument("name")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = ap.parse_args()
    apply(args.name, args.params)
    print(f"params.yaml now holds the {args.name} profile")


if __name__ == "__main__":
    main()
