"""Shared fixtures: the tiny profile's params, a tiny world built once per session."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("JIELONG_PROGRESS", "0")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # one torch thread per pytest-xdist worker (and per stage a test starts): two workers of two threads
    # each on two cores spent more CPU time than they saved
    os.environ.setdefault("OMP_NUM_THREADS", "1")

from pydantic import BaseModel  # noqa: E402

from jielong.params import Params  # noqa: E402
from jielong.profile import merge  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- params.yaml with a few knobs changed
def override(model: type[BaseModel], raw: dict, overrides: dict) -> dict:
    """`overrides` over `raw`, a section of `model`: a nested section merges, any other knob (a dict
    of kinds or metrics included) is replaced whole, as a keyword argument to the model would be."""
    out = dict(raw)
    for key, value in overrides.items():
        field = model.model_fields.get(key)
        sub = field.annotation if field is not None else None
        if isinstance(value, dict) and isinstance(raw.get(key), dict) and isinstance(sub, type) \
                and issubclass(sub, BaseModel):
            out[key] = override(sub, raw[key], value)
        else:
            out[key] = value
    return out


def default_params(overrides: dict | None = None) -> dict:
    """The repository's params.yaml as a dict, with `overrides` ({section: {knob: value}}) over it."""
    return override(Params, yaml.safe_load((REPO / "params.yaml").read_text()), overrides or {})


def write_params(path: Path, overrides: dict | None = None) -> Path:
    """A complete params file for a stage's --params: params.yaml with `overrides` over it."""
    path.write_text(yaml.safe_dump(default_params(overrides), sort_keys=False))
    return path


def params_section(dotted: str, **overrides):
    """params.yaml's section `dotted` (e.g. "sft.data") with `overrides`, validated as load() validates
    it: every knob a test does not name keeps the default profile's value, never a copy of it."""
    model, raw = Params, default_params()
    for key in dotted.split("."):
        model, raw = model.model_fields[key].annotation, raw[key]
    return model.model_validate(override(model, raw, overrides))


def tiny_params() -> Params:
    tiny = yaml.safe_load((REPO / "profiles" / "tiny.yaml").read_text())
    return Params.model_validate(merge(default_params(), tiny))  # as `python -m jielong.profile tiny` does


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


# pytest-xdist hands out test files in this order (addopts: --no-loadscope-reorder), one at a time as a
# worker runs low: test_e2e.py first, whose worker builds the tiny repo (the suite's longest step), while
# the other worker takes the slow unit files; then the files that work on copies of the build, which by
# then is done; the quick unit files last, so that the two workers end together
FILE_ORDER = {"test_e2e.py": 0, **dict.fromkeys(["test_corpus.py", "test_pretrain.py", "test_samples.py", "test_eval.py",
                                                 "test_benchmarks.py", "test_finetune.py"], 1),
              "test_e2e_kills.py": 2, "test_e2e_forced.py": 3, "test_e2e_params.py": 4}


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: FILE_ORDER.get(item.path.name, 5))


@pytest.fixture(scope="session")
def built_tiny_repo(tmp_path_factory, worker_id) -> Path:
    """The tiny profile's `dvc repro` in a copy of the repository, built once per test run (tests/repro.py)."""
    from filelock import FileLock

    from .repro import build

    # under pytest-xdist each worker's base temp is a folder of this run's; their parent is shared
    base = tmp_path_factory.getbasetemp()
    shared = base if worker_id == "master" else base.parent
    repo, done = shared / "tiny-repo", shared / "tiny-repo.built"
    with FileLock(str(shared / "tiny-repo.lock")):
        if not done.exists():
            if repo.exists():  # a build that failed in another worker: start it again
                shutil.rmtree(repo)
            build(repo)
            done.touch()
    return repo


@pytest.fixture(scope="module")
def tiny_repo(built_tiny_repo, tmp_path_factory) -> Path:
    """This test file's own copy of the built tiny repo: one file's forced re-runs and kills never
    meet another's reads."""
    from .repro import copy_built

    return copy_built(built_tiny_repo, tmp_path_factory.mktemp("e2e") / "repo")


__all__ = ["REPO", "default_params", "params_section", "random", "tiny_params", "write_params"]


