"""End to end, on a copy of the tiny profile's built repo: every deterministic stage, forced to run
again, writes the same bytes."""

from __future__ import annotations

import pytest

from .repro import output_hashes, ran, run

pytestmark = pytest.mark.e2e


DETERMINISTIC = ["world", "decontam", "tokenizer", "tokens", "sft_data", "sft", "pref_data", "reward", "dpo", "ppo",
                 "eval@sft", "report"]  # corpus, pretrain, eval@base: killed and resumed in test_e2e_kills.py


def test_forced_reruns_give_identicaloutput_hashes(tiny_repo):
    before = output_hashes(tiny_repo)
    # one dvc process for all of them (dvc's own start-up is seconds); the changed outputs name the stage
    out = run(["dvc", "repro", "-f", "-s", *DETERMINISTIC], tiny_repo)
    assert ran(out) == set(DETERMINISTIC), out
    changed = {k for k, v in output_hashes(tiny_repo).items() if before.get(k) != v}
    assert not changed, f"forced re-runs of {DETERMINISTIC} changed {changed}"
