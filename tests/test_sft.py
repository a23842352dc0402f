"""SFT: the conversation builder, assistant-only masking through TRL, full and LoRA runs, the talk CLI."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import torch

from jielong import conversations, grading
from jielong.chat import ASSISTANT, END, PAD, USER, WARM_START

from .conftest import params_section, write_params

# ---------------------------------------------------------------- data


def _questions(tiny_world) -> pl.DataFrame:
    _, questions, _, _ = tiny_world
    return questions if isinstance(questions, pl.DataFrame) else pl.DataFrame(questions)


def test_conversations_use_sft_people_and_refer_back(tiny_world):
    q = _questions(tiny_world)
    table = conversations.build(q, params_section("sft.data", conversations=300, max_turns=3,
                                                  multi_turn_fraction=0.7, val_fraction=0.2))
    assert table.height == 300 and table["id"].n_unique() == 300
    sft_people = set(q.filter(pl.col("split") == "sft")["person_id"])
    assert set(table["person_id"]) <= sft_people  # rl and evaluation people never appear
    assert {q for qids in table["qids"].to_list() for q in qids} <= set(q.filter(pl.col("split") == "sft")["qid"])
    assert set(table["known"]) == {True, False}  # both groups' sft people
    assert all(conversations.roles_alternate(m) for m in table["messages"].to_list())
    multi = table.filter(pl.col("kinds").list.len() > 1).row(0, named=True)
    name = q.filter(pl.col("person_id") == multi["person_id"])["name"][0]
    users = [m["content"] for m in multi["messages"] if m["role"] == "user"]
    assert name in users[0] and all(name not in u for u in users[1:])  # follow-ups use the pronoun
    assert {"train", "val"} == set(table["split"])
    # by person: no one is in both
    assert not set(table.filter(pl.col("split") == "val")["person_id"]) & set(
        table.filter(pl.col("split") == "train")["person_id"])
    again = conversations.build(q, params_section("sft.data", conversations=300, max_turns=3,
                                                  multi_turn_fraction=0.7, val_fraction=0.2))
    assert again.equals(table)


def test_unknown_people_and_unknown_facts_get_i_dont_know(tiny_world):
    q = _questions(tiny_world)
    sft = q.filter(pl.col("split") == "sft")
    known_q = sft.filter(pl.col("known"))
    not_known = set(known_q["qid"].to_list()[::2])  # the probe says the model does not know half of them
    knows = sft.select("qid", "split", "known").with_columns(knows=~pl.col("qid").is_in(list(not_known)))
    table = conversations.build(q, params_section("sft.data", conversations=400, answer_style="value"), knows)
    answers = dict(zip(q["qid"].to_list(), q["answer"].to_list(), strict=True))
    seen = {"answer": 0, "idk_unknown_person": 0, "idk_not_known": 0}
    for row in table.iter_rows(named=True):
        replies = [m["content"] for m in row["messages"] if m["role"] == "assistant"]
        for reply, kind, qid in zip(replies, row["kinds"], row["qids"], strict=True):
            seen[kind] += 1
            if kind == "answer":
                assert reply == answers[qid] and qid not in not_known
            else:
                assert reply.startswith("I do not know")
                assert (kind == "idk_not_known") == (qid in not_known)
    assert min(seen.values()) > 0, seen


def test_sentence_answers_state_the_fact_about_the_person(tiny_world):
    q = _questions(tiny_world)
    rows = {r["qid"]: r for r in q.iter_rows(named=True)}
    table = conversations.build(q, params_section("sft.data", conversations=200, answer_style="sentence"))
    plain = conversations.build(q, params_section("sft.data", conversations=200, answer_style="value"))
    assert table["qids"].to_list() == plain["qids"].to_list()  # the same draws: only the replies differ
    answered = 0
    for conv in table.iter_rows(named=True):
        replies = [m["content"] for m in conv["messages"] if m["role"] == "assistant"]
        for reply, kind, qid in zip(replies, conv["kinds"], conv["qids"], strict=True):
            if kind == "answer":
                answered += 1
                assert reply.startswith(rows[qid]["name"] + " ") and reply.endswith(" " + rows[qid]["answer"] + ".")
                assert grading.is_correct(reply, rows[qid]) and grading.gold_reward(reply, rows[qid]) == 1.0
            else:
                assert reply.startswith("I do not know")
    assert answered > 100


def test_sft_data_check_fails_a_reply_that_is_not_the_fact(tiny_world, tiny_base):
    from transformers import PreTrainedTokenizerFast

    from jielong.checks import ExpectationFailed
    from stages.sft_data import check

    q = _questions(tiny_world)
    tok = PreTrainedTokenizerFast.from_pretrained(tiny_base)
    table = conversations.build(q, params_section("sft.data", conversations=20, unknown_fraction=0.0,
                                                  answer_style="sentence"))
    check(table, q, tok, 256, "sentence", "sft.parquet")
    values = conversations.build(q, params_section("sft.data", conversations=20, unknown_fraction=0.0,
                                                   answer_style="value"))
    with pytest.raises(ExpectationFailed, match="replies_true"):  # bare values where sentences were asked for
        check(values, q, tok, 256, "sentence", "sft.parquet")
    # a conversation about someone outside the sft split fails the stage
    for split in ("rl", "eval"):
        other = q.filter(pl.col("split") == split)["person_id"][0]
        with pytest.raises(ExpectationFailed, match="person_split"):
            check(table.with_columns(person_id=pl.lit(other)), q, tok, 256, "sentence", "sft.parquet")


def test_invented_people_are_new_names_asked_the_banks_questions(tiny_world):
    people, _, _, _ = tiny_world
    q = _questions(tiny_world)
    names = {p.name for p in people}
    more = conversations.with_invented(q, names, 50, seed=0, name_parts="vocabulary")
    invented = more.filter(pl.col("person_id").str.starts_with("x"))
    assert invented["person_id"].n_unique() == 50 and not set(invented["name"]) & names
    assert set(invented["split"]) == {"sft"} and not any(invented["known"])
    templates = set(q.filter(pl.col("split") == "sft")["question"])
    for row in invented.iter_rows(named=True):  # the bank's wording, only the name differs
        assert row["name"] in row["question"]
        assert any(row["question"].replace(row["name"], "")
                   == t.replace(n, "") for t, n in zip(q["question"], q["name"], strict=True) if t in templates)
    assert more.filter(~pl.col("person_id").str.starts_with("x")).equals(q)
    assert conversations.with_invented(q, names, 50, seed=0, name_parts="vocabulary").equals(more)
    with pytest.raises(ValueError, match="invented_people = 100000 exceeds"):
        conversations.with_invented(q, names, 100_000, seed=0, name_parts="vocabulary")
    # no invented name begins or extends a world person's ("Kasimir Castellan" beside "Kasimir Castellanos")
    from jielong.world import vocab

    castellans = {f"{f} Castellan" for f, _ in vocab.FIRST_NAMES}
    many = conversations.with_invented(q, names | castellans, 3000, seed=0, name_parts="vocabulary")
    invented = many.filter(pl.col("person_id").str.starts_with("x"))["name"].unique()
    assert invented.len() == 3000 and not [n for n in invented if "Castellan" in n]

    p = params_section("sft.data", conversations=600, unknown_fraction=0.5)
    table = conversations.build(more, p)
    share = table.filter(~pl.col("known")).height / table.height
    assert 0.42 < share < 0.58, share  # the params' share, though invented people outnumber the real ones
    assert table["person_id"].str.starts_with("x").any()


def test_familiar_invented_names_are_made_of_sft_known_peoples_name_parts(tiny_world):
    people, _, _, _ = tiny_world
    q = _questions(tiny_world)
    names = {p.name for p in people}
    sft_known = q.filter((pl.col("split") == "sft") & pl.col("known")).unique("person_id")
    firsts = dict(zip((n.split()[0] for n in sft_known["name"]), sft_known["pronoun"], strict=True))
    lasts = {n.split()[-1] for n in sft_known["name"]}
    free = sum(f"{f} {s}" not in names for f in firsts for s in lasts)
    n = min(free, 20)
    assert n >= 5, "the tiny world is too small to test familiar names"
    invented = conversations.with_invented(q, names, n, seed=0, name_parts="familiar")
    invented = invented.filter(pl.col("person_id").str.starts_with("x")).unique("person_id")
    assert invented.height == n and not set(invented["name"]) & names
    for name, pronoun in zip(invented["name"], invented["pronoun"], strict=True):
        first, last = name.split()
        assert first in firsts and last in lasts and pronoun == firsts[first]
    with pytest.raises(ValueError, match=f"invented_people = {free + 1} exceeds"):
        conversations.with_invented(q, names, free + 1, seed=0, name_parts="familiar")
    with pytest.raises(ValueError, match="invented_names = 'nobody'"):
        conversations.with_invented(q, names, 1, seed=0, name_parts="nobody")


# ---------------------------------------------------------------- masking through TRL
def test_loss_is_on_every_assistant_turn_and_nothing_else(tmp_path, tiny_base):
    """A real tokenised three-turn conversation through SFTTrainer's own tokenisation and collator."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast
    from trl import SFTConfig, SFTTrainer

    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "When was Ada Quill born?"}, {"role": "assistant", "content": "May 2, 1990"},
                {"role": "user", "content": "And where did she study?"},
                {"role": "assistant", "content": "University of Lowmarsh"},
                {"role": "user", "content": "Who is Zed Null?"}, {"role": "assistant", "content": "I don't know."}]
    tok = PreTrainedTokenizerFast.from_pretrained(tiny_base)
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_base), processing_class=tok,
        train_dataset=Dataset.from_list([{"messages": messages}]),
        args=SFTConfig(output_dir=str(tmp_path), assistant_only_loss=True, max_length=256, report_to="none",
                       use_cpu=True, pad_token=PAD))
    example = trainer.train_dataset[0]
    batch = trainer.data_collator([example])
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    trained = ids[labels != -100]
    assert torch.equal(labels[labels != -100], trained)
    # exactly the three replies, each with the end-of-turn token that teaches the model to stop
    assert tok.decode(trained) == f" May 2, 1990{END} University of Lowmarsh{END} I don't know.{END}"
    untrained = tok.decode(ids[labels == -100])
    assert "When was Ada Quill born?" in untrained and "Be brief." in untrained and "May 2" not in untrained


