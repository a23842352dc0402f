"""Build the preference pairs for the reward model and DPO from the world's question bank (jielong/preferences.py).

    python -m stages.pref_data --world data/world --tokenizer data/tokenizer --out data/prefs

Writes data/prefs/{train,val}.parquet: `prompt` (chat messages ending on the user), `chosen` and
`rejected` replies (plain strings), the failure `kind` of the rejected one, the person and question
(with `known`, `attribute`, `answer`, `choices`, the fields the gold reward reads) and a summary.json
with counts per kind. Train and val hold different people. Checked before the stage succeeds:
chosen and rejected differ and are non-empty, the chosen reply is the KB fact as the SFT data states
it (`sft.data.answer_style`; "I do not know." for an unknown person), only rl-split people appear,
every failure kind of the mix is in both splits, each prompt ends on a user turn, prompt + reply
tokenise within pref_data.max_length (as the reward model reads them, jielong/reward_model.py), and
the gold reward (jielong/grading.py) prefers every chosen reply to its rejected one.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import polars as pl

from jielong import grading, preferences, reward_model, templates
from jielong.checks import expect, gx
from jielong.io import atomic_dir, write_parquet
from jielong.log import get_logger, run
from jielong.params import load_all

log = get_logger("pref_data")


def check(table: pl.DataFrame, questions: pl.DataFrame, tok, p, style: str, label: str) -> dict:
    """The artifact's expectations; returns token counts for the summary."""
    split_of = dict(zip(questions["person_id"].to_list(), questions["split"].to_list(), strict=False))
    rows = []
    for r in table.iter_rows(named=True):
        length = {side: len(reward_model.encode(tok, r["prompt"], r[side])) for side in ("chosen", "rejected")}
        rows.append({
            "id": r["id"], "kind": r["kind"], "chosen_len": len(r["chosen"].strip()),
            "rejected_len": len(r["rejected"].strip()), "differs": r["chosen"] != r["rejected"],
            # the KB value (by the grader's exact match), stated as the style says; or the abstention
            "chosen_true": (grading.is_correct(r["chosen"], r) and r["chosen"].startswith(r["name"] + " ")
                            == (style == "sentence")) if r["known"] else r["chosen"] == preferences.IDK,
            "person_split": split_of.get(r["person_id"], "missing"),
            "ends_with_user": preferences.prompt_ends_with_user(r["prompt"]),
            "tokens": max(length.values()), "tokens_chosen": length["chosen"], "tokens_rejected": length["rejected"],
            "gold_agrees": grading.gold_reward(r["chosen"], r) > grading.gold_reward(r["rejected"], r),
        })
    frame = pl.DataFrame(rows).to_pandas()
    kinds = [k for k in preferences.KINDS if p.kinds.get(k, 0) > 0]
    expect(label, frame, [
        gx.expectations.ExpectColumnValuesToBeUnique(column="id"),
        gx.expectations.ExpectColumnValuesToBeInSet(column="differs", value_set=[True]),
        gx.expectations.ExpectColumnValuesToBeBetween(column="chosen_len", min_value=1),
        gx.expectations.ExpectColumnValuesToBeBetween(column="rejected_len", min_value=1),
        gx.expectations.ExpectColumnValuesToBeInSet(column="chosen_true", value_set=[True]),
        gx.expectations.ExpectColumnValuesToBeInSet(column="person_split", value_set=["rl"]),
        gx.expectations.ExpectColumnValuesToBeInSet(column="kind", value_set=kinds),
        gx.expectations.ExpectColumnDistinctValuesToContainSet(column="kind", value_set=kinds),
        gx.expectations.ExpectColumnValuesToBeInSet(column="ends_with_user", value_set=[True]),
        gx.expectations.ExpectColumnValuesToBeBetween(column="tokens", max_value=p.max_length),
        gx.expectations.ExpectColumnValuesToBeInSet(column="gold_agrees", value_set=[True]),
    ])
    return {"tokens_chosen": int(frame["tokens_chosen"].sum()), "tokens_rejected": int(frame["tokens_rejected"].sum()),
            "tokens_max": int(frame["tokens"].max())}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.splitlines()[0])
    ap.add_argument("--world", type=Path, default=Path("data/world"))
    ap.add_argument("--tokenizer", type=Path, default=Path("data/tokenizer"))
    ap.add_argument("--out", type=Path, default=Path("data/prefs"))
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = ap.parse_args(argv)
    params = load_all(args.params)
    p, style = params.pref_data, params.sft.data.answer_style  # the pairs answer as the SFT model was taught to

    questions = pl.read_parquet(args.world / "questions.parquet")
    table = preferences.build(questions, p, style)
    tok = templates.chat_tokenizer(args.tokenizer, "pref_data", "the tokenizer stage's dir expected")

    summary = {}
    with atomic_dir(args.out) as tmp:
        for split in ("train", "val"):
            part = table.filter(pl.col("split") == split)
            if part.is_empty():
                raise SystemExit(f"pref_data: the {split} split is empty; raise pref_data.pairs ({p.pairs}) or "
                                 f"adjust pref_data.val_fraction ({p.val_fraction})")
            tokens = check(part, questions, tok, p, style, f"{args.out}/{split}.parquet")
            kinds = part["kind"].value_counts().sort("kind")
            summary[split] = {"pairs": part.height, "people": part["person_id"].n_unique(),
                              "kinds": dict(zip(kinds["kind"].to_list(), kinds["count"].to_list(), strict=True)),
                              "with_context": int((part["prompt"].list.len() > 1).sum()), **tokens}
            write_parquet(tmp / f"{split}.parquet", part)
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    log.info("pref data: %s", json.dumps(summary, sort_keys=True))


if __name__ == "__main__":
    run(main)
