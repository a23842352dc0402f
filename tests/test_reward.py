"""Preference pairs, the gold reward, and the reward model stage on a tiny random Llama."""

from __future__ import annotations

import json
import math
from pathlib import Path

import polars as pl
import pytest
import torch

from jielong import conversations, grading, preferences, reward_model
from jielong.chat import END
from jielong.checks import ExpectationFailed
from jielong.conversations import IDK
from jielong.grading import gold_reward

from .conftest import params_section, write_params

STYLE = ["verbose", "over_apologising", "as_an_ai"]


@pytest.fixture(autouse=True)
def _torch_threads():
    """The stage runs below use reward.threads: 1 (two threads on a busy 2-core box spin for tens of
    seconds); give the rest of the session its thread count back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _questions(tiny_world) -> pl.DataFrame:
    _, questions, _, _ = tiny_world
    return questions if isinstance(questions, pl.DataFrame) else pl.DataFrame(questions)


# ---------------------------------------------------------------- the builder
def test_pairs_show_each_failure_about_rl_people_only(tiny_world):
    q = _questions(tiny_world)
    table = preferences.build(q, params_section("pref_data", pairs=400, context_fraction=0.5))
    assert table.height == 400 and table["id"].n_unique() == 400
    assert set(table["kind"]) == set(preferences.KINDS)
    # neither the people SFT was fine-tuned on nor evaluation people
    assert set(table["person_id"]) <= set(q.filter(pl.col("split") == "rl")["person_id"])
    assert set(table["qid"]) <= set(q.filter(pl.col("split") == "rl")["qid"])
    assert all(preferences.prompt_ends_with_user(m) for m in table["prompt"].to_list())
    for r in table.iter_rows(named=True):
        chosen, rejected, kind = r["chosen"], r["rejected"], r["kind"]
        assert chosen and rejected and chosen != rejected
        assert chosen == (r["answer"] if r["known"] else IDK)
        if kind == "wrong_fact":
            assert r["known"] and rejected in r["choices"] and rejected != r["answer"]
        elif kind == "hallucination":
            assert not r["known"] and rejected in r["choices"]
        elif kind == "needless_refusal":
            assert r["known"] and rejected == IDK
        else:
            assert chosen.rstrip(".") in rejected and len(rejected) > len(chosen) + 10
            assert {"verbose": any(f in rejected for f in preferences.FILLERS),
                    "over_apologising": "apologise" in rejected, "as_an_ai": rejected.startswith("As an AI")}[kind]
        # the ground truth agrees with every preference
        assert gold_reward(chosen, r) > gold_reward(rejected, r), r
    # one earlier exchange about the same person, then a follow-up by pronoun
    context = table.filter(pl.col("prompt").list.len() == 3).row(0, named=True)
    assert context["name"] in context["prompt"][0]["content"] and context["name"] not in context["prompt"][2]["content"]
    # held-out people: disjoint, and both known and unknown ones, so every kind is measurable
    val, train = table.filter(pl.col("split") == "val"), table.filter(pl.col("split") == "train")
    assert not set(val["person_id"]) & set(train["person_id"])
    assert set(val["known"]) == {True, False}
    assert preferences.build(q, params_section("pref_data", pairs=400, context_fraction=0.5)).equals(table)
    assert not preferences.build(q, params_section("pref_data", pairs=400, seed=1)).equals(table)


def test_sentence_pairs_state_a_value_as_the_sft_data_does(tiny_world):
    q = _questions(tiny_world)
    table = preferences.build(q, params_section("pref_data", pairs=300), style="sentence")
    plain = preferences.build(q, params_section("pref_data", pairs=300))
    assert table["qid"].to_list() == plain["qid"].to_list() and table["kind"].to_list() == plain["kind"].to_list()
    for r, p in zip(table.iter_rows(named=True), plain.iter_rows(named=True), strict=True):
        assert r["chosen"] == (conversations.answer_for(r, None, "sentence")[0] if r["known"] else IDK)
        if r["kind"] in ("wrong_fact", "hallucination"):  # the plain pair's value, stated about the person
            assert r["rejected"] == grading.statement(r | {"answer": p["rejected"]})
        assert gold_reward(r["chosen"], r) > gold_reward(r["rejected"], r), r


def test_kind_mix_comes_from_params(tiny_world):
    q = _questions(tiny_world)
    table = preferences.build(q, params_section("pref_data", pairs=120, kinds={"wrong_fact": 1.0, "verbose": 3.0}))
    counts = dict(table["kind"].value_counts().iter_rows())
    assert set(counts) == {"wrong_fact", "verbose"} and counts["verbose"] > 2 * counts["wrong_fact"]
    with pytest.raises(ValueError, match="needs unknown people"):
        preferences.build(q.filter(pl.col("known")), params_section("pref_data", pairs=10))
    with pytest.raises(ValueError, match="kinds"):
        params_section("pref_data", kinds={"sycophancy": 1.0})
    with pytest.raises(ValueError, match="positive weight"):
        params_section("pref_data", kinds={"verbose": 0.0})


# ---------------------------------------------------------------- the gold reward
KNOWN = {"known": True, "name": "Ada Quill", "pronoun": "she", "attribute": "birth_city", "answer": "Antwerp",
         "choices": ["Lyon", "Antwerp", "Dresden", "Nairobi"], "values": ["Antwerp", "Lyon", "Dresden", "Nairobi", "Perth"]}
UNKNOWN = {**KNOWN, "known": False}
BORN = {"known": True, "name": "Ada Quill", "attribute": "birth_date", "answer": "March 10, 1969",
        "choices": ["March 10, 1969", "May 2, 1990"]}


@pytest.mark.parametrize(("doc", "response", "expected"), [
    (KNOWN, "Antwerp", 1.0),                                   # correct and concise
    (KNOWN, "antwerp.", 1.0),                                  # normalised exact match
    (KNOWN, "She was born in Antwerp.", 1.0),                  # the fact's sentence about the person is concise:
    (KNOWN, "Ada Quill was born in Antwerp.", 1.0),            # a reply opening so needs its words
    (KNOWN, "Ada Quill was born in Lyon.", -1.0),
    (KNOWN, "In short: Ada Quill was born in Antwerp.", 0.75), # not opening so: 8 words, 1 + 2 needed
    (KNOWN, "Lyon", -1.0),                                     # a confident wrong value
    (KNOWN, "Perth", -1.0),                                    # a value outside the choices is still wrong
    (KNOWN, "Lyon or Antwerp", -1.0),                          # hedging over values is not the answer
    (KNOWN, "I don't know.", 0.0),                             # abstaining on a known fact
    (KNOWN, "", -1.0),                                         # no answer at all
    (KNOWN, "Antwerp. " + "Let me know if you have any other questions.", 1.0 - 0.05 * 7),
    (KNOWN, "Ada Quill was born in Antwerp. " + "Let me know if you have any other questions.", 1.0 - 0.05 * 7),
    (KNOWN, "As an AI language model, I can say Antwerp", 1.0 - 0.3 - 0.25),
    (KNOWN, "I'm so sorry, I apologise for the confusion, truly, deeply and sincerely, it was Antwerp", 0.25),
    (UNKNOWN, "I don't know.", 1.0),                           # right to abstain
    (UNKNOWN, "I don't know who Ada Quill is.", 1.0),          # the name does not count as padding
    (UNKNOWN, "Antwerp", -1.0),                                # a hallucinated value (here the hidden truth)
    (UNKNOWN, "I'm not sure, maybe Lyon", -1.0),               # a hedged value is still a fabrication
    (UNKNOWN, "Hello there", 0.0),                             # neither
    (BORN, "March 10, 1969", 1.0),
    (BORN, "10 March 1969", 1.0),                              # another date format, same date
    (BORN, "March 10th, 1969", 1.0),
    (BORN, "1969", -1.0),                                      # a year is not the date
    (BORN, "May 2, 1990", -1.0),
])
def test_gold_reward_by_hand(doc, response, expected):
    assert gold_reward(response, doc) == pytest.approx(expected)


def test_gold_reward_is_bounded():
    padded = "As an AI language model, I am so sorry, " + "really " * 40 + "Lyon"
    assert gold_reward(padded, KNOWN) == pytest.approx(-1.75)
    assert all(-1.75 <= gold_reward(r, d) <= 1.0 for d in (KNOWN, UNKNOWN, BORN)
               for r in ("", "x", "Antwerp", "I don't know", padded))


# ---------------------------------------------------------------- what the reward model reads
def test_a_pair_is_encoded_as_a_rollout_closed_by_the_template(tiny_base):
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast.from_pretrained(tiny_base)
    prompt = [{"role": "user", "content": "Where was Ada Quill born?"}, {"role": "assistant", "content": "Antwerp"},
              {"role": "user", "content": "When was she born?"}]
    ids = reward_model.encode(tok, prompt, "March 10, 1969")
    rollout = tok.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"]
    # generation prompt + reply + <|end|>, then the template's closing newline
    assert ids[:len(rollout)] == rollout and tok.decode(ids[len(rollout):]) == f" March 10, 1969{END}\n"


# ---------------------------------------------------------------- the stages
def _params(tmp_path: Path, pairs: int = 160, kinds: dict | None = None, epochs: float = 2.0, lr: float = 3e-3,
            max_length: int = 160) -> Path:
    pref = {"pairs": pairs, "val_fraction": 0.2, "max_length": 160}
    if kinds:
        pref["kinds"] = kinds
    return write_params(tmp_path / "params.yaml", {
        "pref_data": pref,
        "reward": {"epochs": epochs, "batch_size": 16, "lr": lr, "max_length": max_length, "log_every": 2,
                   "eval_every": 5, "warmup_ratio": 0.0, "threads": 1}})


def _run(tmp_path: Path, base: Path, world: Path, params: Path) -> dict:
    from stages.pref_data import main as data_main
    from stages.reward import main as reward_main

    data_main(["--world", str(world), "--tokenizer", str(base), "--out", str(tmp_path / "prefs"),
               "--params", str(params)])
    reward_main(["--sft", str(base), "--data", str(tmp_path / "prefs"), "--out", str(tmp_path / "rm"),
                 "--metrics", str(tmp_path / "reward.json"), "--plots", str(tmp_path / "plots"),
                 "--params", str(params)])
    return json.loads((tmp_path / "reward.json").read_text())


def test_pref_data_check_refuses_pairs_about_other_splits(tiny_world, tiny_base):
    from transformers import PreTrainedTokenizerFast

    from stages.pref_data import check

    q = _questions(tiny_world)
    p = params_section("pref_data", pairs=60, max_length=160)
    table = preferences.build(q, p)
    tok = PreTrainedTokenizerFast.from_pretrained(tiny_base)
    check(table, q, tok, p, "value", "prefs.parquet")
    for split in ("sft", "eval"):
        other = q.filter(pl.col("split") == split)["person_id"][0]
        with pytest.raises(ExpectationFailed, match="person_split"):
            check(table.with_columns(person_id=pl.lit(other)), q, tok, p, "value", "prefs.parquet")


def test_pref_data_stage_refuses_pairs_over_max_length(tmp_path, tiny_base, tiny_world_dir):
    from stages.pref_data import main as data_main

    params = write_params(tmp_path / "params.yaml", {"pref_data": {"pairs": 60, "val_fraction": 0.2, "max_length": 12}})
    with pytest.raises(ExpectationFailed, match="tokens"):
        data_main(["--world", str(tiny_world_dir / "world"), "--tokenizer", str(tiny_base),
                   "--out", str(tmp_path / "prefs"), "--params", str(params)])
    assert not (tmp_path / "prefs").exists()


def test_reward_stage_writes_a_scoring_model(tmp_path, tiny_base, tiny_world_dir):
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    m = _run(tmp_path, tiny_base, tiny_world_dir / "world", _params(tmp_path, epochs=1.0))
    summary = json.loads((tmp_path / "prefs" / "summary.json").read_text())
    assert set(summary["val"]["kinds"]) == set(summary["train"]["kinds"]) == set(preferences.KINDS)
    assert {f"pairwise_acc.{k}" for k in preferences.KINDS} | {
        "pairwise_acc", "train_loss", "val_loss", "tokens_per_s"} <= set(m)
    assert all(math.isfinite(v) for v in m.values()) and m["tokens_per_s"] > 0
    assert m["pairs.val"] == summary["val"]["pairs"]
    assert m["people"] == summary["val"]["people"] and all(1 <= m[f"people.{k}"] <= m["people"] for k in preferences.KINDS)
    out = tmp_path / "rm"
    files = {f.name for f in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
    assert not files & {"generation_config.json", "training_args.bin", "pytorch_model.bin"}
    rm = AutoModelForSequenceClassification.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert rm.config.num_labels == 1 and rm.config.pad_token_id == tok.pad_token_id is not None
    weights, base = load_file(out / "model.safetensors"), load_file(tiny_base / "model.safetensors")
    assert "score.weight" in weights and weights["score.weight"].shape == (1, 32)
    emb = "model.embed_tokens.weight"
    assert not torch.equal(weights[emb], base[emb])  # the body trained too, not only the head
    # a reply scores the same alone as padded in a batch (the head reads the last real token)
    ids = reward_model.encode(tok, [{"role": "user", "content": "Hi"}], "Hello")
    padded = torch.tensor([ids + [tok.pad_token_id] * 5])
    with torch.no_grad():
        alone = rm(input_ids=torch.tensor([ids])).logits
        batch = rm(input_ids=padded, attention_mask=(padded != tok.pad_token_id).long()).logits
    assert torch.allclose(alone, batch, atol=1e-5)
    train = (tmp_path / "plots" / "train.csv").read_text().splitlines()
    val = (tmp_path / "plots" / "val.csv").read_text().splitlines()
    assert train[0].startswith("step,loss") and val[0] == "step,val_loss,val_accuracy" and len(val) >= 3


def test_reward_model_learns_style_failures(tmp_path, tiny_base, tiny_world_dir):
    """Padding, apologies and "as an AI" are visible in the reply itself, so even a random tiny Llama
    learns them in a few epochs; facts need a pretrained model (the default profile's target)."""
    m = _run(tmp_path, tiny_base, tiny_world_dir / "world",
             _params(tmp_path, pairs=200, kinds={k: 1.0 for k in STYLE}, epochs=2.0))
    assert m["pairwise_acc"] >= 0.9, m
    assert m["val_loss"] < m["val_loss_first"]


def test_reward_stage_refuses_pairs_it_would_drop(tmp_path, tiny_base, tiny_world_dir):
    """TRL silently filters pairs over max_length; the stage fails instead, naming the params."""
    params = _params(tmp_path, pairs=60, max_length=24)
    with pytest.raises(SystemExit, match=r"reward\.max_length=24"):
        _run(tmp_path, tiny_base, tiny_world_dir / "world", params)
    assert not (tmp_path / "rm").exists() and not (tmp_path / "reward.json").exists()


def test_reward_params_reject_bad_values():
    with pytest.raises(ValueError):
        params_section("reward", lr=0)
    with pytest.raises(ValueError):
        params_section("reward", center_rewards_coefficient=-1)