def test_unseen_reply_tokens_are_what_replies_use_and_pretraining_never_saw(tiny_base, tiny_tokens_dir):
    import numpy as np
    from datasets import Dataset
    from transformers import AutoTokenizer

    from jielong.tokens import read_meta, token_counts
    from stages.sft import unseen_reply_tokens

    counts = token_counts(tiny_tokens_dir)
    assert counts.sum() == read_meta(tiny_tokens_dir)["train_tokens"] and len(counts) == read_meta(tiny_tokens_dir)["vocab_size"]
    tok = AutoTokenizer.from_pretrained(tiny_base)
    data = Dataset.from_list([{"messages": [{"role": "user", "content": "Who is Zed Quill?"},
                                            {"role": "assistant", "content": "I do not know."}]}])
    reply = tok.encode(" I do not know.", add_special_tokens=False)
    counts = np.ones(len(tok), dtype=np.int64)
    counts[reply] = 0
    counts[tok.encode(" Zed", add_special_tokens=False)] = 0  # the user's words are not the reply's
    counts[tok.convert_tokens_to_ids(END)] = 0  # the chat tokens have their own switch (train_chat_tokens)
    assert unseen_reply_tokens(data, tok, counts) == sorted(set(reply))
    with pytest.raises(ValueError, match="tokenizer has"):
        unseen_reply_tokens(data, tok, counts[:-1])


