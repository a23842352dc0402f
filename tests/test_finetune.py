"""The finetune path: another architecture's checkpoint, its own tokenizer and chat template, your data.

The base models are built here, offline: a tokenizer trained with the `tokenizers` library, a chat
template without `{% generation %}` markers, a tiny random transformers model saved as safetensors.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import yaml

from .conftest import REPO

CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
# Zephyr's layout: BOS first, every turn closed by the end-of-text token itself
ZEPHYR = ("{{ bos_token }}{% for message in messages %}{{ '<|' + message['role'] + '|>\\n' + message['content'] + "
          "eos_token + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}")
TEXT = ["The capital of France is Paris.", "Water boils at one hundred degrees.", "Cats and dogs are pets.",
        "Hello, how are you today? I am fine, thank you.", "What is two plus two? Two plus two is four."] * 20


def tokenizer(kind: str):
    """A byte-level BPE trained on TEXT with the `kind` template's special tokens (`qwen2`: ChatML,
    a pad token; `gpt2`: Zephyr's layout with BOS/EOS and no pad token, as GPT-2 ships)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = {"qwen2": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                "gpt2": ["<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]}[kind]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(TEXT, trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if kind == "qwen2":
        return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                       additional_special_tokens=specials[1:], chat_template=CHATML)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>",
                                   additional_special_tokens=specials[2:], chat_template=ZEPHYR)


