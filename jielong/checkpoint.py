"""Training checkpoints: safetensors for every tensor, JSON for the rest; never pickle.

A checkpoint is a directory ckpt-<step>/ holding model.safetensors, optimizer.safetensors,
optimizer.json (param-group hyperparameters), rng.safetensors and state.json (step, tokens seen,
history of logged rows). It is written under a temporary name and renamed, and `latest` is
updated after, so a kill at any moment leaves the previous checkpoint intact.

Under FSDP (pretrain.parallel: fsdp) no process holds the whole model: `save_sharded` has every
process write its own shards (model.rank<r>-of-<w>.safetensors, optimizer.rank<r>-of-<w>.*) into one
ckpt-<step>/, and `load_sharded` reads each process's back, so a resume needs the same process count.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from jielong.io import atomic_dir, atomic_file


def _local(t: torch.Tensor) -> torch.Tensor:
    """This process's shard of a sharded tensor (FSDP's DTensor), or the tensor itself."""
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{key}"] = _local(value).detach().cpu().contiguous()
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


def save_sharded(root: Path, step: int, model: torch.nn.Module, opt: torch.optim.Optimizer, state: dict, rank: int,
                 world: int, keep: int = 2) -> Path:
    """Every process writes its shards of the model and optimizer; rank 0 the RNG and state, then renames the
    whole directory into place and moves `latest`. Collective: every process calls it."""
    import torch.distributed as dist

    target, tmp = root / f"ckpt-{step:07d}", root / f".ckpt-{step:07d}.tmp"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    tag = f"rank{rank}-of-{world}"
    save_file({k: _local(v).detach().cpu().contiguous().clone() for k, v in model.state_dict().items()},
              tmp / f"model.{tag}.safetensors")
    tensors, meta = _optimizer_tensors(opt)
    save_file(tensors, tmp / f"optimizer.{tag}.safetensors")
    (tmp / f"optimizer.{tag}.json").write_text(json.dumps(meta))
    dist.barrier()
    if rank == 0:
        save_file({"torch": torch.get_rng_state()}, tmp / "rng.safetensors")
        (tmp / "state.json").write_text(json.dumps({**state, "step": step, "processes": world}))
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        with atomic_file(root / "latest") as pointer:
            pointer.write_text(target.name)
        for old in sorted(root.glob("ckpt-*"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return target


def load_sharded(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, rank: int, world: int) -> dict:
    """Restore this process's shards of model and optimizer from `path` (save_sharded's), and the RNG."""
    from torch.distributed.tensor import DTensor

    state = json.loads((path / "state.json").read_text())
    tag = f"rank{rank}-of-{world}"
    if state.get("processes") != world or not (path / f"model.{tag}.safetensors").exists():
        raise ValueError(f"{path}: a checkpoint of {state.get('processes', 'one')} process(es) (unsharded when one), "
                         f"resumed by {world}: run torchrun with --nproc_per_node {state.get('processes', 1)}, or "
                         "delete the work dir to start over")
    shards = load_file(path / f"model.{tag}.safetensors")
    with torch.no_grad():
        for key, value in model.state_dict().items():
            _local(value).copy_(shards[key])
    meta = json.loads((path / f"optimizer.{tag}.json").read_text())
    params = [p for group in opt.param_groups for p in group["params"]]
    restored: dict[int, dict] = {}
    for key, value in load_file(path / f"optimizer.{tag}.safetensors").items():
        idx, name = key.split(".", 1)
        param = params[int(idx)]
        if isinstance(param, DTensor) and value.shape == param.to_local().shape and name != "step":
            value = DTensor.from_local(value, param.device_mesh, param.placements, run_check=False,
                                       shape=param.shape, stride=param.stride())
        restored.setdefault(int(idx), {})[name] = value
    for key, value in meta["scalars"].items():
        idx, name = key.split(".", 1)
        restored.setdefault(int(idx), {})[name] = value
    opt.load_state_dict({"state": restored, "param_groups": meta["param_groups"]})
    torch.set_rng_state(load_file(path / "rng.safetensors")["torch"])
    return state


def latest(root: Path) -> Path | None:
    pointer = root / "latest"
    if not pointer.exists():
        return None
    path = root / pointer.read_text().strip()
    return path if (path / "state.json").exists() else None


def load(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict:
    """Restore model, optimizer and RNG from `path`; returns the saved state (step, history, ...)."""
    sharded = sorted(p.name for p in path.glob("model.rank*.safetensors"))
    if sharded:
        raise ValueError(f"{path}: an FSDP checkpoint sharded over {len(sharded)} processes ({sharded[0]} ...), "
                         f"resumed by one: run torchrun with --nproc_per_node {len(sharded)}, or delete the work dir")
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