# ---------------------------------------------------------------- the stages
def _tokens_without(src: Path, dst: Path, token: int) -> Path:
    """A copy of the tokens dir `src` whose train split never has `token`."""
    import numpy as np

    from jielong.tokens import load_split, read_meta

    dst.mkdir()
    meta = read_meta(src)
    train = np.asarray(load_split(src, "train"))
    train = train[train != token]
    train.tofile(dst / "train-00000.bin")
    (dst / "val-00000.bin").write_bytes((src / "val-00000.bin").read_bytes())
    (dst / "meta.json").write_text(json.dumps(meta | {"train_tokens": len(train)}))
    return dst


def _run_sft(tmp_path: Path, base: Path, world_dir: Path, tokens: Path, method: str,
             train_chat_tokens: bool = True) -> Path:
    from stages.sft import main as sft_main
    from stages.sft_data import main as data_main

    params = write_params(tmp_path / "params.yaml", {"sft": {
        "data": {"conversations": 80, "use_knows": False, "val_fraction": 0.2}, "method": method,
        "lora": {"r": 4, "alpha": 8.0, "train_chat_tokens": train_chat_tokens, "lr": 5e-3}, "epochs": 1.0, "batch_size": 8,
        "lr": 3e-3, "max_length": 192, "log_every": 2, "eval_every": 5,
        "generation": {"temperature": 0.5, "top_k": 7, "stop_strings": ["\n\n"]}}})
    data_main(["--world", str(world_dir), "--tokenizer", str(base), "--out", str(tmp_path / "sft_data"),
               "--params", str(params)])
    out = tmp_path / "model"
    sft_main(["--base", str(base), "--data", str(tmp_path / "sft_data"), "--tokens", str(tokens), "--out", str(out),
              "--metrics", str(tmp_path / "sft.json"), "--plots", str(tmp_path / "plots"), "--params", str(params)])
    return out


