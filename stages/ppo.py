"""RLHF with PPO: the SFT model learns from the reward model's scores, kept near itself by a KL penalty.

    python -m stages.ppo --sft data/models/sft --reward data/models/reward --world data/world \
        --out data/models/ppo --metrics metrics/ppo.json --plots plots/ppo

Four models, as in Ouyang et al. 2022 and the "N implementation details of RLHF with PPO" write-up:
- actor: the policy being trained, initialised from the SFT model;
- reference: a frozen copy of the SFT model; the KL to it is paid as a penalty on every token;
- critic: a value model, initialised from the reward model (its transformer and its `score` head,
  read at every position instead of only the last), trained to predict the return from each token;
- reward model: frozen; scores the whole conversation at its last token, exactly as it was trained.

Each iteration samples a batch of rl-split questions (sft and evaluation people never appear), rolls out
one reply each by sampling from the actor, scores the replies, turns scores and KL into per-token
rewards, estimates advantages with GAE, and runs a few epochs of clipped policy and value updates
over minibatches of the batch. The math lives in jielong/ppo.py; this file is the loop around it.

Every reply also gets the world's gold reward (jielong/grading.gold_reward), logged beside the
trained reward, so plots/ppo/train.csv shows proxy reward and gold reward against KL over training, and
reward over-optimisation (proxy up, gold down) is visible. `ppo.reward` picks what is trained on: the
reward model (`model`: the gold reward is then only watched), the world's truth as a verifiable
reward (`judge`, params.yaml's choice), or their sum. Before and after training the stage rolls
out a held-out batch of rl-split questions: metrics/ppo.json holds the final policy's reward,
gold reward and KL there (and the SFT model's, under `sft.`). A final KL above ppo.max_kl fails the
stage. The output is a plain HF dir with the SFT model's tokenizer and generation_config.json.
"""

from __future__ import annotations

import argparse
import math
import shutil
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    GenerationConfig,
)

from jielong import templates
from jielong.chat import PAD, reply_text
from jielong.grading import gold_reward
from jielong.io import atomic_dir, write_csv
from jielong.log import get_logger, progress, run
from jielong.metrics import write_metrics
from jielong.model import save_tokenizer, validate_model
from jielong.params import load
from jielong.ppo import (
    AdaptiveKLController,
    FixedKLController,
    entropy_from_logits,
    gae,
    kl_penalty,
    logprobs_from_logits,
    masked_mean,
    masked_whiten,
    policy_loss,
    response_mask,
    token_rewards,
    value_loss,
)
from jielong.reward_model import encode, score
from jielong.world.people import attribute_values

log = get_logger("ppo")


# ---------------------------------------------------------------- prompts
def load_questions(world: Path, n_heldout: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(train rows, held-out rows): rl-split questions, a seeded `n_heldout` of them never trained on.

    Each row gets `values`, every value its attribute takes in the world (as the eval sets carry them),
    which gold_reward needs to recognise a confident answer that is none of the item's own choices.
    """
    q = pl.read_parquet(world / "questions.parquet")
    if "rl" not in set(q["split"].to_list()):
        raise SystemExit(f"ppo: {world}/questions.parquet has no rl-split people (its splits: "
                         f"{sorted(set(q['split'].to_list()))}); PPO learns on rl people only: re-run the world stage")
    rows = q.filter(pl.col("split") == "rl").join(attribute_values(q), on="attribute", how="left").sort("qid").to_dicts()
    if len(rows) <= n_heldout:
        raise SystemExit(f"ppo: {len(rows)} rl-split questions in {world}, not enough to hold out "
                         f"ppo.heldout_prompts={n_heldout} and train on the rest")
    order = np.random.default_rng(seed).permutation(len(rows))
    return [rows[i] for i in order[n_heldout:]], [rows[i] for i in order[:n_heldout]]


def load_prompts(path: Path, n_heldout: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(train rows, held-out rows) of your own prompt set (finetune_data's prompts.parquet), `prompt` turns
    each, a seeded `n_heldout` of them never trained on."""
    rows = pl.read_parquet(path).to_dicts()
    if len(rows) <= n_heldout:
        raise SystemExit(f"ppo: {len(rows)} prompts in {path}, not enough to hold out ppo.heldout_prompts={n_heldout} "
                         "and train on the rest")
    order = np.random.default_rng(seed).permutation(len(rows))
    return [rows[i] for i in order[n_heldout:]], [rows[i] for i in order[:n_heldout]]


def prompt_messages(row: dict) -> list[dict]:
    """A world question as one user turn, or a prompt set's own turns."""
    return row["prompt"] if "prompt" in row else [{"role": "user", "content": row["question"]}]


def left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts padded on the left, so every row's reply starts at the same position."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        ids[row, width - len(s):], mask[row, width - len(s):] = torch.tensor(s), 1
    return ids, mask


# ---------------------------------------------------------------- the four models
class Critic(torch.nn.Module):
    """The value model: the reward model's transformer with its `score` head applied at every position."""

    def __init__(self, reward_model):
        super().__init__()
        self.backbone, self.head = reward_model.base_model, reward_model.score

    def forward(self, input_ids, attention_mask, position_ids) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                               use_cache=False).last_hidden_state
        return self.head(hidden).squeeze(-1).float()


