"""The tiny profile's `dvc repro`, built once per test run and copied for each end-to-end test file.

`built_tiny_repo` (conftest) builds it under a folder the pytest-xdist workers share, behind a file
lock: the first worker to ask builds it, another waits for it. Each file then works in its own copy
(conftest's `tiny_repo`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent

# planted in the environment of every `dvc repro` here: none may reach dvc.lock, metrics, plots or logs
SECRETS = {"HF_TOKEN": "hf_jielongTestSecret0001", "AWS_SECRET_ACCESS_KEY": "jielongTestSecret0002",
           "WANDB_API_KEY": "jielongTestSecret0003", "OPENAI_API_KEY": "sk-jielongTestSecret0004"}


def env() -> dict:
    out = dict(os.environ) | SECRETS
    # the copy's dvc.yaml runs `python -m stages.<name>`: make it this interpreter
    out["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{out['PATH']}"
    out.update(HF_HUB_OFFLINE="1", JIELONG_PROGRESS="0", DVC_NO_ANALYTICS="1")
    return out


def run(cmd: list[str], cwd: Path) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def copy_repo(dest: Path) -> Path:
    """Tracked and untracked-but-not-ignored files only: what a fresh clone (plus work in progress) holds."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, files):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    run(["git", "init", "-q"], dest)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "add", "-A"], dest)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "copy"], dest)
    return dest


def build(dest: Path) -> Path:
    """A copy of the repository with the tiny profile applied and reproduced."""
    dest.mkdir(parents=True)
    copy_repo(dest)
    run([sys.executable, "-m", "jielong.profile", "tiny"], dest)
    (dest / "repro.log").write_text(run(["dvc", "repro"], dest))  # untracked: for the secrets test
    return dest


def copy_built(built: Path, dest: Path) -> Path:
    """The built repo, its DVC cache, work folders and git history included; times kept, so DVC finds
    its outputs unchanged."""
    shutil.copytree(built, dest, symlinks=True)
    return dest


WORK_DIRS = ("data/corpus-work", "data/pretrain_work", "data/eval_work")


def output_hashes(repo: Path) -> dict[str, str]:
    """Every stage output's hash in dvc.lock, less the metrics, plots and report (they record wall times
    and throughput, which differ on every run by nature) and the resumable work folders (scratch whose
    logs hold timings; the products made from them are compared)."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    return {o["path"]: o.get("md5") or o.get("hash") for st in lock.values() for o in st.get("outs", [])
            if not o["path"].startswith(("metrics/", "plots/", "report", *WORK_DIRS))}


def ran(out: str) -> set[str]:
    return {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
