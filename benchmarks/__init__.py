"""Throughput benchmarks: each stage's engine against the reference tool doing the same work.

Every module here is a script (`python benchmarks/<name>.py`) and exposes `run(...) -> dict` with
the keys of `result()`; `python -m benchmarks.run` runs them all and prints one table.
"""

from __future__ import annotations

import math


def result(name: str, unit: str, ours: float, reference: float, threads: int | str, notes: str = "",
           **details) -> dict:
    """One benchmark's row: our throughput, the reference's, ours / reference (higher is better for us),
    the threads each side had, and free-form notes; `details` are kept in the JSON only."""
    ratio = ours / reference if reference > 0 else math.nan
    return {"name": name, "unit": unit, "ours": ours, "reference": reference, "ratio": ratio,
            "threads": threads, "notes": notes, **details}
