"""Special tokens and the chat template every jielong tokenizer carries.

The template marks each turn with its role token and ends it with `<|end|>`:

    <|system|> You are a helpful assistant.<|end|>
    <|user|>Q: Where was Ada Dunmore born?<|end|>
    <|assistant|> A: Lisbon<|end|>

Assistant content is inside `{% generation %}`, so transformers' `apply_chat_template(...,
return_assistant_tokens_mask=True)` returns which tokens are the assistant's: SFT puts its loss
exactly there, on every turn.

Inside the role markers a turn reads like the question-and-answer pages of the crawl ("Q: ... A:
...", jielong/world/crawl.py faq_pages): SFT then has to teach the role tokens, not a new way of
asking, and reaches what pretraining stored (docs/findings.md "Chat format and chat tokens").

A reply opens with one space, and the generation prompt ends on "A:". Byte-level BPE tokenises a word
differently after a space (" Plovdiv", one token) and at the start of a line ("P" "lovdiv");
pretraining saw every fact mid-sentence, after a space. `reply_text` takes that space off.
"""

from __future__ import annotations

EOT = "<|endoftext|>"  # document boundary in pretraining; BOS/EOS of the base model
PAD = "<|pad|>"
SYSTEM, USER, ASSISTANT = "<|system|>", "<|user|>", "<|assistant|>"
END = "<|end|>"  # end of one chat turn; generation of a chat model stops here
CHAT_TOKENS = [SYSTEM, USER, ASSISTANT, END]  # the tokens only chat data has
SPECIAL_TOKENS = [EOT, PAD, *CHAT_TOKENS]

# Literal newlines are emitted as {{ '\n' }} expressions: the `{%-`/`-%}` whitespace control that keeps
# the template readable would otherwise strip them.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{ '<|assistant|> A:' }}{% generation %}{{ ' ' + message['content'] + '<|end|>' }}{% endgeneration %}{{ '\\n' }}"
    "{%- elif message['role'] == 'user' -%}"
    "{{ '<|user|>Q: ' + message['content'] + '<|end|>\\n' }}"
    "{%- elif message['role'] == 'system' -%}"
    "{{ '<|system|> ' + message['content'] + '<|end|>\\n' }}"
    "{%- else -%}"
    "{{ raise_exception('unknown chat role: ' + message['role']) }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|> A:' }}{%- endif -%}"
)


def is_chat_tokenizer(tok) -> bool:
    """Whether `tok` is a chat model's, as SFT saves it: the chat template and <|end|> as EOS. A base model's
    tokenizer carries the template too (the tokenizer stage writes it) but ends on <|endoftext|>."""
    return tok.chat_template is not None and tok.eos_token == END


def reply_text(decoded: str) -> str:
    """A generated reply as its author meant it: without the one space the template opens it with."""
    return decoded.removeprefix(" ")


# The plain text each chat token's embedding starts from before SFT. Pretraining never saw these tokens,
# so their rows of the (tied) embedding held only what weight decay and the push away from every
# prediction left: the base model's loss on them was huge, and the first SFT steps' large gradients
# wrecked what it had stored. Started from the separators pretraining knows (a line break before a
# turn, a full stop ending one), SFT starts from a far lower loss and the SFT model answers far more
# facts (docs/findings.md "Chat format and chat tokens").
# (transformers' resize_token_embeddings initialises *new* rows from the mean embedding; these rows
# exist already, and the mean is no separator.)
WARM_START = {SYSTEM: "\n", USER: "\n", ASSISTANT: "\n", END: "."}


def warm_start_chat_tokens(model, tok) -> dict[str, str]:
    """Copy into each chat token's input (and, when tied, output) embedding the mean embedding of its
    WARM_START text's tokens. Returns {token: text} as applied."""
    import torch

    weight = model.get_input_embeddings().weight
    with torch.no_grad():
        for token, text in WARM_START.items():
            ids = tok.encode(text, add_special_tokens=False)
            weight[tok.convert_tokens_to_ids(token)] = weight[ids].mean(0)
    return dict(WARM_START)
