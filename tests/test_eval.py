"""eval: answer normalisation, abstention, agreement and AUROC by hand; then lm-eval end to end on a
tiny randomly initialised model (plain and chat prompts, a local benchmark file, the lm_eval CLI)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from evals.tasks import scoring
from jielong import grading
from stages.eval import flatten_results
from stages.eval import main as eval_main

from .conftest import write_params

REPO = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- normalisation and probes
def test_answer_normalisation():
    assert grading.normalise_answer("The University of Eastmoor.") == "university of eastmoor"
    assert grading.first_line("\n  Answer: Paris\nQuestion: next?") == "Paris"
    born = {"answer": "March 3, 1987", "attribute": "birth_date", "name": "Ada Quill", "pronoun": "she"}
    assert grading.is_correct(" March 3, 1987\n", born)
    assert not grading.is_correct("March 3, 1988", born)
    assert grading.contains_gold("She works in Lyon now.", "Lyon")
    assert not grading.contains_gold("Lyonnais", "Lyon")


CITY = {"answer": "Lisbon", "attribute": "birth_city", "name": "Ada Quill", "pronoun": "she"}


@pytest.mark.parametrize(("response", "correct"), [
    ("Lisbon", True), (" the Lisbon.", True),               # the bare value, normalised
    ("Ada Quill was born in Lisbon.", True),                  # the fact stated about the person...
    ("She was born in Lisbon.\nQ: next", True),              # ... or by pronoun, first line only
    ("Ada Quill was born in Porto.", False),                  # another value
    ("Ada Quill was born in Lisbon and Porto.", False),       # more than the fact
    ("Ada Quill works in Lisbon.", False),                    # another attribute's sentence
    ("Bo Lind was born in Lisbon.", False),                   # someone else
    ("I do not know whether Ada Quill was born in Lisbon.", False),
])
def test_exact_match_accepts_the_value_or_the_fact_stated(response, correct):
    assert grading.is_correct(response, CITY) is correct
    assert scoring.process_facts_gen(CITY, [response])["exact_match"] == float(correct)


def test_the_stated_fact_is_the_crawls_sentence_for_every_attribute():
    from jielong.world import pages

    templates = " ".join(t for ts in pages.FACT_SENTENCES.values() for t in ts)
    for attribute, template in grading.STATEMENTS.items():
        assert template.replace("{subject}", "{S}").replace("{value}", "{" + attribute + "}") in templates


@pytest.mark.parametrize("answer", ["I don't know.", "I do not know", "i dont know", "Unknown",
                                    "I'm not sure.", "No idea!", "I have no information about her.",
                                    "I don’t know"])
def test_abstentions(answer):
    assert grading.is_abstention(answer)


@pytest.mark.parametrize("answer", ["Paris", "Unknownville", "Knowles Industries", "", "Known for cheese"])
def test_not_abstentions(answer):
    assert not grading.is_abstention(answer)


def test_attribute_values_are_hallucinations():
    cities = ["Lyon", "Porto", "New Haven"]
    assert grading.is_attribute_value("March 3, 1987", "birth_date", [])
    assert grading.is_attribute_value("3 March 1987", "birth_date", [])
    assert grading.is_attribute_value("He was born in New Haven.", "birth_city", cities)
    assert not grading.is_attribute_value("Haven", "birth_city", cities)
    assert not grading.is_attribute_value("I don't know", "birth_city", cities)
    assert not grading.is_attribute_value("�x� qq", "birth_date", [])


def test_majority_and_agreement():
    answer, agreement = grading.majority(["Paris", "paris.", "Lyon", "I don't know", "I do not know"])
    assert (answer, agreement) == ("paris", 0.4)  # tie with the abstentions: the first seen wins
    assert grading.majority(["I don't know", "No idea", "Lyon"]) == (grading.ABSTAIN, 2 / 3)
    assert grading.majority(["a", "b", "c", "d"])[1] == 0.25
    # asked about a person, a value and its sentence about her are one answer
    said = ["Ada Quill was born in Lisbon.", "She was born in Lisbon.", "Lisbon", "Ada Quill was born in Porto."]
    assert grading.majority(said, CITY) == ("lisbon", 0.75)
    assert scoring.process_consistency(CITY, [said])["majority_correct"] == 1.0


def test_auroc_by_hand():
    # positives 0.9, 0.7; negatives 0.8, 0.6: 3 of 4 pairs ordered right
    assert grading.auroc([(0.9, True), (0.8, False), (0.7, True), (0.6, False)]) == 0.75
    assert grading.auroc([(1.0, True), (0.2, False)]) == 1.0
    assert grading.auroc([(0.2, True), (1.0, False)]) == 0.0
    assert grading.auroc([(0.5, True), (0.5, False), (0.9, True)]) == 0.75  # a tie counts one half
    assert grading.auroc([(0.4, False), (0.9, False)]) == 0.5  # one class only: chance


def test_process_consistency():
    doc = {"answer": "Lyon"}
    out = scoring.process_consistency(doc, [["Lyon", "lyon", "Porto", "Lyon."]])
    assert out == {"agreement": 0.75, "majority_correct": 1.0, "auroc": (0.75, True)}


def test_cloze_answers_are_the_attribute_value_they_name():
    cities = ["Antwerp", "Lyon", "Quebec City", "Quebec"]
    assert grading.extract_value(" Antwerp and grew up in Lyon", "birth_city", cities) == "antwerp"
    assert grading.extract_value(" the old town of Quebec City, where", "birth_city", cities) == "quebec city"
    assert grading.extract_value(" a small village", "birth_city", cities) == grading.NO_VALUE
    assert grading.extract_value(" March 10, 1969 in Antwerp", "birth_date", []) == "march 10 1969"
    doc = {"attribute": "birth_city", "values": cities, "answer": "Antwerp"}
    assert grading.cloze_majority([" Antwerp.", " Antwerp, a", " Lyon"], doc) == ("antwerp", 2 / 3)
    r = scoring.process_consistency_cloze(doc, [[" Antwerp.", " Antwerp, a", " Lyon"]])
    assert r["majority_correct"] == 1.0 and r["auroc"] == (2 / 3, True)
    assert scoring.process_consistency_cloze(doc, [[" nowhere", " a village", " Lyon"]])["majority_correct"] == 0.0
    # recall: the first value the greedy continuation names must be the true one
    assert scoring.process_facts_cloze(doc, [" Antwerp, and grew up in Lyon"]) == {"recall": 1.0}
    assert scoring.process_facts_cloze(doc, [" Lyon, not Antwerp"]) == {"recall": 0.0}
    assert scoring.process_facts_cloze(doc, [" a small village"]) == {"recall": 0.0}
    date = {"attribute": "birth_date", "values": [], "answer": "March 10, 1969"}
    assert scoring.process_facts_cloze(date, [" March 10, 1969 in Antwerp"]) == {"recall": 1.0}
    assert scoring.process_facts_cloze(date, [" March 10, 1996"]) == {"recall": 0.0}


def test_flatten_results():
    results = {"results": {"t": {"alias": "t", "acc,none": 0.5, "acc_stderr,none": 0.1, "x_stderr,none": "N/A",
                                 "em,strict": 1.0, "sample_len": 4}},
               "n-samples": {"t": {"original": 9, "effective": 4}}}
    assert flatten_results(results) == {"t.acc": 0.5, "t.acc_stderr": 0.1, "t.em_strict": 1.0, "t.items": 4}


# ---------------------------------------------------------------- a tiny random model
def build_tiny_model(out: Path, texts: list[str]) -> Path:
    """A randomly initialised Llama with a byte-level BPE trained on `texts` and jielong's chat template."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from jielong.chat import CHAT_TEMPLATE, EOT, PAD, SPECIAL_TOKENS

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOT, eos_token=EOT, pad_token=PAD,
                                 chat_template=CHAT_TEMPLATE, clean_up_tokenization_spaces=False)
    ids = {"bos_token_id": hf.bos_token_id, "eos_token_id": hf.eos_token_id, "pad_token_id": hf.pad_token_id}
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(hf), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True, **ids))
    model.save_pretrained(out)
    hf.save_pretrained(out)
    GenerationConfig(**ids).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, tiny_crawl_corpus_dir) -> Path:
    texts = pl.read_parquet(next(tiny_crawl_corpus_dir.glob("*.parquet")))["text"].to_list()
    return build_tiny_model(tmp_path_factory.mktemp("models") / "base", texts)


