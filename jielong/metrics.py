"""Metrics: small flat JSON files under metrics/, git-tracked so `dvc metrics diff` works."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from jielong.checks import expect, gx
from jielong.io import write_json


def flatten(metrics: Mapping, prefix: str = "") -> dict[str, float | int]:
    """{"removed": {"url": 3}} -> {"removed.url": 3}; keys sorted for stable diffs."""
    flat: dict[str, float | int] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, prefix=f"{name}."))
        elif isinstance(value, bool):
            flat[name] = int(value)
        elif isinstance(value, int | float):
            flat[name] = value
        else:
            raise TypeError(f"metric {name!r} must be a number, got {type(value).__name__}: {value!r}")
    return dict(sorted(flat.items()))


def write_metrics(path: str | Path, metrics: Mapping) -> dict[str, float | int]:
    """Flatten, check every value is finite (a great-expectations check), write atomically."""
    flat = flatten(metrics)
    # `not_finite` holds the metric's name where its value is NaN/inf, so a failure names it.
    frame = pd.DataFrame({
        "metric": list(flat),
        "not_finite": [None if math.isfinite(v) else f"{k}={v}" for k, v in flat.items()],
    })
    expect(str(path), frame, [
        gx.expectations.ExpectTableRowCountToBeBetween(min_value=1),
        gx.expectations.ExpectColumnValuesToBeUnique(column="metric"),
        gx.expectations.ExpectColumnValuesToBeNull(column="not_finite"),
    ])
    write_json(path, flat)
    return flat
