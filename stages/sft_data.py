"""Build the SFT conversations from the world's question bank (jielong/conversations.py).

    python -m stages.sft_data --world data/world --knows data/eval/base/knows.parquet \
        --tokenizer data/tokenizer --out data/sft

Writes data/sft/{train,val}.parquet: `messages` (role/content turns in the chat template's terms),
the person, the questions asked and what kind each reply is (answer, idk_unknown_person,
idk_not_known). Checked before the stage succeeds: roles alternate and end on the assistant, every
conversation tokenises with a non-empty assistant mask within sft.max_length, only sft-split
people appear (never rl or eval people), and every answer is the knowledge base's value (bare or
stated as a sentence, as sft.data.answer_style says).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import polars as pl
from transformers import PreTrainedTokenizerFast

from jielong import conversations
from jielong.checks import expect, gx
from jielong.io import atomic_dir, write_parquet
from jielong.log import get_logger, run
from jielong.params import load

log = get_logger("sft_data")


def check(table: pl.DataFrame, questions: pl.DataFrame, tok, max_length: int, style: str, label: str) -> dict:
    """The artifact's expectations; returns counts for the log."""
    facts = {q["qid"]: conversations.stated(q, style) for q in questions.iter_rows(named=True)}
    split_of = dict(zip(questions["person_id"].to_list(), questions["split"].to_list(), strict=False))
    rows = []
    for r in table.iter_rows(named=True):
        enc = tok.apply_chat_template(r["messages"], tokenize=True, return_dict=True,
                                      return_assistant_tokens_mask=True)
        replies = [m["content"] for m in r["messages"] if m["role"] == "assistant"]
        rows.append({
            "id": r["id"], "roles_alternate": conversations.roles_alternate(r["messages"]),
            "assistant_tokens": int(sum(enc["assistant_masks"])), "tokens": len(enc["input_ids"]),
            "person_split": split_of.get(r["person_id"], "missing"),
            # each reply is the KB fact in sft.data.answer_style, or an abstention
            "replies_true": all(kind != "answer" or reply == facts[qid]
                                for reply, kind, qid in zip(replies, r["kinds"], r["qids"], strict=True)),
        })
    frame = pl.DataFrame(rows).to_pandas()
    expect(label, frame, [
        gx.expectations.ExpectColumnValuesToBeUnique(column="id"),
        gx.expectations.ExpectColumnValuesToBeInSet(column="roles_alternate", value_set=[True]),
        gx.expectations.ExpectColumnValuesToBeBetween(column="assistant_tokens", min_value=1),
        gx.expectations.ExpectColumnValuesToBeBetween(column="tokens", max_value=max_length),
        gx.expectations.ExpectColumnValuesToBeInSet(column="person_split", value_set=["sft"]),
        gx.expectations.ExpectColumnValuesToBeInSet(column="replies_true", value_set=[True]),
    ])
    return {"tokens": int(frame["tokens"].sum()), "assistant_tokens": int(frame["assistant_tokens"].sum())}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.splitlines()[0])
    ap.add_argument("--world", type=Path, default=Path("data/world"))
    ap.add_argument("--knows", type=Path, default=Path("data/eval/base/knows.parquet"),
                    help="the base model's self-consistency labels (used when sft.data.use_knows)")
    ap.add_argument("--tokenizer", type=Path, default=Path("data/tokenizer"))
    ap.add_argument("--out", type=Path, default=Path("data/sft"))
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = ap.parse_args(argv)
    p = load("sft", args.params)

    questions = pl.read_parquet(args.world / "questions.parquet")
    knows = None
    if p.data.use_knows:
        if not args.knows.exists():
            raise SystemExit(f"sft_data: {args.knows} not found; run the base model's eval (dvc repro eval@base) "
                             "or set sft.data.use_knows: false")
        knows = pl.read_parquet(args.knows)
        sft_known = knows.filter((pl.col("split") == "sft") & pl.col("known"))
        log.info("base model knows %d of %d probed sft-split facts (agreement >= threshold)",
                 int(sft_known["knows"].sum()), sft_known.height)
    people = pl.read_parquet(args.world / "kb.parquet", columns=["name"])["name"].to_list()
    questions = conversations.with_invented(questions, set(people), p.data.invented_people, p.data.seed,
                                           p.data.invented_names)
    table = conversations.build(questions, p.data, knows)
    tok = PreTrainedTokenizerFast.from_pretrained(args.tokenizer)

    stats = {}
    with atomic_dir(args.out) as tmp:
        for split in ("train", "val"):
            part = table.filter(pl.col("split") == split)
            if part.is_empty():
                raise SystemExit(f"sft_data: the {split} split is empty; raise sft.data.conversations "
                                 f"({p.data.conversations}) or adjust sft.data.val_fraction ({p.data.val_fraction})")
            stats[split] = check(part, questions, tok, p.max_length, p.data.answer_style, f"{args.out}/{split}.parquet")
            write_parquet(tmp / f"{split}.parquet", part)
        kinds = table.explode("kinds")["kinds"].value_counts().sort("kinds")
        summary = {"conversations": {s: table.filter(pl.col("split") == s).height for s in ("train", "val")},
                   "replies": dict(zip(kinds["kinds"].to_list(), kinds["count"].to_list(), strict=True)),
                   "turns_mean": float(table["kinds"].list.len().mean()), **{f"{s}_tokens": v for s, v in stats.items()}}
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    log.info("sft data: %s", json.dumps(summary, sort_keys=True))


if __name__ == "__main__":
    run(main)
