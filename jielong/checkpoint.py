"""Training checkpoints: safetensors for every tensor, JSON for the rest; never pickle.

A checkpoint is a directory ckpt-<step>/ holding model.safetensors, optimizer.safetensors,
optimizer.json (param-group hyperparameters), rng.safetensors and state.json (step, tokens seen,
history of logged rows). It is written under a temporary name and renamed, and `latest` is
updated after, so a kill at any moment leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from jielong.io import atomic_dir, atomic_file


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def save(root: Path, step: int, model: torch.nn.Module, opt: torch.optim.Optimizer, state: dict, keep: int = 2) -> Path:
    target = root / f"ckpt-{step:07d}"
    with atomic_dir(target) as tmp:
        weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        # tied embeddings share storage; safetensors refuses shared tensors, so store each name's own copy
        save_file({k: v.clone() for k, v in weights.items()}, tmp / "model.safetensors")
        tensors, meta = _optimizer_tensors(opt)
        save_file(tensors, tmp / "optimizer.safetensors")
        (tmp / "optimizer.json").write_text(json.dumps(meta))
        save_file({"torch": torch.get_rng_state()}, tmp / "rng.safetensors")
        (tmp / "state.json").write_text(json.dumps({**state, "step": step}))
    with atomic_file(root / "latest") as tmp:
        tmp.write_text(target.name)
    for old in sorted(root.glob("ckpt-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def latest(root: Path) -> Path | None:
    pointer = root / "latest"
    if not pointer.exists():
        return None
    path = root / pointer.read_text().strip()
    return path if (path / "state.json").exists() else None


def load(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict:
    """Restore model, optimizer and RNG from `path`; returns the saved state (step, history, ...)."""
    for name in ("model", "optimizer", "rng"):
        if not (path / f"{name}.safetensors").exists():
            pickled = [p.name for p in path.iterdir() if p.suffix in (".pt", ".pth", ".bin", ".pkl")]
            raise ValueError(f"{path}: no {name}.safetensors (found {pickled or 'nothing'}); "
                             "pickle checkpoints are refused")
    model.load_state_dict(load_file(path / "model.safetensors"))
    meta = json.loads((path / "optimizer.json").read_text())
    tensors = load_file(path / "optimizer.safetensors")
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    for key, value in meta["scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    torch.set_rng_state(load_file(path / "rng.safetensors")["torch"])
    return json.loads((path / "state.json").read_text())
