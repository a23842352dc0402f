"""Great Expectations helper: validate an artifact, fail naming artifact, expectation and observed value.

Usage:
    from jielong.checks import expect, gx
    expect("data/world/kb.parquet", df, [
        gx.expectations.ExpectColumnValuesToBeUnique(column="name"),
    ])

Expectations GE has no built-in for (e.g. a property of a list column) are
expressed on a derived column added to the frame before validation.
"""

from __future__ import annotations

import logging
import os
from functools import lru_cache

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

import great_expectations as gx  # noqa: E402
import pandas as pd  # noqa: E402
import polars as pl  # noqa: E402

from jielong.log import get_logger  # noqa: E402

log = get_logger("checks")

__all__ = ["ExpectationFailed", "expect", "gx"]

# GE logs every datasource it builds at INFO; keep stage logs readable.
logging.getLogger("great_expectations").setLevel(logging.WARNING)

_RESULT_KEYS = ("observed_value", "unexpected_count", "unexpected_percent", "partial_unexpected_list")


class ExpectationFailed(RuntimeError):
    """An artifact failed one or more expectations; the message names each failure."""


@lru_cache(maxsize=1)
def _context():
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    return ctx


def _describe(result) -> str:
    cfg = result.expectation_config
    kwargs = {k: v for k, v in cfg.kwargs.items() if k != "batch_id"}
    observed = {k: result.result[k] for k in _RESULT_KEYS if k in result.result}
    if "partial_unexpected_list" in observed:
        observed["partial_unexpected_list"] = observed["partial_unexpected_list"][:5]
    return f"{cfg.type}({kwargs}) observed {observed}"


def expect(artifact: str, df: pd.DataFrame | pl.DataFrame, expectations: list) -> None:
    """Validate `df` (the content of `artifact`) against `expectations`; raise ExpectationFailed if any fails."""
    if isinstance(df, pl.DataFrame):
        df = df.to_pandas()
    ctx = _context()
    name = f"a{abs(hash((artifact, id(df))))}"
    source = ctx.data_sources.add_or_update_pandas(name)
    batch = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe(name).get_batch(
        batch_parameters={"dataframe": df}
    )
    suite = gx.ExpectationSuite(name=name)
    for expectation in expectations:
        suite.add_expectation(expectation)
    report = batch.validate(suite)
    ctx.data_sources.delete(name)
    failures = [_describe(r) for r in report.results if not r.success]
    if failures:
        lines = "\n  - ".join(failures)
        raise ExpectationFailed(f"{artifact}: {len(failures)} expectation(s) failed:\n  - {lines}")
    log.info("%s: %d expectations passed on %d rows", artifact, len(expectations), len(df))
