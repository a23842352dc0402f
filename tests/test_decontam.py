"""decontam: n-gram hashing and matching, then the stage on the tiny world against its planted leaks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from jielong.decontam import EvalIndex, Normalisation, segment_ngram_length, window_hashes, word_hash, words
from stages.decontam import main as decontam_main

REPO = Path(__file__).resolve().parent.parent

QUESTION = "Which company does Ada Quillfeather work for?"
PAGE = " ".join(f"Sentence number {i} of a long held-out page about the harbour and its old lighthouse."
                for i in range(6))


def _index(texts: list[tuple[int, str]], **kw) -> EvalIndex:
    return EvalIndex(pl.DataFrame(texts, schema={"item": pl.Int64, "text": pl.String}, orient="row"), **kw)


# ---------------------------------------------------------------- words and hashes
def test_words_normalise_case_punctuation_unicode_and_cjk():
    norm = Normalisation()
    assert words(["Hello, World! Don't  STOP."], norm).to_list() == [["hello", "world", "don", "t", "stop"]]
    # NFKC folds ligatures and full-width forms; each CJK character is a word
    assert words(["ﬁne ＡＢＣ 中文字"], norm).to_list() == [["fine", "abc", "中", "文", "字"]]
    keep = Normalisation(lowercase=False, strip_punctuation=False, unicode_form=None)
    assert words(["Hello, World!"], keep).to_list() == [["Hello,", "World!"]]
    assert words([None, ""], norm).to_list() == [[], []]


def test_window_hashes_depend_on_words_and_order_only():
    ids = np.array([word_hash(w) for w in "a b c a b c b a".split()], dtype=np.uint64)
    h = window_hashes(ids, np.arange(6), 3)
    assert h[0] == h[3]  # "a b c" twice, same hash wherever it is
    assert len(set(h[[0, 1, 2, 4, 5]].tolist())) == 5  # "a b c", "b c a", "c a b", "b c b", "c b a"
    assert word_hash("") != 0 and word_hash("x") == word_hash("x")


def test_segment_ngram_length():
    assert segment_ngram_length(20, 13, 5) == 13
    assert segment_ngram_length(8, 13, 5) == 8  # short item: one n-gram of its whole length
    assert segment_ngram_length(3, 13, 5) == 0  # "March 3, 1987": too short to be evidence


# ---------------------------------------------------------------- matching
def test_scan_finds_quoted_question_not_answer_alone():
    index = _index([(0, QUESTION), (0, "Brightwater Instruments")])
    docs = [
        f"Pub quiz answers. Question 3: {QUESTION} Answer: Brightwater Instruments.",  # leak
        "Ada Quillfeather works for Brightwater Instruments and lives by the sea.",  # the fact, not the item
        "which company does ada quillfeather work FOR",  # normalisation: still the question
    ]
    found = index.scan(docs)
    assert found["doc"].to_list() == [0, 2]
    assert found["overlap"].to_list() == [1.0, 1.0]


def test_scan_long_segment_needs_min_overlap_and_one_document():
    index = _index([(7, PAGE)], min_overlap=0.5)
    ws = PAGE.split()
    half = len(ws) // 2
    docs = [PAGE, " ".join(ws[:half - 10]), " ".join(ws[: int(len(ws) * 0.8)])]
    found = index.scan(docs)
    assert found["doc"].to_list() == [0, 2] and found["item"].to_list() == [7, 7]
    # the two halves in two documents: neither holds enough alone, and no n-gram spans both
    assert index.scan([" ".join(ws[:half]), " ".join(ws[half:])]).height == 0


def test_scan_is_the_same_in_any_batching():
    index = _index([(0, QUESTION), (1, PAGE)], min_overlap=0.3)
    docs = ["nothing here", QUESTION, PAGE, "", f"x {QUESTION} y", PAGE[:200]]
    whole = index.scan(docs)
    pieces = pl.concat([index.scan(docs[i:i + 2]).with_columns(pl.col("doc") + i) for i in range(0, len(docs), 2)])
    assert whole.sort("doc", "item").equals(pieces.sort("doc", "item"))


# ---------------------------------------------------------------- the stage on the tiny world
def test_stage_finds_every_planted_leak_and_nothing_else(tiny_decontam_dir, tiny_world_dir):
    m = json.loads((tiny_decontam_dir / "decontam.json").read_text())
    assert m["planted_leaks"] > 0
    assert m["planted_leaks_recall"] == 1.0
    assert m["false_positives"] == 0
    for task in ("world_facts_mc", "world_facts_gen", "world_known", "world_unknown", "consistency",
                 "world_heldout_ppl"):
        assert {f"{task}.items", f"{task}.contaminated", f"{task}.rate"} <= set(m)
    assert m["world_unknown.contaminated"] == 0 and m["world_heldout_ppl.contaminated"] == 0
    assert m["mb_per_s"] > 0 and m["corpus.removed_docs"] == m["corpus.contaminating_docs"] > 0

    truth = pl.read_parquet(tiny_world_dir / "world" / "truth.parquet")
    leaked = set(truth["leaked_qids"].explode().drop_nulls())
    evals = tiny_decontam_dir / "evals"
    for task in ("world_facts_mc", "world_facts_gen", "world_known", "consistency"):
        qids = set(pl.read_ndjson(evals / f"{task}.jsonl")["qid"])
        assert not qids & leaked and len(qids) == m[f"{task}.kept"]
    report = pl.read_parquet(evals / "contamination.parquet")
    assert set(report["item_id"]) == leaked
    clean = pl.concat([pl.read_parquet(f) for f in sorted((tiny_decontam_dir / "corpus_clean").glob("*.parquet"))])
    assert clean.height == m["corpus.docs"] - m["corpus.removed_docs"]
    assert not set(clean["url"]) & set(truth.filter(pl.col("kind") == "leak")["url"])
    assert clean.columns == ["id", "text", "url", "language", "language_score", "metadata"]


def test_eval_sets_hold_eval_people_and_the_probe_sft_people(tiny_decontam_dir, tiny_world_dir):
    q = pl.read_parquet(tiny_world_dir / "world" / "questions.parquet")
    split_of = dict(zip(q["person_id"], q["split"], strict=True))
    evals = tiny_decontam_dir / "evals"

    def splits(name: str) -> set[str]:
        return {split_of[pid] for pid in pl.read_ndjson(evals / f"{name}.jsonl")["person_id"]}

    for task in ("world_facts_mc", "world_facts_gen", "world_known", "world_unknown", "consistency"):
        assert splits(task) == {"eval"}
    assert splits("questions_sft") == {"sft"}  # consistency_train: the base model's probe behind SFT's labels
    # few-shot pools: everyone outside the eval split, as when sft and rl people were one train split
    assert splits("fewshot_questions") == splits("fewshot_known") == {"sft", "rl"}
    assert pl.read_ndjson(evals / "fewshot_questions.jsonl").height == q.filter(pl.col("split") != "eval").height


def _run(tmp_path, world_dir, corpus_dir, **decontam) -> dict:
    params = yaml.safe_load((world_dir / "params.yaml").read_text())
    params["decontam"].update(decontam)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    decontam_main(["--world", str(world_dir / "world"), "--corpus", str(corpus_dir),
                   "--tasks", str(REPO / "evals" / "tasks"), "--out", str(tmp_path / "evals"),
                   "--corpus-out", str(tmp_path / "corpus_clean"), "--metrics", str(tmp_path / "m.json"),
                   "--params", str(tmp_path / "params.yaml")])
    return json.loads((tmp_path / "m.json").read_text())


def test_flag_mode_keeps_items_and_keep_mode_keeps_corpus(tmp_path, tiny_world_dir, tiny_crawl_corpus_dir,
                                                           tiny_decontam_dir):
    m = _run(tmp_path, tiny_world_dir, tiny_crawl_corpus_dir, contaminated_items="flag", corpus="keep",
             batch_rows=7)
    base = json.loads((tiny_decontam_dir / "decontam.json").read_text())
    assert m["world_facts_gen.contaminated"] == base["world_facts_gen.contaminated"]  # batching changes nothing
    gen = pl.read_ndjson(tmp_path / "evals" / "world_facts_gen.jsonl")
    assert gen.height == m["world_facts_gen.items"] and gen["contaminated"].sum() == m["world_facts_gen.contaminated"]
    assert m["corpus.removed_docs"] == 0
    assert sum(pl.read_parquet(f).height for f in (tmp_path / "corpus_clean").glob("*.parquet")) == m["corpus.docs"]


def test_an_emptied_eval_set_fails_the_stage(tmp_path, tiny_world_dir):
    """A corpus quoting every unknown person's question: world_unknown would be empty."""
    q = pl.read_parquet(tiny_world_dir / "world" / "questions.parquet")
    unknown = q.filter(~pl.col("known") & (pl.col("split") == "eval"))
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    pl.DataFrame({"id": ["quiz"], "url": ["https://quiz.example/all"],
                  "text": [" ".join(f"{a} {b}" for a, b in unknown.select("question", "answer").iter_rows())],
                  "language": ["en"]}).write_parquet(corpus / "part-0.parquet")
    with pytest.raises(SystemExit, match=r"world_unknown.*empty after removing contaminated items"):
        _run(tmp_path, tiny_world_dir, corpus)
    assert not (tmp_path / "m.json").exists() and not (tmp_path / "evals").exists()


def test_a_task_reading_a_file_the_stage_does_not_write_fails(tmp_path, tiny_world_dir, tiny_crawl_corpus_dir):
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "bad.yaml").write_text("task: bad\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
                                    "    test: data/evals/nowhere.jsonl\nprocess_results: !function scoring.x\n")
    params = tmp_path / "params.yaml"
    params.write_text((tiny_world_dir / "params.yaml").read_text())
    with pytest.raises(SystemExit, match="nowhere.jsonl"):
        decontam_main(["--world", str(tiny_world_dir / "world"), "--corpus", str(tiny_crawl_corpus_dir),
                       "--tasks", str(tasks), "--out", str(tmp_path / "evals"), "--corpus-out",
                       str(tmp_path / "cc"), "--metrics", str(tmp_path / "m.json"), "--params", str(params)])
