"""Any model's chat template: which tokens are the assistant's, where a turn ends, what pads.

jielong's own template marks each reply with `{% generation %}` (jielong/chat.py), and transformers
returns the assistant mask from those markers. Most released templates (ChatML, Llama 3, Mistral ...)
have no markers, so the mask is computed here from the template itself: rendering the conversation
up to each assistant turn with the generation prompt, and then through that turn, gives the turn's
characters; a token is the assistant's when it starts inside one of them. That covers the reply and
the turn's closing token (`<|im_end|>`), so the model learns to stop, and leaves out the whitespace the
template writes after it. It needs a template that renders a conversation's earlier turns the same
whatever follows (true of ChatML, Llama, Mistral, Gemma); one that rewrites earlier turns (dropping
old reasoning, say) is refused naming the turn.

`turn_end` finds the token a reply ends with the same way, so a fine-tuned model's tokenizer and
generation config stop there whatever the template calls it.
"""

from __future__ import annotations

PROBE = "jielong-reply-probe"  # a reply no template rewrites, to find what surrounds one


def chat_tokenizer(path, stage: str, expected: str = "an SFT model dir expected"):
    """The tokenizer in `path`, refused (naming the stage, the path and what was expected there) when it
    has no chat template: every stage that renders conversations needs one."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if not tok.chat_template:
        raise SystemExit(f"{stage}: the tokenizer in {path} has no chat template ({expected})")
    return tok


def has_generation_markers(tok) -> bool:
    template = tok.chat_template if isinstance(tok.chat_template, str) else ""
    return "{% generation %}" in template or "{%- generation %}" in template


def render(tok, messages: list[dict], generation_prompt: bool = False) -> str:
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def assistant_spans(tok, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """(the rendered conversation, [start, end) character spans of every assistant turn in it)."""
    full = render(tok, messages)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render(tok, messages[:i], generation_prompt=True)
        through = render(tok, messages[:i + 1])
        if not (through.startswith(before) and full.startswith(through)):
            raise ValueError(f"the chat template renders the turns before assistant turn {i} differently once that "
                             "turn or a later one follows; its assistant tokens cannot be found by rendering prefixes "
                             "(give it {% generation %} markers)")
        spans.append((len(before), len(through.rstrip())))
    return full, spans


def encode_with_mask(tok, messages: list[dict]) -> dict:
    """`input_ids` of the conversation through the chat template and `assistant_masks` (1: an assistant
    token), as transformers' return_assistant_tokens_mask gives for a template with generation markers."""
    if has_generation_markers(tok):
        enc = tok.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        return {"input_ids": list(enc["input_ids"]), "assistant_masks": list(enc["assistant_masks"])}
    text, spans = assistant_spans(tok, messages)
    # the template writes its own special tokens (BOS included), so the tokenizer adds none
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = [int(any(a <= start < b for a, b in spans)) for start, _ in enc["offset_mapping"]]
    return {"input_ids": list(enc["input_ids"]), "assistant_masks": mask}


def turn_end(tok) -> str:
    """The token an assistant turn ends with (`<|im_end|>`, `<|eot_id|>`, jielong's `<|end|>`), found by
    rendering a reply; a template that ends a reply with no single token of the vocabulary is refused,
    since generation could not stop there."""
    messages = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": PROBE}]
    _, [(start, end)] = assistant_spans(tok, messages)
    turn = render(tok, messages)[start:end]
    tail = turn[turn.index(PROBE) + len(PROBE):].strip() if PROBE in turn else ""
    if not tail or tok.convert_tokens_to_ids(tail) in (None, tok.unk_token_id):
        raise ValueError(f"the chat template ends an assistant turn with {tail!r}, not one token of the vocabulary; "
                         "a fine-tuned model could not stop its replies")
    return tail


def pad_token(tok, preferred: str | None = None) -> str:
    """The pad token: `preferred` where the vocabulary has it (jielong's <|pad|>), else the tokenizer's
    own, else its end-of-text token (GPT-2 and Llama tokenizers ship without a pad token)."""
    if preferred is not None and preferred in tok.get_vocab():
        return preferred
    if tok.pad_token is not None:
        return tok.pad_token
    if tok.eos_token is None:
        raise ValueError("the tokenizer has neither a pad token nor an end-of-text token to pad with")
    return tok.eos_token