@pytest.mark.parametrize("method,train_chat_tokens", [("full", True), ("lora", True), ("lora", False)])
def test_sft_stage_writes_a_chat_model(tmp_path, tiny_base, tiny_world_dir, tiny_tokens_dir, method, train_chat_tokens):
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, GenerationConfig

    from jielong.tokens import token_counts
    from stages.sft import conversations as read_conversations
    from stages.sft import unseen_reply_tokens

    # a pretraining corpus that never has " do", as the default world's has not
    do = AutoTokenizer.from_pretrained(tiny_base).encode(" do", add_special_tokens=False)[0]
    tokens = _tokens_without(tiny_tokens_dir, tmp_path / "tokens", do)
    out = _run_sft(tmp_path, tiny_base, tiny_world_dir / "world", tokens, method, train_chat_tokens)
    m = json.loads((tmp_path / "sft.json").read_text())
    assert {"train_loss", "val_loss", "tokens_per_s", "tokens"} <= set(m) and m["tokens_per_s"] > 0
    assert m["lora"] == (method == "lora")
    files = {f.name for f in out.iterdir()}
    assert "model.safetensors" in files and not files & {"adapter_config.json", "adapter_model.safetensors"}
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.eos_token == END and tok.chat_template and "{% generation %}" in tok.chat_template
    g = GenerationConfig.from_pretrained(out)
    assert (g.temperature, g.top_k, g.stop_strings) == (0.5, 7, ["\n\n"])
    assert tok.convert_tokens_to_ids(END) in g.eos_token_id
    base, tuned = load_file(tiny_base / "model.safetensors"), load_file(out / "model.safetensors")
    assert set(base) == set(tuned)  # merged LoRA is a plain Llama state dict
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(base[q], tuned[q])
    emb = "model.embed_tokens.weight"
    chat = [tok.convert_tokens_to_ids(t) for t in WARM_START]
    unseen = unseen_reply_tokens(read_conversations(tmp_path / "sft_data" / "train.parquet", tok), tok, token_counts(tokens))
    assert do in unseen and m["unseen_reply_tokens"] == len(unseen) * m["lora"]  # "I do not know." trains " do"
    ordinary = [i for i in range(base[emb].shape[0]) if i not in chat + unseen]
    # LoRA leaves the embeddings of ordinary tokens alone and trains those of reply tokens pretraining never saw
    assert torch.equal(base[emb][ordinary], tuned[emb][ordinary]) == (method == "lora")
    assert all(not torch.equal(base[emb][i], tuned[emb][i]) for i in unseen)
    newline, stop = (tok.encode(t, add_special_tokens=False) for t in ("\n", "."))
    assert not torch.equal(base[emb][chat], tuned[emb][chat])
    warm = {USER: base[emb][newline].mean(0), ASSISTANT: base[emb][newline].mean(0), END: base[emb][stop].mean(0)}
    kept = {t: torch.equal(tuned[emb][tok.convert_tokens_to_ids(t)], v) for t, v in warm.items()}
    # frozen, the chat tokens would keep their warm start: <|end|> the very vector of "." (the tied head then
    # scores them alike) and <|user|> that of <|assistant|>; trained, they move apart
    assert kept == dict.fromkeys(warm, method == "lora" and not train_chat_tokens)
    assert torch.equal(tuned[emb][tok.convert_tokens_to_ids(END)], tuned[emb][stop[0]]) == kept[END]
    plots = (tmp_path / "plots" / "val.csv").read_text().splitlines()
    assert plots[0] == "step,val_loss" and len(plots) >= 3
    # each method trains at its own learning rate: sft.lora.lr for LoRA, sft.lr for full fine-tuning
    peak = max(float(line.split(",")[2]) for line in (tmp_path / "plots" / "train.csv").read_text().splitlines()[1:])
    assert 0.8 * (5e-3 if method == "lora" else 3e-3) < peak <= (5e-3 if method == "lora" else 3e-3)


