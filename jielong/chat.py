"""Special tokens and the chat template every jielong tokenizer carries.

The template wraps each turn as `<|role|>\\n content <|end|>\\n`. Assistant content is inside
`{% generation %}` so transformers' `apply_chat_template(..., return_assistant_tokens_mask=True)`
returns which tokens are the assistant's: SFT puts its loss exactly there, on every turn.
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
    "{{ '<|assistant|>\\n' }}{% generation %}{{ message['content'] + '<|end|>' }}{% endgeneration %}{{ '\\n' }}"
    "{%- elif message['role'] in ['system', 'user'] -%}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{%- else -%}"
    "{{ raise_exception('unknown chat role: ' + message['role']) }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>\\n' }}{%- endif -%}"
)
