"""How a reward model reads a conversation: the encoding of prompt + reply, and batched scoring.

The reward model (stages/reward.py) is a sequence classifier that reads its one score at the last
non-pad token, so training and every later use (PPO scoring its rollouts, evaluation) must render a
conversation the same way. The rendering is the chat template's, whole, as TRL's RewardTrainer
tokenises conversational pairs and as stages/ppo.py re-renders its rollouts:

    <|user|> question<|end|>\\n<|assistant|> reply<|end|>\\n

A raw PPO rollout (generation prompt + reply tokens + <|end|>) lacks only the closing newline; its
decoded reply starts with the template's space, which `jielong.chat.reply_text` removes first.
"""

from __future__ import annotations

import numpy as np
import torch


def encode(tok, prompt: list[dict], reply: str) -> list[int]:
    """Token ids of `prompt` (chat messages ending on the user) answered by `reply`, through the chat template."""
    return tok.apply_chat_template(prompt + [{"role": "assistant", "content": reply}], tokenize=True,
                                   return_dict=True)["input_ids"]


@torch.no_grad()
def score(model, pad_id: int, sequences: list[list[int]], batch_size: int = 32) -> np.ndarray:
    """The reward model's score of each token sequence (right-padded batches, in the given order)."""
    model.eval()
    device = next(model.parameters()).device
    scores = []
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start:start + batch_size]
        width = max(len(x) for x in chunk)
        input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, x in enumerate(chunk):
            input_ids[row, :len(x)], mask[row, :len(x)] = torch.as_tensor(x), 1
        logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits
        scores.append(logits[:, 0].float().cpu().numpy())
    return np.concatenate(scores) if scores else np.zeros(0, dtype=np.float32)


__all__ = ["encode", "score"]
