"""Special tokens and the chat template every jielong tokenizer carries.

The template wraps each turn as `<|role|> content<|end|>\\n`. Assistant content is inside
`{% generation %}` so transformers' `apply_chat_template(..., return_assistant_tokens_mask=True)`
returns which tokens are the assistant's: SFT puts its loss exactly there, on every turn.

Content opens with one space after the role token, and the generation prompt ends on the role token.
Byte-level BPE tokenises a word differently after a space (" Plovdiv", one token) and at the start of
a line ("P" "lovdiv"); pretraining saw every fact mid-sentence, after a space. With `\\n` after the role
token, an answer was a token sequence the base model had never tied to the person, and SFT could not
reach what pretraining stored (measured: exact match 0.05 where the base model recalled 68% of facts).
The generated reply therefore starts with that space: `reply_text` takes it off.
"""

from __future__ import annotations

EOT = "<|endoftext|>"  # document boundary in pretraining; BOS/EOS of the base model
PAD = "<|pad|>"
SYSTEM, USER, ASSISTANT = "<|system|>", "<|user|>", "<|assistant|>"
END = "<|end|>"  # end of one chat turn; generation of a chat model stops here
SPECIAL_TOKENS = [EOT, PAD, SYSTEM, USER, ASSISTANT, END]

# Literal newlines are emitted as {{ '\n' }} expressions: the `{%-`/`-%}` whitespace control that keeps
# the template readable would otherwise strip them.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{ '<|assistant|>' }}{% generation %}{{ ' ' + message['content'] + '<|end|>' }}{% endgeneration %}{{ '\\n' }}"
    "{%- elif message['role'] in ['system', 'user'] -%}"
    "{{ '<|' + message['role'] + '|> ' + message['content'] + '<|end|>\\n' }}"
    "{%- else -%}"
    "{{ raise_exception('unknown chat role: ' + message['role']) }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>' }}{%- endif -%}"
)


def reply_text(decoded: str) -> str:
    """A generated reply as its author meant it: without the one space the template opens it with."""
    return decoded.removeprefix(" ")