def _params(tmp_path: Path, **eval_params) -> Path:
    return write_params(tmp_path / "params.yaml", {
        "data_roots": ["data", str(tmp_path)],  # local benchmark files live in the test's folder
        "eval": {"limit": 6, "batch_size": 16, "bootstrap_iters": 50, "consistency": {"k": 3}, **eval_params}})


def _eval(tmp_path, model, evals, name="base", **eval_params) -> dict:
    eval_main(["--model", str(model), "--name", name, "--evals", str(evals), "--tasks", str(REPO / "evals" / "tasks"),
               "--out", str(tmp_path / f"{name}.json"), "--samples", str(tmp_path / name),
               "--items", str(tmp_path / "items" / f"{name}.json"),
               "--params", str(_params(tmp_path, **eval_params))])
    return json.loads((tmp_path / f"{name}.json").read_text())


def test_eval_stage_on_a_random_model(tmp_path, tiny_model, tiny_decontam_dir):
    m = _eval(tmp_path, tiny_model, tiny_decontam_dir / "evals")
    for key in ["world_facts_mc.acc", "world_facts_gen.exact_match", "world_unknown.abstain_rate",
                "world_unknown.hallucination_rate", "world_known.false_abstain_rate",
                "world_heldout_ppl.word_perplexity", "consistency.agreement", "consistency.auroc",
                "world_facts_mc.acc_stderr", "world_facts_gen.exact_match_stderr", "consistency.auroc_stderr",
                "consistency_train.agreement", "consistency.knows_rate", "gold_reward.mean", "gold_reward.known",
                "gold_reward.unknown", "gold_reward.mean_stderr", "world_facts_cloze.recall",
                "world_facts_cloze.recall_stderr"]:
        assert key in m, key
    assert m["world_facts_mc.items"] == m["consistency.items"] == 6
    assert 1 / 3 <= m["consistency.agreement"] <= 1 and 0 <= m["consistency.auroc"] <= 1
    assert m["world_heldout_ppl.word_perplexity"] > 1
    assert -1.75 <= m["gold_reward.mean"] <= 1 and m["gold_reward.items"] == 12  # 6 known + 6 unknown answers

    out = tmp_path / "base"
    assert {p.stem for p in (out / "samples").glob("*.jsonl")} == {
        "world_facts_mc", "world_facts_gen", "world_unknown", "world_known", "world_heldout_ppl", "consistency",
        "consistency_train", "world_facts_cloze"}
    cloze = json.loads((out / "samples" / "world_facts_cloze.jsonl").read_text().splitlines()[0])
    assert cloze["arguments"][0][0].endswith(("was born on", "was born in", "works for", "works in", "majored in",
                                              "is a graduate of"))  # a cloze statement, zero-shot
    sample = json.loads((out / "samples" / "consistency.jsonl").read_text().splitlines()[0])
    assert len(sample["filtered_resps"][0]) == 3  # all k samples reached the scorer
    assert sample["arguments"][0][0].startswith("Q: ")  # a base model: the crawl's Q&A form, zero-shot
    gen = json.loads((out / "samples" / "world_facts_gen.jsonl").read_text().splitlines()[0])
    assert gen["arguments"][0][0] == f"Q: {gen['doc']['question']} A:"  # no examples whose values it would copy
    # results.json keeps the library versions but not the machine's report (kernel, CPU flags), which made
    # the same model's eval hash differently on another machine of the same kind
    results = json.loads((out / "results.json").read_text())
    assert "pretty_env_info" not in results and results["torch_version"] and results["transformers_version"]
    knows = pl.read_parquet(out / "knows.parquet")
    assert knows.height == 12 and set(knows["task"]) == {"consistency", "consistency_train"}
    # per-item results, what the gate pairs: every per-item metric averages to its aggregate, by question id
    items = json.loads((tmp_path / "items" / "base.json").read_text())
    assert set(items["world_facts_gen"]["exact_match"]) == {json.loads(line)["doc"]["qid"] for line in
                                                          (out / "samples" / "world_facts_gen.jsonl").open()}
    for task, metric in [("world_facts_mc", "acc"), ("world_facts_gen", "exact_match"), ("world_unknown", "abstain_rate"),
                         ("world_known", "false_abstain_rate"), ("world_facts_cloze", "recall"), ("gold_reward", "mean")]:
        values = list(items[task][metric].values())
        assert sum(values) / len(values) == pytest.approx(m[f"{task}.{metric}"]), (task, metric)
    assert len(items["gold_reward"]["mean"]) == 12 and "world_heldout_ppl" not in items  # perplexity: no per-item mean
    assert set(knows.filter(pl.col("task") == "consistency_train")["split"]) == {"sft"}  # the sft people's probe
    assert {"qid", "answers", "agreement", "correct", "knows"} <= set(knows.columns)