def load_models(sft: Path, reward: Path, device: torch.device):
    """(actor, reference, critic, reward model); only the actor and the critic are trainable."""
    actor = AutoModelForCausalLM.from_pretrained(sft, dtype=torch.float32).to(device)
    reference = AutoModelForCausalLM.from_pretrained(sft, dtype=torch.float32).to(device)
    critic = Critic(AutoModelForSequenceClassification.from_pretrained(reward, dtype=torch.float32)).to(device)
    reward_model = AutoModelForSequenceClassification.from_pretrained(reward, dtype=torch.float32).to(device)
    for frozen in (reference, reward_model):
        frozen.requires_grad_(False)
    # no dropout anywhere: the log-probs of the update's first step must equal the rollout's (ratio 1)
    for model in (actor, reference, critic, reward_model):
        model.eval()
    return actor, reference, critic, reward_model


# ---------------------------------------------------------------- rollouts
def sequence_inputs(query, query_mask, response, mask) -> dict:
    """Prompt + reply as one forward pass's inputs; positions count real tokens only (left padding)."""
    attention = torch.cat([query_mask, mask], dim=1)
    positions = (attention.cumsum(1) - 1).clamp(min=0)
    return {"input_ids": torch.cat([query, response], dim=1), "attention_mask": attention, "position_ids": positions}


def response_logits(model, inputs: dict, n_response: int, temperature: float) -> torch.Tensor:
    """Logits [batch, n_response, vocab] that predicted each reply token, scaled as when sampling."""
    # the logits at position t predict token t + 1: keep the last n + 1 positions and drop the final one
    logits = model(**inputs, use_cache=False, logits_to_keep=n_response + 1).logits[:, :-1]
    return logits.float() / temperature


def response_values(critic, inputs: dict, n_response: int) -> torch.Tensor:
    """The critic's value [batch, n_response] of the state before each reply token."""
    return critic(**inputs)[:, -n_response - 1:-1]


def reward_scores(reward_model, tok, prompts: list[list[dict]], replies: list[str]) -> torch.Tensor:
    """The reward model's score of each conversation, rendered by the chat template as in its training.

    The reward model learnt on `... <|assistant|> reply<|end|>\\n`, right-padded; scoring the same
    rendering (jielong.reward_model, shared with the reward stage) keeps it in distribution. One batch.
    """
    ids = [encode(tok, m, r) for m, r in zip(prompts, replies, strict=True)]
    return torch.from_numpy(score(reward_model, tok.pad_token_id, ids, batch_size=len(ids)))