def test_sft_data_refuses_a_missing_probe(tmp_path, tiny_base, tiny_world_dir):
    from stages.sft_data import main as data_main

    params = write_params(tmp_path / "params.yaml", {"sft": {"data": {"use_knows": True}}})
    with pytest.raises(SystemExit, match=r"knows\.parquet not found.*use_knows"):
        data_main(["--world", str(tiny_world_dir / "world"), "--knows", str(tmp_path / "knows.parquet"),
                   "--tokenizer", str(tiny_base), "--out", str(tmp_path / "out"), "--params", str(params)])
    assert not (tmp_path / "out").exists()


def test_talk_answers_a_file_of_prompts(tmp_path, tiny_base, tiny_world_dir, tiny_tokens_dir, capsys):
    from jielong.talk import main as talk_main

    model = _run_sft(tmp_path, tiny_base, tiny_world_dir / "world", tiny_tokens_dir, "full")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "When was Ada Quill born?"}) + "\n" + json.dumps(
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                      {"role": "user", "content": "Who are you?"}]}) + "\n")
    out = tmp_path / "answers.jsonl"
    talk_main([str(model), "--prompts", str(prompts), "--output", str(out), "--temperature", "0.9", "--top-k", "5",
               "--top-p", "0.9", "--repetition-penalty", "1.2", "--max-new-tokens", "6", "--stop", "xyz"])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 and all(isinstance(r["reply"], str) for r in rows)
    # self-consistency: k sampled replies decide one; a reply no two samples agree on becomes "I do not know."
    talk_main([str(model), "--prompts", str(prompts), "--output", str(out), "--self-consistency", "3",
               "--agreement", "1.0", "--max-new-tokens", "6"])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 and all(isinstance(r["reply"], str) and r["reply"] for r in rows)
    # base models continue raw text
    (tmp_path / "p.txt").write_text("Ada Quill was born in\n")
    talk_main([str(tiny_base), "--prompts", str(tmp_path / "p.txt"), "--greedy", "--max-new-tokens", "4"])
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["prompt"] == "Ada Quill was born in"
    with pytest.raises(SystemExit, match="self-consistency"):  # a base model's continuations are not answers
        talk_main([str(tiny_base), "--prompts", str(tmp_path / "p.txt"), "--self-consistency", "3"])
    with pytest.raises(SystemExit, match="K >= 2"):
        talk_main([str(model), "--prompts", str(prompts), "--self-consistency", "3", "--greedy"])


