"""KTO and GRPO pieces that need no training run (the tiny-profile repro trains both: tests/test_e2e.py)."""

from __future__ import annotations

import json

import polars as pl
import pytest

from jielong.checks import ExpectationFailed
from jielong.grading import gold_reward


def test_kto_refuses_labels_of_one_kind_naming_the_file():
    from stages.kto import check

    ok = pl.DataFrame({"label": [True, False, True], "completion": ["Lyon.", "Paris.", "I don't know."]})
    check(ok, "labels.parquet (train rows)")
    with pytest.raises(ExpectationFailed, match=r"labels.parquet \(val rows\)"):
        check(ok.with_columns(label=pl.lit(True)), "labels.parquet (val rows)")
    with pytest.raises(ExpectationFailed, match="completion"):
        check(ok.with_columns(completion=pl.Series(["Lyon.", None, "x"])), "labels.parquet (train rows)")


def test_kto_data_is_the_judged_labels_plus_each_scripted_pair_unpacked():
    from stages.kto import unpaired

    prompt = [{"role": "user", "content": "Where was Ada born?"}]
    labels = pl.DataFrame({"person_id": ["k1", "k1"], "qid": ["q", "q"], "prompt": [prompt, prompt],
                           "completion": ["x", "y"], "label": [False, False], "score": [-1.0, -1.5],
                           "category": ["non_answer"] * 2, "split": ["train", "train"]})
    pairs = pl.DataFrame({"person_id": ["k1", "k2"], "qid": ["q", "r"], "prompt": [prompt, prompt],
                          "chosen": ["x", "Lyon."], "rejected": ["y", "Porto."], "split": ["train", "val"],
                          "chosen_score": [-1.0, None], "kind": ["policy_non_answer", "wrong_fact"]})
    data = unpaired(labels, pairs)
    # the on-policy pair is already in the labels; the scripted one adds a good and a bad reply
    assert data.height == 4
    assert data.filter(pl.col("person_id") == "k2").sort("label").select("completion", "label", "split").rows() == [
        ("Porto.", False, "val"), ("Lyon.", True, "val")]


def test_kto_refuses_labels_about_people_outside_the_rl_split(tmp_path, tiny_world_dir):
    from jielong.onpolicy import refuse_other_splits

    q = pl.read_parquet(tiny_world_dir / "world" / "questions.parquet")
    other = q.filter(pl.col("split") == "eval")["person_id"][0]
    pl.DataFrame({"person_id": [other]}).write_parquet(tmp_path / "labels.parquet")
    with pytest.raises(SystemExit, match=rf"kto: .*labels.parquet has data about people outside the rl split .*{other} \(eval\)"):
        refuse_other_splits("kto", q, [tmp_path / "labels.parquet"])


def test_grpo_gold_reward_reads_each_reply_against_its_own_question():
    from stages.grpo import gold

    known = {"known": True, "attribute": "birth_city", "answer": "Lyon", "name": "Ada Vale", "values": ["Lyon", "Paris"]}
    unknown = {"known": False, "attribute": "birth_city", "answer": "", "name": "Bo Quill", "values": ["Lyon", "Paris"]}
    docs = [json.dumps(known), json.dumps(unknown), json.dumps(known)]
    replies = [[{"role": "assistant", "content": " Ada Vale was born in Lyon."}],
               [{"role": "assistant", "content": " I don't know who Bo Quill is."}],
               [{"role": "assistant", "content": " Ada Vale was born in Paris."}]]
    got = gold(prompts=[[]] * 3, completions=replies, doc=docs)
    assert got == [gold_reward("Ada Vale was born in Lyon.", known),
                   gold_reward("I don't know who Bo Quill is.", unknown),
                   gold_reward("Ada Vale was born in Paris.", known)]
    assert got[0] > 0 and got[1] > 0 and got[2] < 0  # right fact, right abstention, wrong fact


@pytest.mark.parametrize(("reward", "weights"), [("model", [1.0, 0.0]), ("judge", [0.0, 1.0]), ("sum", [1.0, 1.0])])
def test_grpo_trains_on_the_reward_params_name_and_logs_both(reward, weights):
    from stages.grpo import WEIGHTS

    assert WEIGHTS[reward] == weights  # [reward model, gold]: both computed, the unused one with weight 0


def test_grpo_batch_must_hold_whole_groups(tmp_path):
    from jielong.params import ParamsError, load

    from .conftest import write_params

    path = write_params(tmp_path / "params.yaml", {"grpo": {"batch_size": 10, "group_size": 4}})
    with pytest.raises(ParamsError, match=r"grpo: batch_size \(10\) is not a multiple of group_size \(4\)"):
        load("grpo", path)