def test_no_benchmark_no_index_of_lm_evals_own_tasks(tmp_path, tiny_model, tiny_decontam_dir, monkeypatch):
    """Indexing lm-eval's ~15k task files costs 9-13 s per eval: only eval.benchmarks may need it."""
    import lm_eval.evaluator
    import lm_eval.tasks

    import stages.eval as ev

    built = []

    class Recording(lm_eval.tasks.TaskManager):
        def __init__(self, *args, include_defaults: bool = True, **kwargs):
            built.append(include_defaults)
            super().__init__(*args, include_defaults=include_defaults, **kwargs)

    monkeypatch.setattr(lm_eval.tasks, "TaskManager", Recording)
    monkeypatch.setattr(lm_eval.evaluator, "TaskManager", Recording)
    ev.our_tasks_manager.cache_clear()
    m = _eval(tmp_path, tiny_model, tiny_decontam_dir / "evals", tasks=["world_facts_mc"], limit=2)
    ev.our_tasks_manager.cache_clear()
    assert "world_facts_mc.acc" in m
    assert built == [False], built  # one manager, ours alone


def test_eval_in_bfloat16_as_the_gpu_profile_runs_it(tmp_path, tiny_model, tiny_decontam_dir):
    scores = {}
    for dtype in ("bfloat16", "float32"):
        out = tmp_path / dtype
        out.mkdir()
        m = _eval(out, tiny_model, tiny_decontam_dir / "evals", tasks=["world_facts_gen", "world_facts_mc"],
                  limit=4, dtype=dtype, batch_size=4)
        assert m["world_facts_mc.acc"] >= 0 and np.isfinite(m["gold_reward.mean"])
        scores[dtype] = [json.loads(line)["resps"] for line in (out / "base" / "samples" / "world_facts_mc.jsonl").open()]
    assert scores["bfloat16"] != scores["float32"]  # the model did run in bfloat16