# ---------------------------------------------------------------- training fixtures
@pytest.fixture(scope="session")
def tiny_corpus_dir(tmp_path_factory, tiny_world) -> Path:
    """A documents Parquet (the corpus contract) made straight from the tiny world's clean pages."""
    import polars as pl

    _, _, records, _ = tiny_world
    rows = [{"id": f"doc-{i:05d}", "text": r.page.text, "url": r.page.url, "language": r.page.language}
            for i, r in enumerate(records) if r.kind in ("good", "article", "pii")]
    root = tmp_path_factory.mktemp("corpus")
    pl.DataFrame(rows).write_parquet(root / "part-00000.parquet")
    return root


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory, tiny_corpus_dir) -> Path:
    from stages.tokenizer import main as tokenizer_main

    root = tmp_path_factory.mktemp("tokenizer")
    params = write_params(root / "params.yaml", {"tokenizer": {"vocab_size": 1024, "heldout_fraction": 0.05}})
    tokenizer_main(["--corpus", str(tiny_corpus_dir), "--out", str(root / "tok"),
                    "--metrics", str(root / "tokenizer.json"), "--params", str(params)])
    return root


@pytest.fixture(scope="session")
def tiny_tokens_dir(tmp_path_factory, tiny_corpus_dir, tiny_tokenizer_dir) -> Path:
    from stages.tokens import main as tokens_main

    root = tmp_path_factory.mktemp("tokens")
    params = write_params(root / "params.yaml", {"tokens": {"val_fraction": 0.1}})
    tokens_main(["--corpus", str(tiny_corpus_dir), "--tokenizer", str(tiny_tokenizer_dir / "tok"),
                 "--out", str(root / "tokens"), "--params", str(params)])
    return root / "tokens"


# ---------------------------------------------------------------- evaluation fixtures
def crawl_corpus(records):
    """The crawl as a corpus stage would leave it: copies, spam and block-listed pages gone, the
    pages that leak eval questions still there (decontamination has to find them)."""
    import polars as pl

    keep = [r for r in records if r.kind not in ("low_quality", "blocklisted")
            and not (r.kind == "exact_duplicate" and r.dup_rank > 0)]
    return pl.DataFrame({
        "id": [f"doc-{i:05d}" for i in range(len(keep))], "text": [r.page.text for r in keep],
        "url": [r.page.url for r in keep], "language": [r.page.language for r in keep],
        "language_score": [0.9] * len(keep), "metadata": [{"kind": r.kind} for r in keep],
    })


@pytest.fixture(scope="session")
def tiny_crawl_corpus_dir(tmp_path_factory, tiny_world) -> Path:
    """crawl_corpus of the tiny world in two Parquet files (the documents contract)."""
    _, _, records, _ = tiny_world
    corpus = crawl_corpus(records)
    root = tmp_path_factory.mktemp("crawl_corpus")
    half = corpus.height // 2
    corpus[:half].write_parquet(root / "part-00000.parquet")
    corpus[half:].write_parquet(root / "part-00001.parquet")
    return root


@pytest.fixture(scope="session")
def tiny_decontam_dir(tmp_path_factory, tiny_world_dir, tiny_crawl_corpus_dir) -> Path:
    """The decontam stage run on the tiny world: evals/ (clean eval sets), corpus_clean/, decontam.json."""
    from stages.decontam import main as decontam_main

    root = tmp_path_factory.mktemp("decontam")
    decontam_main(["--world", str(tiny_world_dir / "world"), "--corpus", str(tiny_crawl_corpus_dir),
                   "--tasks", str(REPO / "evals" / "tasks"), "--out", str(root / "evals"),
                   "--corpus-out", str(root / "corpus_clean"), "--metrics", str(root / "decontam.json"),
                   "--params", str(tiny_world_dir / "params.yaml")])
    return root


# ---------------------------------------------------------------- model fixtures
@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    """A random small Llama with the tiny world's real tokenizer (chat template included)."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from jielong.chat import PAD

    out = tmp_path_factory.mktemp("base") / "base"
    tok = PreTrainedTokenizerFast.from_pretrained(tiny_tokenizer_dir / "tok")
    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
           "pad_token_id": tok.convert_tokens_to_ids(PAD)}
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, max_position_embeddings=256, **ids))
    model.save_pretrained(out)
    tok.save_pretrained(out)
    GenerationConfig(**ids).save_pretrained(out)
    return out