@torch.no_grad()
def rollout(actor, reference, critic, reward_model, tok, rows: list[dict], p) -> dict:
    """Sample one reply per question and score it: every tensor PPO needs, plus the texts and gold rewards.

    `critic` may be None (held-out evaluation): then no values.
    """
    device = next(actor.parameters()).device
    eos_id, pad_id = tok.eos_token_id, tok.pad_token_id
    query, query_mask = left_pad([tok.apply_chat_template(prompt_messages(r), add_generation_prompt=True,
                                                          tokenize=True, return_dict=True)["input_ids"]
                                  for r in rows], pad_id)
    query, query_mask = query.to(device), query_mask.to(device)
    sequences = actor.generate(input_ids=query, attention_mask=query_mask)
    response = sequences[:, query.shape[1]:]
    mask = response_mask(response, eos_id, pad_id)
    inputs, n = sequence_inputs(query, query_mask, response, mask), response.shape[1]

    logits = response_logits(actor, inputs, n, p.temperature)
    batch = {"inputs": inputs, "response": response, "mask": mask,
             "logprobs": logprobs_from_logits(logits, response),
             "entropy": masked_mean(entropy_from_logits(logits), mask).item(),
             "ref_logprobs": logprobs_from_logits(response_logits(reference, inputs, n, p.temperature), response)}
    del logits
    if critic is not None:
        batch["values"] = torch.where(mask.bool(), response_values(critic, inputs, n), 0)

    lengths = mask.sum(1)
    ended = ((response == eos_id) & mask.bool()).any(1)
    reply_ids = [response[i, :int(lengths[i]) - int(ended[i])].tolist() for i in range(len(rows))]
    # the reward model reads special tokens as the policy wrote them (a reply that opens a new <|user|>
    # turn should be judged as one); the gold reward and the logs read the text a user would see
    for_rm = [reply_text(t) for t in tok.batch_decode(reply_ids, skip_special_tokens=False)]
    batch["texts"] = [reply_text(t) for t in tok.batch_decode(reply_ids, skip_special_tokens=True)]
    batch["rm_scores"] = reward_scores(reward_model, tok, [prompt_messages(r) for r in rows], for_rm).to(device)
    batch["ended"] = ended
    # the world's truth, where the prompts are world questions (a prompt set of your own has none)
    batch["gold"] = torch.tensor([gold_reward(t, r) if "question" in r else math.nan
                                  for t, r in zip(batch["texts"], rows, strict=True)])
    # what PPO maximises (ppo.reward): the reward model, the world's truth as a verifiable reward (the
    # judge of the samples stage, jielong/judge.world scores exactly the gold reward), or their sum
    trained = {"model": batch["rm_scores"], "judge": batch["gold"].to(device),
               "sum": batch["rm_scores"] + batch["gold"].to(device)}[p.reward]
    # a reply cut off at max_new_tokens was scored as if finished; the penalty keeps that from paying
    batch["scores"] = trained - p.missing_eos_penalty * (~ended).float()
    batch["kl"] = kl_penalty(batch["logprobs"], batch["ref_logprobs"], p.kl_estimator)
    batch["kl_sum"] = torch.where(mask.bool(), batch["kl"], 0).sum(1)  # per response
    return batch


def summary(batch: dict) -> dict:
    """The batch's means: proxy reward (the reward model's raw score), gold reward, KL, reply length."""
    return {"reward": batch["rm_scores"].mean().item(), "gold_reward": batch["gold"].mean().item(),
            "kl": batch["kl_sum"].mean().item(), "response_len": batch["mask"].sum(1).float().mean().item(),
            "no_eos_frac": 1.0 - batch["ended"].float().mean().item()}


# ---------------------------------------------------------------- PPO update
def ppo_update(actor, critic, actor_opt, critic_opt, batch: dict, p, generator: torch.Generator) -> dict:
    """`p.epochs` passes of clipped policy and value updates over shuffled minibatches of the batch."""
    mask, n = batch["mask"], batch["response"].shape[1]
    stats = {"policy_loss": [], "value_loss": [], "clip_frac": [], "value_clip_frac": [], "approx_kl": []}
    for _ in range(p.epochs):
        order = torch.randperm(mask.shape[0], generator=generator).to(mask.device)
        for start in range(0, len(order), p.minibatch_size):
            idx = order[start:start + p.minibatch_size]
            inputs = {k: v[idx] for k, v in batch["inputs"].items()}
            logprobs = logprobs_from_logits(response_logits(actor, inputs, n, p.temperature), batch["response"][idx])
            pg_loss, clip_frac, approx_kl = policy_loss(logprobs, batch["logprobs"][idx], batch["advantages"][idx],
                                                        mask[idx], p.clip_range)
            values = response_values(critic, inputs, n)
            vf_loss, vf_clip_frac = value_loss(values, batch["values"][idx], batch["returns"][idx], mask[idx],
                                               p.clip_range_value)
            for model, opt, loss in ((actor, actor_opt, pg_loss), (critic, critic_opt, vf_loss)):
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if p.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), p.grad_clip)
                opt.step()
            for key, value in (("policy_loss", pg_loss), ("value_loss", vf_loss), ("clip_frac", clip_frac),
                               ("value_clip_frac", vf_clip_frac), ("approx_kl", approx_kl)):
                stats[key].append(value.item())
    return {k: float(np.mean(v)) for k, v in stats.items()}