def test_chat_models_are_prompted_through_their_template(tmp_path, tiny_model, tiny_decontam_dir):
    sft = shutil.copytree(tiny_model, tmp_path / "sft")
    m = _eval(tmp_path, sft, tiny_decontam_dir / "evals", name="sft", tasks=["world_facts_gen", "world_facts_mc"],
              limit=2)
    assert set(m) >= {"world_facts_gen.exact_match", "world_facts_mc.acc"}
    prompt = json.loads((tmp_path / "sft" / "samples" / "world_facts_gen.jsonl").read_text().splitlines()[0])
    # asked as a user would: the bare question in one user turn, zero-shot, no instructions
    text = prompt["arguments"][0][0]
    assert text.count("<|user|>") == 1 and "Question:" not in text and "<|system|>" not in text
    assert text.endswith(f"<|user|>Q: {prompt['doc']['question']}<|end|>\n<|assistant|> A:")
    # a choice is scored as the reply the template renders: "A:" then one space, then the fact stated
    # as the SFT data answered (sft.data.answer_style, by default the crawl's sentence)
    mc = json.loads((tmp_path / "sft" / "samples" / "world_facts_mc.jsonl").read_text().splitlines()[0])
    assert [cont for _, cont in mc["arguments"]] == [" " + grading.statement(mc["doc"] | {"answer": c})
                                                     for c in mc["doc"]["choices"]]
    assert all(ctx.endswith("<|assistant|> A:") for ctx, _ in mc["arguments"])


@pytest.fixture
def system_tmp(tmp_path, monkeypatch) -> Path:
    """The folder tempfile puts scratch folders in, for the duration of a test."""
    folder = (tmp_path / "tmp").resolve()
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def test_unknown_task_lists_the_available_ones(tmp_path, tiny_model, tiny_decontam_dir, system_tmp):
    with pytest.raises(SystemExit, match=r"unknown task.*world_factz.*available.*world_facts_gen"):
        _eval(tmp_path, tiny_model, tiny_decontam_dir / "evals", tasks=["world_factz"])
    assert not list(system_tmp.iterdir())  # the failed run's scratch folder is gone


