"""How well the corpus stage did on the embedded world, whose truth.parquet labels every crawl record.

    recall.<kind>       share of the planted dirt of that kind that is not in the output:
                        low_quality, foreign, blocklisted, near_duplicate, and exact_duplicate
                        copies beyond the first of their group (dup_rank > 0)
    good_removed_rate   share of clean pages (good, article, pii, leak) that are not in the output
    pii_recall          share of planted PII values (emails, phones, IPs) found nowhere in the output text

Only computed when the input is that crawl: every record id the stage kept is a truth record id
and as many documents came in as truth has records.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from jielong.log import get_logger

log = get_logger("corpus")

DIRT = ["low_quality", "foreign", "blocklisted", "exact_duplicate", "near_duplicate"]
CLEAN = ["good", "article", "pii", "leak"]


def truth_metrics(truth_path: Path | None, docs: pl.DataFrame, docs_in: int) -> dict:
    if truth_path is None or not Path(truth_path).exists():
        return {}
    truth = pl.read_parquet(truth_path)
    kept_ids = set(docs["id"].to_list())
    if docs_in != truth.height or not kept_ids <= set(truth["record_id"].to_list()):
        log.info("%s does not describe these inputs (%d records, %d documents in): no recall metrics",
                 truth_path, truth.height, docs_in)
        return {}
    truth = truth.with_columns(removed=~pl.col("record_id").is_in(list(kept_ids)))
    dirt = truth.filter(pl.col("kind").is_in(DIRT) & ((pl.col("kind") != "exact_duplicate") | (pl.col("dup_rank") > 0)))
    recall = {kind: float(group["removed"].mean()) for (kind,), group in dirt.group_by("kind")}
    clean = truth.filter(pl.col("kind").is_in(CLEAN))

    text = "\n".join(docs["text"].to_list())
    values = truth.select(pl.col("pii").explode().struct.field("value")).drop_nulls().to_series().to_list()
    left = [v for v in values if v in text]
    if left:
        log.warning("PII left in the output: %s", left[:5])
    return {
        "recall": dict(sorted(recall.items())),
        "good_removed_rate": float(clean["removed"].mean()) if clean.height else 0.0,
        "pii_recall": 1.0 - len(left) / len(values) if values else 1.0,
        "pii_values": {"planted": len(values), "left": len(left)},
    }
