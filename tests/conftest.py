"""Shared fixtures: the tiny profile's params, a tiny world built once per session."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("JIELONG_PROGRESS", "0")

from jielong.params import Params  # noqa: E402
from jielong.profile import merge  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def tiny_params() -> Params:
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    tiny = yaml.safe_load((REPO / "profiles" / "tiny.yaml").read_text())
    return Params.model_validate(merge(base, tiny))


@pytest.fixture(scope="session")
def tiny() -> Params:
    return tiny_params()


@pytest.fixture(scope="session")
def tiny_world(tiny):
    """(people, questions, records, heldout) of the tiny world, built in memory."""
    from stages.world import build

    _, people, questions, records, heldout = build(tiny.world)
    return people, questions, records, heldout


@pytest.fixture(scope="session")
def tiny_world_dir(tmp_path_factory, tiny) -> Path:
    """The tiny world written to disk by the stage's own main()."""
    from stages.world import main

    root = tmp_path_factory.mktemp("world")
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump(tiny.model_dump(mode="json")))
    main(["--out", str(root / "world"), "--metrics", str(root / "world.json"), "--params", str(params)])
    return root


__all__ = ["REPO", "random", "tiny_params"]
