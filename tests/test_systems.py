"""Systems (jielong/systems.py): a wrapper decides a model's generated replies inside lm-eval; likelihoods
pass through. A toy wrapper on a tiny chat model, evaluated by the eval stage next to the model alone."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from jielong import systems
from stages.eval import main as eval_main

from .conftest import write_params
from .test_eval import build_tiny_model

REPO = Path(__file__).resolve().parent.parent


class Refuser:
    """Says "I do not know." to every question it sees asked, recording what it was given."""

    def __init__(self, artifact: Path, model_dir: Path):
        self.artifact, self.model_dir, self.seen = artifact, model_dir, []

    def answer(self, lm, asked):
        own = lm.model_replies(asked)
        self.seen += [(a, r) for a, r in zip(asked, own, strict=True)]
        return ["I do not know." for _ in asked]


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory, tiny_crawl_corpus_dir) -> Path:
    from transformers import AutoTokenizer

    from jielong.chat import END

    texts = pl.read_parquet(next(tiny_crawl_corpus_dir.glob("*.parquet")))["text"].to_list()
    out = build_tiny_model(tmp_path_factory.mktemp("models") / "sft", texts)
    tok = AutoTokenizer.from_pretrained(out)
    tok.eos_token = END  # what SFT writes: a chat model
    tok.save_pretrained(out)
    return out


def _eval(tmp_path: Path, model: Path, evals: Path, name: str, *extra: str) -> dict:
    params = write_params(tmp_path / "params.yaml", {"eval": {
        "limit": 4, "batch_size": 8, "bootstrap_iters": 0, "tasks": ["world_facts_mc", "world_unknown", "world_known"],
        "extra_tasks": {}}})
    eval_main(["--model", str(model), "--name", name, "--evals", str(evals), "--tasks", str(REPO / "evals" / "tasks"),
               "--out", str(tmp_path / f"{name}.json"), "--samples", str(tmp_path / name),
               "--items", str(tmp_path / "items" / f"{name}.json"), "--work", str(tmp_path / "work" / name),
               "--params", str(params), *extra])
    return json.loads((tmp_path / f"{name}.json").read_text())


def test_a_system_decides_what_is_said_and_leaves_likelihoods_to_the_model(tmp_path, chat_model, tiny_decontam_dir,
                                                                          monkeypatch):
    made = []
    monkeypatch.setitem(systems.WRAPPERS, "refuser", lambda artifact, model: made.append(Refuser(artifact, model))
                        or made[-1])
    artifact = tmp_path / "refuser-artifact"
    artifact.mkdir()
    evals = tiny_decontam_dir / "evals"
    alone = _eval(tmp_path, chat_model, evals, "sft")
    system = _eval(tmp_path, chat_model, evals, "sft-refusing", "--wrapper", "refuser", "--artifact", str(artifact))

    assert system["world_facts_mc.acc"] == alone["world_facts_mc.acc"]  # likelihoods: the model's own
    assert system["world_unknown.abstain_rate"] == system["world_known.false_abstain_rate"] == 1.0
    (wrapper,) = made
    assert wrapper.artifact == artifact and wrapper.model_dir == chat_model
    # the wrapper saw each question as the user asked it, and the model alone's replies
    samples = [json.loads(line) for line in (tmp_path / "sft" / "samples" / "world_unknown.jsonl").open()]
    questions = {a.question for a, _ in wrapper.seen}
    assert {s["doc"]["question"] for s in samples} <= questions
    alone_replies = {s["arguments"][0][0]: s["resps"][0][0] for s in samples}
    assert all(alone_replies[a.context] == r for a, r in wrapper.seen if a.context in alone_replies)
    assert all(a.context.endswith("<|assistant|> A:") and a.gen_kwargs["until"] for a, _ in wrapper.seen)


def test_unknown_wrapper_and_half_given_flags_fail_clearly(tmp_path, chat_model, tiny_decontam_dir):
    with pytest.raises(SystemExit, match=r"unknown wrapper 'nope'.*known"):
        _eval(tmp_path, chat_model, tiny_decontam_dir / "evals", "x", "--wrapper", "nope", "--artifact", str(tmp_path))
    with pytest.raises(SystemExit, match="--wrapper and --artifact go together"):
        _eval(tmp_path, chat_model, tiny_decontam_dir / "evals", "x", "--wrapper", "gate")


def test_a_system_needs_a_name_of_its_own(tmp_path):
    from jielong.params import ParamsError, load_all

    p = write_params(tmp_path / "params.yaml", {"eval": {"systems": {
        "sft": {"model": "sft", "wrapper": "gate", "artifact": "sft-gate", "options": {}}}}})
    with pytest.raises(ParamsError, match=r"eval.systems.sft: also a name in eval.models"):
        load_all(p)
    p = write_params(tmp_path / "params.yaml", {"eval": {"systems": {
        "g": {"model": "../sft", "wrapper": "gate", "artifact": "sft-gate", "options": {}}}}})
    with pytest.raises(ParamsError, match=r"eval.systems.g.model = '../sft'"):
        load_all(p)