# ---------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.splitlines()[0])
    ap.add_argument("--sft", type=Path, default=Path("data/models/sft"))
    ap.add_argument("--reward", type=Path, default=Path("data/models/reward"))
    source = ap.add_mutually_exclusive_group()
    source.add_argument("--world", type=Path, default=Path("data/world"), help="roll out on its rl people's questions")
    source.add_argument("--prompts", type=Path, help="roll out on your own prompts (finetune_data's prompts.parquet); "
                        "no gold reward, so ppo.reward must be `model`")
    ap.add_argument("--out", type=Path, default=Path("data/models/ppo"))
    ap.add_argument("--metrics", type=Path, default=Path("metrics/ppo.json"))
    ap.add_argument("--plots", type=Path, default=Path("plots/ppo"))
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = ap.parse_args(argv)
    p = load("ppo", args.params)
    if p.threads:
        torch.set_num_threads(p.threads)
    torch.manual_seed(p.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    tok = templates.chat_tokenizer(args.sft, "ppo")
    tok.pad_token = templates.pad_token(tok, PAD)
    # the critic reads the actor's token ids through the reward model's embeddings: one vocabulary
    if AutoTokenizer.from_pretrained(args.reward).get_vocab() != tok.get_vocab():
        raise SystemExit(f"ppo: the tokenizers of {args.sft} and {args.reward} differ; the reward model must be "
                         "trained from this SFT model")
    if args.prompts is not None and p.reward != "model":
        raise SystemExit(f"ppo.reward = {p.reward!r} needs the world's truth; your own prompts (--prompts) have none: "
                         "set ppo.reward: model")
    train_rows, heldout_rows = (load_prompts(args.prompts, p.heldout_prompts, p.seed) if args.prompts is not None
                                else load_questions(args.world, p.heldout_prompts, p.seed))
    actor, reference, critic, reward_model = load_models(args.sft, args.reward, device)
    # the actor samples from exactly this distribution; its log-probs are computed on the same one
    actor.generation_config = GenerationConfig(
        do_sample=True, temperature=p.temperature, top_k=p.top_k, top_p=p.top_p, max_new_tokens=p.max_new_tokens,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, use_cache=True)
    # Two optimizers: actor and critic share no weights, and clipping each one's gradient norm on its own
    # keeps a large value-loss gradient (the critic starts out predicting a reward, not a return) from
    # shrinking the policy's step, which one optimizer over the summed loss would do. It also makes a
    # value-loss coefficient unnecessary: critic_lr sets the critic's pace.
    actor_opt = torch.optim.AdamW(actor.parameters(), lr=p.lr, eps=1e-5, weight_decay=p.weight_decay)
    critic_opt = torch.optim.AdamW(critic.parameters(), lr=p.critic_lr, eps=1e-5, weight_decay=p.weight_decay)
    kl_ctl = (AdaptiveKLController(p.kl_coef, p.target_kl, p.kl_horizon) if p.adaptive_kl
              else FixedKLController(p.kl_coef))
    rng, generator = np.random.default_rng(p.seed), torch.Generator().manual_seed(p.seed)
    log.info("ppo from %s with reward model %s: %d iterations x %d rollouts, %d train questions (%d held out), %s",
             args.sft, args.reward, p.iterations, p.rollouts, len(train_rows), len(heldout_rows), device)

    before = summary(rollout(actor, reference, None, reward_model, tok, heldout_rows, p))
    log.info("sft policy on held-out questions: reward %.3f  gold %.3f  length %.1f", before["reward"],
             before["gold_reward"], before["response_len"])

    curve, tokens, start = [], 0, time.perf_counter()
    for step in progress(range(1, p.iterations + 1), desc="ppo", unit="it"):
        rows = [train_rows[i] for i in rng.choice(len(train_rows), p.rollouts, replace=len(train_rows) < p.rollouts)]
        batch = rollout(actor, reference, critic, reward_model, tok, rows, p)
        rewards = token_rewards(batch["scores"], batch["kl"], batch["mask"], kl_ctl.coef)
        advantages, batch["returns"] = gae(rewards, batch["values"], batch["mask"], p.gamma, p.lam)
        batch["advantages"] = masked_whiten(advantages, batch["mask"])
        losses = ppo_update(actor, critic, actor_opt, critic_opt, batch, p, generator)
        stats = summary(batch)
        curve.append({"step": step, "reward": stats["reward"], "gold_reward": stats["gold_reward"],
                      "kl": stats["kl"], "kl_coef": kl_ctl.coef, "entropy": batch["entropy"], **losses,
                      "response_len": stats["response_len"], "no_eos_frac": stats["no_eos_frac"]})
        curve[-1] = {k: v if k == "step" else round(float(v), 6) for k, v in curve[-1].items()}
        if args.prompts is not None:
            del curve[-1]["gold_reward"]  # no truth to score against
        if not all(math.isfinite(v) for v in curve[-1].values()):
            raise FloatingPointError(f"ppo: a non-finite value at iteration {step}: {curve[-1]}; nothing saved "
                                     f"(try a lower ppo.lr than {p.lr})")
        kl_ctl.update(stats["kl"], n_steps=p.rollouts)
        tokens += int(batch["mask"].sum())
        log.info("iter %3d/%d  reward %+.3f  gold %+.3f  kl %.3f (coef %.3f)  entropy %.2f  len %.1f  "
                 "clip %.2f  | %s -> %r", step, p.iterations, stats["reward"], stats["gold_reward"], stats["kl"],
                 curve[-1]["kl_coef"], batch["entropy"], stats["response_len"], losses["clip_frac"],
                 prompt_messages(rows[0])[-1]["content"], batch["texts"][0])
    train_s = time.perf_counter() - start

    after = summary(rollout(actor, reference, None, reward_model, tok, heldout_rows, p))
    args.plots.mkdir(parents=True, exist_ok=True)
    write_csv(args.plots / "train.csv", curve)  # written first: the curve explains a failure below
    if after["kl"] > p.max_kl:
        raise SystemExit(f"ppo: the final policy's KL to the reference on held-out questions is {after['kl']:.3f} "
                         f"nats, above ppo.max_kl={p.max_kl}; nothing saved (see {args.plots / 'train.csv'}; "
                         "raise ppo.kl_coef, lower ppo.target_kl or ppo.lr)")
    with atomic_dir(args.out) as tmp:
        actor.save_pretrained(tmp, safe_serialization=True)
        save_tokenizer(tok, tmp)
        shutil.copy(args.sft / "generation_config.json", tmp / "generation_config.json")  # the SFT defaults
        validate_model(tmp, args.out)

    gold = args.prompts is None
    metrics = {"reward_mean": after["reward"], **({"gold_reward": after["gold_reward"]} if gold else {}),
               "kl": after["kl"], "response_len": after["response_len"], "no_eos_frac": after["no_eos_frac"],
               "sft": {"reward_mean": before["reward"], **({"gold_reward": before["gold_reward"]} if gold else {}),
                       "response_len": before["response_len"]},
               "kl_coef": kl_ctl.coef, "iterations": p.iterations, "rollouts": p.iterations * p.rollouts,
               "rollouts_per_s": round(p.iterations * p.rollouts / train_s, 3),
               "tokens_per_s": round(tokens / train_s, 1), "train_s": round(train_s, 1)}
    write_metrics(args.metrics, metrics)
    log.info("ppo done in %.0fs: held-out reward %.3f -> %.3f, gold reward %.3f -> %.3f, kl %.3f (max %.1f)",
             train_s, before["reward"], after["reward"], before["gold_reward"], after["gold_reward"], after["kl"],
             p.max_kl)


if __name__ == "__main__":
    run(main)
