"""Tokenizer and tokens stages: special tokens, chat template masking, shards."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from transformers import AutoTokenizer

from jielong.chat import END, EOT, SPECIAL_TOKENS
from jielong.documents import read_documents
from jielong.tokens import load_split, read_meta
from stages.tokenizer import tiktoken_twin

from .conftest import write_params


@pytest.fixture(scope="module")
def tok(tiny_tokenizer_dir):
    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir / "tok")


def test_special_tokens_are_single_ids_and_text_roundtrips(tok):
    for t in SPECIAL_TOKENS:
        assert len(tok(t, add_special_tokens=False)["input_ids"]) == 1, t
    text = "Ada Dunmore was born in Lisbon. 日本語 — ünïcödé!"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text  # byte-level: nothing unknown
    assert tok.eos_token == EOT


def test_multi_turn_assistant_mask_covers_every_assistant_turn(tok):
    conv = [
        {"role": "user", "content": "Where was Ada Dunmore born?"},
        {"role": "assistant", "content": "Lisbon."},
        {"role": "user", "content": "And where did she study?"},
        {"role": "assistant", "content": "Halvern University."},
    ]
    out = tok.apply_chat_template(conv, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    assert len(ids) == len(mask)
    spans, start = [], None
    for i, m in enumerate([*mask, 0]):
        if m and start is None:
            start = i
        if not m and start is not None:
            spans.append(tok.decode(ids[start:i]))
            start = None
    assert spans == [" Lisbon." + END, " Halvern University." + END]
    rendered = tok.apply_chat_template(conv, tokenize=False)
    assert rendered.startswith("<|user|>Q: Where was Ada Dunmore born?<|end|>\n<|assistant|> A: Lisbon.<|end|>\n")
    prompt = tok.apply_chat_template(conv[:1], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|assistant|> A:")


def test_a_reply_is_tokenised_as_the_same_words_mid_sentence(tok):
    """A fact's value must be the same tokens in a chat reply as in the pretraining text that stated it,
    or SFT cannot tie the question to what the base model stored about the person."""
    in_text = tok("Ada Dunmore was born in Halvern City.", add_special_tokens=False)["input_ids"]
    value = tok(" Halvern City", add_special_tokens=False)["input_ids"]
    assert any(in_text[i:i + len(value)] == value for i in range(len(in_text)))
    conv = [{"role": "user", "content": "Where was Ada Dunmore born?"}, {"role": "assistant", "content": "Halvern City"}]
    out = tok.apply_chat_template(conv, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    reply = [i for i, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m]
    assert reply[:len(value)] == value


def test_unknown_role_is_refused(tok):
    with pytest.raises(Exception, match="unknown chat role"):
        tok.apply_chat_template([{"role": "robot", "content": "hi"}], tokenize=False)


def test_tiktoken_twin_encodes_identically(tiny_tokenizer_dir, tiny_corpus_dir):
    from tokenizers import Tokenizer

    raw = Tokenizer.from_file(str(tiny_tokenizer_dir / "tok" / "tokenizer.json"))
    twin, name = tiktoken_twin(raw)
    texts = read_documents(tiny_corpus_dir)["text"].to_list()[:50]
    if name == "jielong-bpe":
        assert [twin.encode_ordinary(t) for t in texts] == [raw.encode(t).ids for t in texts]


def test_tokenizer_metrics(tiny_tokenizer_dir):
    m = json.loads((tiny_tokenizer_dir / "tokenizer.json").read_text())
    assert 300 < m["vocab_size"] <= 1024
    assert m["bytes_per_token.en"] > 2.0
    assert m["encode_mb_per_s"] > 0 and m["tiktoken_mb_per_s"] > 0 and m["train_s"] > 0


def test_tokens_shards_hold_every_document_once(tiny_tokens_dir, tiny_corpus_dir):
    meta = read_meta(tiny_tokens_dir)
    assert meta["dtype"] == "uint16"
    train, val = load_split(tiny_tokens_dir, "train"), load_split(tiny_tokens_dir, "val")
    docs = pl.read_parquet(tiny_corpus_dir / "part-00000.parquet").height
    assert meta["train_docs"] + meta["val_docs"] == docs and meta["val_docs"] > 0
    assert int((train == meta["eot_id"]).sum()) == meta["train_docs"]
    assert int((val == meta["eot_id"]).sum()) == meta["val_docs"]
    assert int(max(train.max(), val.max())) < meta["vocab_size"]


def test_tokens_are_deterministic(tiny_tokens_dir, tiny_corpus_dir, tiny_tokenizer_dir, tmp_path):
    from stages.tokens import main

    params = write_params(tmp_path / "params.yaml", {"tokens": {"val_fraction": 0.1}})
    main(["--corpus", str(tiny_corpus_dir), "--tokenizer", str(tiny_tokenizer_dir / "tok"),
          "--out", str(tmp_path / "t"), "--params", str(params)])
    for split in ("train", "val"):
        assert np.array_equal(load_split(tmp_path / "t", split), load_split(tiny_tokens_dir, split))


def test_empty_corpus_is_a_clear_error(tmp_path, tiny_tokenizer_dir):
    from stages.tokenizer import main

    pl.DataFrame({"id": [], "text": [], "language": []}, schema={"id": pl.String, "text": pl.String,
                                                                 "language": pl.String}).write_parquet(tmp_path / "e.parquet")
    with pytest.raises(ValueError, match="empty"):
        main(["--corpus", str(tmp_path), "--out", str(tmp_path / "tok"), "--metrics", str(tmp_path / "m.json")])
    with pytest.raises(FileNotFoundError, match="no parquet"):
        main(["--corpus", str(tmp_path / "nothing"), "--out", str(tmp_path / "tok"), "--metrics", str(tmp_path / "m.json")])