def base_model(out: Path, kind: str) -> Path:
    """A tiny random `kind` model (transformers' Qwen2 or GPT-2) with its tokenizer, as safetensors."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, Qwen2Config, Qwen2ForCausalLM

    tok = tokenizer(kind)
    torch.manual_seed(0)
    ids = {"bos_token_id": tok.bos_token_id or tok.eos_token_id, "eos_token_id": tok.eos_token_id}
    if kind == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                             max_position_embeddings=256, **ids))
    else:
        model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=256, **ids))
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bases")
    return {kind: base_model(root / kind, kind) for kind in ("qwen2", "gpt2")}


# ---------------------------------------------------------------- the assistant mask
CONVERSATION = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "What is two plus two?"},
                {"role": "assistant", "content": "Four."},
                {"role": "user", "content": "And the capital of France?"},
                {"role": "assistant", "content": "Paris."}]


def masked_runs(tok, enc) -> list[str]:
    """The decoded text of each run of consecutive assistant tokens."""
    runs, current = [], []
    for i, keep in zip(enc["input_ids"], enc["assistant_masks"], strict=True):
        if keep:
            current.append(i)
        elif current:
            runs.append(current)
            current = []
    runs += [current] if current else []
    return [tok.decode(r) for r in runs]


@pytest.mark.parametrize("kind, expected", [
    # checked by hand: each reply and the token that closes its turn, nothing of the prompt, no newline after
    ("qwen2", ["Four.<|im_end|>", "Paris.<|im_end|>"]),
    ("gpt2", ["Four.</s>", "Paris.</s>"]),
])
def test_the_assistant_mask_of_a_template_without_generation_markers(kind, expected):
    from jielong import templates

    tok = tokenizer(kind)
    assert not templates.has_generation_markers(tok)
    enc = templates.encode_with_mask(tok, CONVERSATION)
    assert enc["input_ids"] == tok.apply_chat_template(CONVERSATION, tokenize=True, return_dict=True)["input_ids"]
    assert masked_runs(tok, enc) == expected
    assert templates.turn_end(tok) == expected[0].removeprefix("Four.")


def test_the_computed_mask_equals_the_generation_markers_mask(tiny_tokenizer_dir):
    """On jielong's own template, the mask computed from rendered prefixes is the one its markers give."""
    from transformers import PreTrainedTokenizerFast

    from jielong import templates

    tok = PreTrainedTokenizerFast.from_pretrained(tiny_tokenizer_dir / "tok")
    marked = tok.apply_chat_template(CONVERSATION, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    tok.chat_template = tok.chat_template.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    computed = templates.encode_with_mask(tok, CONVERSATION)
    assert computed["input_ids"] == marked["input_ids"]
    assert computed["assistant_masks"] == marked["assistant_masks"] and sum(computed["assistant_masks"]) > 4


def test_a_template_that_rewrites_earlier_turns_is_refused():
    from jielong import templates

    tok = tokenizer("qwen2")
    # shows only the last assistant turn: the rendering of the first changes once a second follows
    tok.chat_template = CHATML.replace("{% for message in messages %}",
                                       "{% for message in messages %}{% if message['role'] != 'assistant' or loop.last %}"
                                       ).replace("{% endfor %}", "{% endif %}{% endfor %}")
    with pytest.raises(ValueError, match="assistant turn 2 differently"):
        templates.encode_with_mask(tok, CONVERSATION)


def test_a_tokenizer_without_a_chat_template_is_refused_naming_the_stage_and_dir(tiny_tokenizer_dir, tmp_path):
    """Every stage that renders conversations loads its tokenizer through templates.chat_tokenizer."""
    from transformers import PreTrainedTokenizerFast

    from jielong import templates

    assert templates.chat_tokenizer(tiny_tokenizer_dir / "tok", "sft").chat_template
    tok = PreTrainedTokenizerFast.from_pretrained(tiny_tokenizer_dir / "tok")
    tok.chat_template = None
    tok.save_pretrained(tmp_path / "plain")
    (tmp_path / "plain" / "chat_template.jinja").unlink(missing_ok=True)
    with pytest.raises(SystemExit, match=rf"reward: the tokenizer in {tmp_path}/plain has no chat template \(an SFT"):
        templates.chat_tokenizer(tmp_path / "plain", "reward")


# ---------------------------------------------------------------- your data
QUESTIONS = [("What is two plus two?", "Four."), ("What is the capital of France?", "Paris."),
             ("Are cats pets?", "Yes, cats are pets."), ("At what temperature does water boil?", "At one hundred degrees."),
             ("How are you today?", "I am fine, thank you.")]


def user_data(root: Path) -> dict[str, list[str]]:
    """SFT conversations (gzipped JSONL), preference pairs (JSONL, both of TRL's forms) and prompts (Parquet)."""
    import gzip

    import polars as pl

    root.mkdir(parents=True, exist_ok=True)
    sft = []
    for i in range(24):
        (q1, a1), (q2, a2) = QUESTIONS[i % 5], QUESTIONS[(i + 2) % 5]
        turns = [{"role": "user", "content": q1}, {"role": "assistant", "content": a1}]
        if i % 2:
            turns += [{"role": "user", "content": q2}, {"role": "assistant", "content": a2}]
        if i % 3 == 0:
            turns = [{"role": "system", "content": "Be brief."}, *turns]
        sft.append({"id": f"c{i}", "messages": turns, "source": "hand-written"})
    with gzip.open(root / "sft.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in sft)
    prefs = []
    for i in range(24):
        q, a = QUESTIONS[i % 5]
        if i % 2:
            prefs.append({"id": f"p{i}", "prompt": [{"role": "user", "content": q}], "kind": "wrong",
                          "chosen": [{"role": "assistant", "content": a}],
                          "rejected": [{"role": "assistant", "content": QUESTIONS[(i + 1) % 5][1]}]})
        else:
            prefs.append({"id": f"p{i}", "prompt": q, "chosen": a, "rejected": "I am so sorry. " + a, "kind": "apology"})
    (root / "prefs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in prefs))
    pl.DataFrame({"prompt": [[{"role": "user", "content": q}] for q, _ in QUESTIONS * 2]}).write_parquet(
        root / "prompts.parquet")
    return {"sft": [str(root / "sft.jsonl.gz")], "prefs": [str(root / "prefs.jsonl")],
            "prompts": [str(root / "*.parquet")]}


ARC = [{"id": f"q{i}", "question": q, "answerKey": "A",
        "choices": {"text": [a, QUESTIONS[(i + 1) % 5][1]], "label": ["A", "B"]}} for i, (q, a) in enumerate(QUESTIONS)]


def finetune_params(root: Path, base: Path, data: dict) -> Path:
    """params.yaml with the finetune profile over it, tiny sizes, and `base` and `data` as the user's."""
    from jielong.profile import merge

    from .conftest import default_params

    (root / "arc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ARC))
    profile = yaml.safe_load((REPO / "profiles" / "finetune.yaml").read_text())
    tiny = {"epochs": 1.0, "batch_size": 4, "grad_accum": 1, "max_length": 128, "log_every": 1, "eval_every": 100,
            "threads": 1}
    params = merge(merge(default_params(), profile), {
        "data_roots": ["data", str(root), str(base.parent)],
        "finetune": {"base": str(base), **data, "val_fraction": 0.25},
        "sft": {**tiny, "lora": {"r": 4}, "generation": {"max_new_tokens": 8}},
        "reward": tiny, "dpo": tiny,
        "ppo": {"iterations": 1, "rollouts": 4, "minibatch_size": 2, "epochs": 1, "heldout_prompts": 2,
                "max_new_tokens": 6, "max_kl": 100.0, "threads": 1},
        "eval": {"benchmarks": {"arc_easy": str(root / "arc.jsonl")}, "num_fewshot": {"arc_easy": 0}, "batch_size": 8,
                 "bootstrap_iters": 0, "dtype": "float32"},
    })
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def pipeline(params: dict) -> list[list[str]]:
    """finetune/dvc.yaml's commands in its order (already the graph's), ${finetune.*} and each foreach filled in."""
    import re

    stages = yaml.safe_load((REPO / "finetune" / "dvc.yaml").read_text())["stages"]
    commands = []
    for stage in stages.values():
        body = stage.get("do", stage)
        for item in stage.get("foreach", [None]):
            cmd = re.sub(r"\$\{finetune\.(\w+)\}", lambda m: str(params["finetune"][m[1]]), body["cmd"])
            commands.append(shlex.split(cmd.replace("${item}", str(item))))
    return commands


@pytest.mark.parametrize("kind", ["qwen2", "gpt2"])
def test_the_finetune_pipeline_runs_end_to_end_on_another_architecture(kind, bases, tmp_path, monkeypatch):
    """finetune/dvc.yaml's stages, run as DVC runs them (from the repository root, in its order) on a base
    model that is no Llama, with its own tokenizer and a chat template without generation markers."""
    import importlib

    from transformers import AutoModelForCausalLM, AutoTokenizer

    params = finetune_params(tmp_path, bases[kind], user_data(tmp_path / "input"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "evals").symlink_to(REPO / "evals")
    for cmd in pipeline(yaml.safe_load(params.read_text())):
        assert cmd[:2] == ["python", "-m"], cmd
        importlib.import_module(cmd[2]).main([*cmd[3:], "--params", str(params)])

    from stages.sft import conversations

    # no generation markers: SFT reads the conversations tokenised, with the mask computed from the template
    train = conversations(tmp_path / "data/finetune/data/sft/train.parquet", tokenizer(kind))
    assert train.column_names == ["input_ids", "assistant_masks"] and all(any(m) for m in train["assistant_masks"])
    summary = json.loads((tmp_path / "data/finetune/data/summary.json").read_text())
    assert summary["sft.train"] + summary["sft.val"] == 24 and summary["prompts"] == 10
    sft = tmp_path / "data/finetune/models/sft"
    tok = AutoTokenizer.from_pretrained(sft)
    end = {"qwen2": "<|im_end|>", "gpt2": "</s>"}[kind]
    assert tok.eos_token == end and tok.pad_token is not None and "{% generation %}" not in tok.chat_template
    model = AutoModelForCausalLM.from_pretrained(sft)
    assert model.config.model_type == kind and model.generation_config.eos_token_id[0] == tok.convert_tokens_to_ids(end)
    metrics = {name: json.loads((tmp_path / f"metrics/finetune/{name}.json").read_text())
               for name in ("sft", "reward", "dpo", "ppo")}
    assert metrics["sft"]["steps"] >= 1 and metrics["sft"]["lora"] == 1
    assert {"pairwise_acc.wrong", "pairwise_acc.apology"} <= set(metrics["reward"]) and "people" not in metrics["reward"]
    assert "gold_reward" not in metrics["dpo"] and "gold_reward" not in metrics["ppo"]
    for name in ("sft", "dpo", "ppo"):
        scored = json.loads((tmp_path / f"metrics/finetune/eval/{name}.json").read_text())
        assert scored["arc_easy.items"] == len(ARC) and 0 <= scored["arc_easy.acc"] <= 1
        assert not any(k.startswith("world_") for k in scored)


def test_bad_records_fail_naming_file_row_and_field(bases, tmp_path):
    from jielong.checks import ExpectationFailed
    from stages.finetune_data import main

    base = bases["qwen2"]
    data = tmp_path / "input"
    data.mkdir()
    good = {"id": "twice", "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}
    lines = [good, {"messages": [{"role": "user", "content": "Hi"}, {"role": "bot", "content": "Hello."}]},
             {"messages": [{"role": "user", "content": "Hi"}]}, {"text": "no messages"}, good,
             {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "word " * 200}]}]
    (data / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines) + "{not json\n")
    (data / "prefs.jsonl").write_text(json.dumps({"prompt": "Hi", "chosen": "Hello.", "rejected": "Hello."}) + "\n")
    params = finetune_params(tmp_path, base, {"sft": [str(data / "sft.jsonl")], "prefs": [], "prompts": []})
    with pytest.raises(ExpectationFailed) as err:
        main(["--base", str(base), "--out", str(tmp_path / "out"), "--params", str(params)])
    msg = str(err.value)
    for problem in ["sft.jsonl: row 2: messages[1].role: expected one of system, user, assistant (got 'bot')",
                    "sft.jsonl: row 3: messages: must end on an assistant turn (ends on 'user')",
                    "sft.jsonl: row 4: messages: missing (fields present: ['text'])",
                    "sft.jsonl: row 6: messages: ", "above sft.max_length = 128",
                    "sft.jsonl: row 7: not JSON", "expect_column_values_to_be_unique"]:  # rows 1 and 5: one id
        assert problem in msg, problem
    assert not (tmp_path / "out").exists()

    params = finetune_params(tmp_path, base, {"sft": [], "prefs": [str(data / "prefs.jsonl")], "prompts": []})
    with pytest.raises(ExpectationFailed, match=r"prefs.jsonl: row 1: rejected: the same text as chosen"):
        main(["--base", str(base), "--out", str(tmp_path / "out"), "--params", str(params)])
    params = finetune_params(tmp_path, base, {"sft": [str(data / "nope*.jsonl")], "prefs": [], "prompts": []})
    with pytest.raises(SystemExit, match=r"finetune.sft\[0\] = '.*nope\*.jsonl': no such file \(the glob matches none\)"):
        main(["--base", str(base), "--out", str(tmp_path / "out"), "--params", str(params)])


def test_the_finetune_pipeline_is_off_until_its_profile_is_applied(tmp_path):
    """DVC collects every dvc.yaml for `dvc status` and `dvc metrics show`: the main graph's would list the
    never-run finetune stages (and the e2e test's clean status would fail), so .dvcignore hides them."""
    import shutil

    from jielong.profile import PIPELINES, apply

    assert PIPELINES["finetune"] in (REPO / ".dvcignore").read_text().splitlines()
    for name in ("params.yaml", ".dvcignore"):
        shutil.copy(REPO / name, tmp_path / name)
    apply("finetune", tmp_path / "params.yaml")
    ignore = (tmp_path / ".dvcignore").read_text()
    assert "/finetune/" not in ignore.splitlines() and ignore.startswith((REPO / ".dvcignore").read_text()[:40])
