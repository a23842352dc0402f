"""Pretraining: trains, saves an HF model, resumes bitwise after SIGKILL, DDP matches one process, NaN stops."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from jielong import checkpoint

from .conftest import REPO, params_section, write_params

TINY = {
    "seed": 0, "max_steps": 30, "batch_size": 8, "grad_accum": 1, "lr": 3e-3, "warmup_steps": 5,
    "eval_every": 10, "eval_batches": 2, "log_every": 5, "checkpoint_every": 10, "threads": 1,
    "model": {"d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 64, "context": 32},
}


def params_file(root: Path, **overrides) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    return write_params(root / "params.yaml", {"pretrain": {**TINY, **overrides}})


def args(root: Path, tokens: Path, tok: Path, params: Path) -> list[str]:
    return ["--tokens", str(tokens), "--tokenizer", str(tok), "--out", str(root / "model"), "--work", str(root / "work"),
            "--metrics", str(root / "pretrain.json"), "--plots", str(root / "plots"), "--params", str(params)]


def launch(cmd: list[str]) -> subprocess.Popen:
    env = {**os.environ, "JIELONG_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_tokens_dir, tiny_tokenizer_dir) -> Path:
    root = tmp_path_factory.mktemp("pretrain")
    finish(launch([sys.executable, "-m", "stages.pretrain",
                   *args(root, tiny_tokens_dir, tiny_tokenizer_dir / "tok", params_file(root))]))
    return root


def test_trains_and_saves_a_standard_hf_model(trained):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    m = json.loads((trained / "pretrain.json").read_text())
    assert m["val_loss"] < m["val_loss_first"], "held-out loss must fall as training proceeds"
    assert m["steps"] == 30 and m["tokens"] == 30 * 8 * 32
    assert 0 < m["mfu"] < 1.5 and m["tokens_per_s"] > 0
    model = AutoModelForCausalLM.from_pretrained(trained / "model")
    tok = AutoTokenizer.from_pretrained(trained / "model")
    assert tok.chat_template and model.config.model_type == "llama"
    out = model.generate(**tok("Ada", return_tensors="pt"), max_new_tokens=5, do_sample=False)
    assert out.shape[1] > 1
    assert not list((trained / "model").glob("*.bin")), "weights are safetensors only"
    rows = (trained / "plots" / "train.csv").read_text().splitlines()
    assert rows[0] == "step,loss,lr,grad_norm,tokens_per_s" and len(rows) > 3


def test_a_saved_tokenizer_does_not_depend_on_how_the_hub_was_reached(tmp_path, tiny_tokenizer_dir):
    """HF_HUB_OFFLINE=1 (as the tests run) loads with local_files_only=True, and save_pretrained wrote it into
    tokenizer_config.json: the same stage run wrote a different model directory by environment."""
    from transformers import PreTrainedTokenizerFast

    from jielong.model import save_tokenizer

    saved = []
    for offline in (True, False):
        tok = PreTrainedTokenizerFast.from_pretrained(tiny_tokenizer_dir / "tok", local_files_only=offline)
        save_tokenizer(tok, tmp_path / str(offline))
        saved.append({f.name: f.read_bytes() for f in (tmp_path / str(offline)).iterdir()})
    assert saved[0] == saved[1] and b"local_files_only" not in saved[0]["tokenizer_config.json"]


def test_sigkill_then_rerun_resumes_and_matches_bitwise(trained, tmp_path, tiny_tokens_dir, tiny_tokenizer_dir):
    root = tmp_path / "killed"
    params = params_file(root, max_steps=30)
    cmd = [sys.executable, "-m", "stages.pretrain", *args(root, tiny_tokens_dir, tiny_tokenizer_dir / "tok", params)]
    proc = launch(cmd)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        latest = checkpoint.latest(root / "work" / next(iter(os.listdir(root / "work")), "x")) \
            if (root / "work").exists() and os.listdir(root / "work") else None
        if latest is not None:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (root / "model").exists(), "a killed run must not leave a final model"
    out = finish(launch(cmd))
    assert "resuming from" in out
    a = load_file(trained / "model" / "model.safetensors")
    b = load_file(root / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ma, mb = (json.loads((d / "pretrain.json").read_text()) for d in (trained, root))
    assert ma["train_loss"] == mb["train_loss"] and ma["val_loss"] == mb["val_loss"]


def test_ddp_two_processes_match_one_process(trained, tmp_path, tiny_tokens_dir, tiny_tokenizer_dir):
    root = tmp_path / "ddp"
    params = params_file(root, batch_size=4)  # 2 processes x 4 = the single run's global batch of 8
    finish(launch([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
                   "-m", "stages.pretrain", *args(root, tiny_tokens_dir, tiny_tokenizer_dir / "tok", params)]))
    m = json.loads((root / "pretrain.json").read_text())
    single = json.loads((trained / "pretrain.json").read_text())
    assert m["processes"] == 2 and m["tokens"] == single["tokens"]
    assert m["val_loss"] == pytest.approx(single["val_loss"], rel=1e-3)
    assert m["train_loss"] == pytest.approx(single["train_loss"], rel=1e-3)
    a = load_file(trained / "model" / "model.safetensors")
    b = load_file(root / "model" / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-3) for k in a)


def test_fsdp_two_processes_match_one_process_and_resume_from_sharded_checkpoints(trained, tmp_path, tiny_tokens_dir,
                                                                                 tiny_tokenizer_dir):
    """pretrain.parallel: fsdp under torchrun (gloo on CPU): the single run's losses, and a re-run with the
    final model gone resumes from the last sharded checkpoint and writes the same model bitwise."""
    root = tmp_path / "fsdp"
    params = params_file(root, batch_size=4, parallel="fsdp")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29519",
           "-m", "stages.pretrain", *args(root, tiny_tokens_dir, tiny_tokenizer_dir / "tok", params)]
    assert "(FSDP)" in finish(launch(cmd))
    m = json.loads((root / "pretrain.json").read_text())
    single = json.loads((trained / "pretrain.json").read_text())
    assert m["processes"] == 2 and m["tokens"] == single["tokens"] and m["params"] == single["params"]
    assert m["val_loss"] == pytest.approx(single["val_loss"], rel=1e-3)
    assert m["train_loss"] == pytest.approx(single["train_loss"], rel=1e-3)
    a, b = load_file(trained / "model" / "model.safetensors"), load_file(root / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-3) for k in a)
    work = next((root / "work").iterdir())
    assert sorted(f.name for f in checkpoint.latest(work).glob("model.*")) == [
        "model.rank0-of-2.safetensors", "model.rank1-of-2.safetensors"]

    first = b
    for out in ("model", "pretrain.json"):
        (root / out).rename(root / f"{out}.first")
    assert "resuming from" in finish(launch(cmd))
    resumed = load_file(root / "model" / "model.safetensors")
    assert all(torch.equal(first[k], resumed[k]) for k in first)
    with pytest.raises(ValueError, match="sharded over 2 processes.*--nproc_per_node 2"):
        model = torch.nn.Linear(2, 2)
        checkpoint.load(checkpoint.latest(work), model, torch.optim.AdamW(model.parameters()))


def test_nan_loss_stops_naming_the_step_and_saves_nothing_after(tmp_path, tiny_tokens_dir, tiny_tokenizer_dir):
    from stages.pretrain import main

    params = params_file(tmp_path, lr=1e30, warmup_steps=0, grad_clip=0.0, checkpoint_every=1, threads=0)
    with pytest.raises(FloatingPointError, match=r"at step \d+") as err:
        main(args(tmp_path, tiny_tokens_dir, tiny_tokenizer_dir / "tok", params))
    bad_step = int(str(err.value).split("at step ")[1].split(";")[0])
    work = next((tmp_path / "work").iterdir())
    saved = sorted(int(p.name.split("-")[1]) for p in work.glob("ckpt-*"))
    assert all(s <= bad_step for s in saved)
    assert not (tmp_path / "model").exists() and not (tmp_path / "pretrain.json").exists()


def test_pickle_checkpoint_is_refused(tmp_path):
    ckpt = tmp_path / "ckpt-0000010"
    ckpt.mkdir()
    torch.save({"w": torch.zeros(2)}, ckpt / "model.pt")
    (ckpt / "state.json").write_text("{}")
    (tmp_path / "latest").write_text(ckpt.name)
    model = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="pickle checkpoints are refused"):
        checkpoint.load(checkpoint.latest(tmp_path), model, torch.optim.AdamW(model.parameters()))


def test_lr_schedule_warms_up_then_decays():
    from stages.pretrain import lr_at

    p = params_section("pretrain", lr=1.0, warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    assert lr_at(0, p) == pytest.approx(0.1) and lr_at(9, p) == pytest.approx(1.0)
    assert lr_at(60, p) == pytest.approx(0.55) and lr_at(110, p) == pytest.approx(0.1)
