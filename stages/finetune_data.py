"""Your fine-tuning data, read, checked and split for the finetune pipeline (finetune/dvc.yaml).

    python -m stages.finetune_data --base data/finetune/base --out data/finetune/data

Reads the files params finetune.sft, finetune.prefs and finetune.prompts name (formats in
jielong/userdata.py: `messages` conversations, `prompt`/`chosen`/`rejected` pairs, `prompt`s) and
writes data/finetune/data/:
    sft/{train,val}.parquet     `messages`, as stages/sft.py reads them
    prefs/{train,val}.parquet   `prompt` (turns), `chosen`, `rejected`, `kind`, as reward and dpo read them
    prompts.parquet             `prompt` (turns), what ppo rolls out on
    summary.json                counts
Records fall in train or val by a hash of their id (finetune.val_fraction). Checked before the stage
succeeds, each failing record named by file, row and field: the format, unique ids, and through the
base model's chat template a non-empty assistant mask within sft.max_length and pairs within
reward.max_length and dpo.max_length. A kind whose list in params is empty writes no file.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import polars as pl

from jielong import reward_model, templates, userdata
from jielong.checks import expect, gx
from jielong.io import atomic_dir, write_parquet
from jielong.log import get_logger, run
from jielong.params import load_all

log = get_logger("finetune_data")


def length_problem(kind: str, r: dict, tok, params) -> str | None:
    """What is wrong with a well-formed record through the base model's chat template: too long, or (SFT)
    without an assistant token."""
    if kind == "sft":
        enc = templates.encode_with_mask(tok, r["messages"])
        if not any(enc["assistant_masks"]):
            return "messages: no assistant token through the chat template"
        if len(enc["input_ids"]) > params.sft.max_length:
            return (f"messages: {len(enc['input_ids'])} tokens through the chat template, above "
                    f"sft.max_length = {params.sft.max_length}")
    if kind == "prefs":
        longest = max(len(reward_model.encode(tok, r["prompt"], r[side])) for side in ("chosen", "rejected"))
        if longest > min(params.reward.max_length, params.dpo.max_length):
            return (f"prompt + chosen/rejected: {longest} tokens through the chat template, above reward.max_length"
                    f" / dpo.max_length = {params.reward.max_length} / {params.dpo.max_length}")
    return None


def with_length_problems(table: pl.DataFrame, kind: str, tok, params) -> pl.DataFrame:
    problems = []
    for r in table.iter_rows(named=True):
        found = None if r["problem"] else length_problem(kind, r, tok, params)
        problems.append(r["problem"] or (f"{r['source']}: {found}" if found else None))
    return table.with_columns(problem=pl.Series(problems, dtype=pl.String))


def check(table: pl.DataFrame, label: str) -> None:
    expect(label, table.select("id", "problem"), [
        gx.expectations.ExpectTableRowCountToBeBetween(min_value=1),
        gx.expectations.ExpectColumnValuesToBeNull(column="problem"),
        gx.expectations.ExpectColumnValuesToBeUnique(column="id"),
    ])


COLUMNS = {"sft": ["id", "messages"], "prefs": ["id", "prompt", "chosen", "rejected", "kind"], "prompts": ["id", "prompt"]}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=Path, default=Path("data/finetune/base"), help="the base model (its chat template)")
    ap.add_argument("--out", type=Path, default=Path("data/finetune/data"))
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = ap.parse_args(argv)
    params = load_all(args.params)
    p = params.finetune
    tok = templates.chat_tokenizer(args.base, "finetune_data", "a chat model's dir expected")

    summary = {}
    with atomic_dir(args.out) as tmp:
        for kind in ("sft", "prefs", "prompts"):
            specs = getattr(p, kind)
            if not specs:
                log.info("finetune.%s is empty: no %s data", kind, kind)
                continue
            try:
                table = userdata.read(kind, list(specs), f"finetune.{kind}")
            except ValueError as err:
                raise SystemExit(f"finetune_data: {err}") from None
            table = with_length_problems(table, kind, tok, params)
            check(table, f"finetune.{kind} ({', '.join(specs)})")
            table = table.select(COLUMNS[kind]).with_columns(
                split=pl.col("id").map_elements(lambda i: userdata.split_of(i, p.seed, p.val_fraction),
                                                return_dtype=pl.String))
            if kind == "prompts":
                write_parquet(tmp / "prompts.parquet", table.drop("split"))
                summary[kind] = table.height
                continue
            (tmp / kind).mkdir()
            for split in ("train", "val"):
                part = table.filter(pl.col("split") == split)
                if part.is_empty():
                    raise SystemExit(f"finetune_data: finetune.{kind}: the {split} split is empty ({table.height} "
                                     f"records, finetune.val_fraction = {p.val_fraction}); add records or change it")
                write_parquet(tmp / kind / f"{split}.parquet", part)
                summary[f"{kind}.{split}"] = part.height
        if not summary:
            raise SystemExit("finetune_data: finetune.sft, finetune.prefs and finetune.prompts are all empty")
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    log.info("finetune data: %s", json.dumps(summary, sort_keys=True))


if __name__ == "__main__":
    run(main)
