"""The finetune path: another architecture's checkpoint, its own tokenizer and chat template, your data.

The base models are built here, offline: a tokenizer trained with the `tokenizers` library, a chat
template without `{% generation %}` markers, a tiny random transformers model saved as safetensors.
"""

from __future__ import annotations

from pathlib import Path

import pytest

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