def test_an_empty_eval_set_is_refused(tmp_path, tiny_model, tiny_decontam_dir, system_tmp):
    evals = shutil.copytree(tiny_decontam_dir / "evals", tmp_path / "evals")
    (evals / "world_unknown.jsonl").write_text("")
    with pytest.raises(SystemExit, match=r"world_unknown.*no items"):
        _eval(tmp_path, tiny_model, evals, tasks=["world_unknown"])
    assert not (tmp_path / "base.json").exists()
    assert not list(system_tmp.iterdir())


def test_benchmarks_from_a_local_file_and_unknown_benchmarks(tmp_path, tiny_model, tiny_decontam_dir):
    rows = [{"id": f"q{i}", "question": f"Which is item {i}?", "answerKey": "A",
             "choices": {"text": [f"item {i}", "a stone", "the sea"], "label": ["A", "B", "C"]}} for i in range(3)]
    local = tmp_path / "arc_easy_test.jsonl"
    local.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(SystemExit, match=r"unknown benchmark 'arc_eazy'.*arc_easy"):
        _eval(tmp_path, tiny_model, tiny_decontam_dir / "evals", tasks=["world_facts_mc"],
              benchmarks={"arc_eazy": str(local)})
    m = _eval(tmp_path, tiny_model, tiny_decontam_dir / "evals", tasks=["world_facts_mc"],
              benchmarks={"arc_easy": str(local)}, limit=3)
    assert m["arc_easy.items"] == 3 and "arc_easy.acc" in m


def test_plain_lm_eval_cli_runs_the_tasks(tmp_path, tiny_model, tiny_decontam_dir):
    """`lm_eval --include_path evals/tasks` from a checkout whose data/evals the decontam stage wrote."""
    shutil.copytree(tiny_decontam_dir / "evals", tmp_path / "data" / "evals")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={tiny_model}",
         "--tasks", "world_facts_mc,world_unknown", "--include_path", str(REPO / "evals" / "tasks"),
         "--limit", "2", "--batch_size", "8", "--output_path", str(tmp_path / "out")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "world_facts_mc" in run.stdout and "abstain_rate" in run.stdout


def test_a_tokenizer_sft_wrote_makes_a_chat_model_under_any_name(tmp_path, tiny_base, tiny_decontam_dir):
    """A chat model evaluated as `--model /somewhere/mine` (not a name in eval.chat_models) was asked the
    base model's Q/A prompt, the wrong form; its tokenizer says what it is."""
    import shutil

    from transformers import AutoTokenizer

    from jielong.chat import END
    from stages.eval import sft_tokenizer

    assert not sft_tokenizer(tiny_base)  # the template is there, but a base model ends on <|endoftext|>
    mine = tmp_path / "models" / "mine"
    shutil.copytree(tiny_base, mine)
    tok = AutoTokenizer.from_pretrained(mine)
    tok.eos_token = END
    tok.save_pretrained(mine)
    assert sft_tokenizer(mine)
    # and the stage asks it as a user would, though eval.chat_models does not name it
    _eval(tmp_path, mine, tiny_decontam_dir / "evals", name="mine", tasks=["world_facts_gen"], extra_tasks={})
    prompts = (tmp_path / "mine" / "samples" / "world_facts_gen.jsonl").read_text()
    assert "<|user|>" in prompts and "<|assistant|>" in prompts


def test_the_vllm_backend_is_checked_for_configuration_errors(tmp_path, monkeypatch):
    """eval.backend: vllm (lm-eval's vLLM model type) needs CUDA and the vllm package; neither is here, so
    only its configuration errors are tested, never a run."""
    import importlib.util

    from jielong.params import ParamsError, load
    from stages.eval import load_lm

    with pytest.raises(ParamsError, match=r"eval: backend = 'vllm' runs on CUDA only; device = 'cpu'"):
        load("eval", write_params(tmp_path / "params.yaml", {"eval": {"backend": "vllm"}}))
    p = load("eval", write_params(tmp_path / "params.yaml", {"eval": {"backend": "vllm", "device": "cuda"}}))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    with pytest.raises(SystemExit, match="needs the vllm package on a CUDA machine"):
        load_lm(tmp_path, p)


def test_benchmarks_only_without_a_benchmark_is_refused(tmp_path, tiny_base):
    params = write_params(tmp_path / "params.yaml")
    with pytest.raises(SystemExit, match="nothing to evaluate: --benchmarks-only and params eval.benchmarks is empty"):
        eval_main(["--model", str(tiny_base), "--benchmarks-only", "--out", str(tmp_path / "m.json"),
                   "--params", str(params)])