def test_talk_refuses_bad_input_naming_the_file_line_or_flag(tmp_path):
    """Bad prompts files, flags and model dirs stop before any generation (no model loads for the first
    two kinds: the model path here does not exist), each message naming what was wrong."""
    from jielong.talk import main as talk_main
    from jielong.talk import read_prompts

    cases = {"bad.jsonl": ('{"prompt": "Hi"}\n\n{"prompt": oops}\n', r"bad\.jsonl:3: not a JSON line"),
             "str.jsonl": ('"hello"\n', r"str\.jsonl:1: expected a JSON object, got str"),
             "num.jsonl": ('{"prompt": 3}\n', r"num\.jsonl:1: 'prompt' must be a string, got int"),
             "msg.jsonl": ('{"messages": "Hi"}\n', r"msg\.jsonl:1: 'messages' must be a non-empty list"),
             "none.jsonl": ('{"text": "Hi"}\n', r"none\.jsonl:1: expected a 'prompt' or 'messages'"),
             "empty.txt": ("\n  \n", r"empty\.txt has no prompt")}
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(SystemExit, match=message):
            read_prompts(tmp_path / name)
    with pytest.raises(SystemExit, match="is a directory"):
        read_prompts(tmp_path)
    nowhere = str(tmp_path / "no-model")
    for flags, message in [(["--temperature", "0"], r"--temperature must be > 0, got 0\.0 \(use --greedy"),
                           (["--top-p", "1.5"], r"--top-p must be in \(0, 1\], got 1\.5"),
                           (["--top-k", "-1"], r"--top-k must be >= 0 \(0: off\)"),
                           (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
                           (["--output", str(tmp_path / "nodir" / "a.jsonl")], "directory .*nodir does not exist"),
                           (["--prompts", str(tmp_path / "bad.jsonl")], r"bad\.jsonl:3")]:
        with pytest.raises(SystemExit, match=message):
            talk_main([nowhere, *flags])
    # a reward model is a model directory too, but it scores text rather than writing it
    reward = tmp_path / "reward"
    reward.mkdir()
    (reward / "config.json").write_text(json.dumps({"architectures": ["LlamaForSequenceClassification"]}))
    with pytest.raises(SystemExit, match="LlamaForSequenceClassification, not a language model"):
        talk_main([str(reward)])


def test_self_consistent_reply_needs_agreement():
    from jielong.generation import IDK, consistent_reply

    stated = ["Ada Quill was born in Lisbon.", "Ada Quill was born in Lisbon.", "Ada Quill was born in Porto."]
    assert consistent_reply(stated, 0.6) == "Ada Quill was born in Lisbon."  # 2 of 3 agree
    assert consistent_reply(stated, 0.7) == IDK  # 2 of 3 is not enough
    # abstentions count as one answer however worded, and a majority of them is an abstention
    assert consistent_reply(["I do not know.", "I do not know who Ada Quill is.", "Lisbon."], 0.4) == IDK
    assert consistent_reply(["Lisbon.", "lisbon", "Porto."], 0.6) == "Lisbon."  # compared normalised


def test_sft_params_reject_bad_method():
    with pytest.raises(ValueError, match="method"):
        params_section("sft", method="qlora")
