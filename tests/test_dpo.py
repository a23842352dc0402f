"""DPO: TRL's DPOTrainer from a chat model on the judged on-policy pairs; gold reward before and after."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from jielong.chat import END

from .conftest import write_params


@pytest.fixture
def chat_model(tmp_path, tiny_base) -> Path:
    """The tiny random model as a chat model: EOS <|end|>, as the sft stage saves it."""
    out = shutil.copytree(tiny_base, tmp_path / "sft")
    tok = AutoTokenizer.from_pretrained(out)
    tok.eos_token = END
    tok.save_pretrained(out)
    return out


def test_dpo_stage_writes_a_policy_and_its_gold_reward(tmp_path, chat_model, tiny_world_dir):
    from stages.dpo import main as dpo_main
    from stages.pref_data import main as data_main
    from stages.samples import main as samples_main

    params = write_params(tmp_path / "params.yaml", {
        "pref_data": {"pairs": 120, "val_fraction": 0.2, "max_length": 160},
        "samples": {"n": 3, "max_new_tokens": 8},
        "dpo": {"epochs": 1.0, "batch_size": 16, "lr": 1e-3, "max_length": 160, "log_every": 2, "eval_every": 3,
                "gold_max_new_tokens": 6, "threads": 1}})
    threads = torch.get_num_threads()
    try:
        data_main(["--world", str(tiny_world_dir / "world"), "--tokenizer", str(chat_model),
                   "--out", str(tmp_path / "prefs"), "--params", str(params)])
        samples_main(["--sft", str(chat_model), "--world", str(tiny_world_dir / "world"), "--prefs", str(tmp_path / "prefs"),
                      "--out", str(tmp_path / "samples"), "--metrics", str(tmp_path / "samples.json"),
                      "--params", str(params)])
        dpo_main(["--sft", str(chat_model), "--data", str(tmp_path / "samples"), "--world", str(tiny_world_dir / "world"),
                  "--out", str(tmp_path / "dpo"), "--metrics", str(tmp_path / "dpo.json"),
                  "--plots", str(tmp_path / "plots"), "--params", str(params)])
    finally:
        torch.set_num_threads(threads)
    m = json.loads((tmp_path / "dpo.json").read_text())
    assert {"gold_reward", "gold_reward_sft", "val_accuracy", "val_loss", "pairs_per_s"} <= set(m)
    assert -1.75 <= m["gold_reward"] <= 1 and m["steps"] >= 1
    files = {f.name for f in (tmp_path / "dpo").iterdir()}
    assert {"model.safetensors", "generation_config.json", "tokenizer.json"} <= files
    assert AutoTokenizer.from_pretrained(tmp_path / "dpo").eos_token == END
    assert (tmp_path / "plots" / "train.csv").read_text().startswith("step,loss,margin,accuracy")


def test_dpo_refuses_pairs_about_people_outside_the_rl_split(tmp_path, tiny_world_dir):
    import polars as pl

    from jielong.onpolicy import refuse_other_splits

    q = pl.read_parquet(tiny_world_dir / "world" / "questions.parquet")
    rl = q.filter(pl.col("split") == "rl")["person_id"].unique().sort().to_list()
    pl.DataFrame({"person_id": rl}).write_parquet(tmp_path / "train.parquet")
    refuse_other_splits("dpo", q, [tmp_path / "train.parquet"])  # rl people only: accepted
    for split in ("sft", "eval"):
        other = q.filter(pl.col("split") == split)["person_id"][0]
        pl.DataFrame({"person_id": [*rl, other]}).write_parquet(tmp_path / "val.parquet")
        with pytest.raises(SystemExit, match=rf"val.parquet has data about people outside the rl split \(1, e.g. {other} \({split}\)\)"):
            refuse_other_splits("dpo", q, [tmp_path / "train.parquet", tmp_path / "val.parquet"])
