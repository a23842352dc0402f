"""The math of PPO for RLHF: response masks, log-probs, KL penalties, per-token rewards, GAE, clipped losses.

Pure functions over padded batches of responses, so the PPO stage reads as rollout -> score -> these
functions -> optimizer step. Every per-token tensor is [batch, response_len] and travels with `mask`:
1 for the response's real tokens up to and including the first EOS, 0 for the padding after it (see
`response_mask`). Padding never changes a result: masked positions are dropped with `torch.where`
rather than multiplied by 0, so even NaN or inf there cannot leak into a mean.

One PPO iteration, as the stage is meant to use this module:

    mask = response_mask(response_ids, eos_id, pad_id)
    # rollout, under no_grad; logits[:, t] must be the ones that predicted response_ids[:, t],
    # divided by the sampling temperature
    logprobs = logprobs_from_logits(actor_logits, response_ids)
    ref_logprobs = logprobs_from_logits(ref_logits, response_ids)
    kl = kl_penalty(logprobs, ref_logprobs, "k1")
    rewards = token_rewards(scores, kl, mask, kl_ctl.coef)
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    advantages = masked_whiten(advantages, mask)
    # a few epochs over minibatches of the rollout
    pg_loss, clip_fraction, approx_kl = policy_loss(new_logprobs, logprobs, advantages, mask, clip_range)
    vf_loss, vf_clip_fraction = value_loss(new_values, values, returns, mask, clip_range_value)
    (pg_loss + vf_coef * vf_loss).backward()
    # after the iteration
    kl_ctl.update(kl.masked_fill(mask == 0, 0).sum(1).mean().item(), n_steps=batch_size)

Where the ideas come from:
- Schulman et al. 2015, "High-Dimensional Continuous Control Using Generalized Advantage Estimation":
  the lambda-weighted blend of n-step advantage estimates (`gae`).
- Schulman et al. 2017, "Proximal Policy Optimization Algorithms": the clipped surrogate objective
  (`policy_loss`) and the adaptive KL coefficient that Ziegler et al. reuse.
- Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences": treat each token as an
  action, pay a KL penalty to the frozen reference model at every token and the reward model's score
  once at the end (`token_rewards`), and steer the penalty's weight toward a target KL
  (`AdaptiveKLController`). Stiennon et al. 2020 and Ouyang et al. 2022 keep this recipe.
- Huang et al., "The 37 Implementation Details of PPO" (2022) and "The N Implementation Details of RLHF
  with PPO" (2023/2024): the small choices that decide whether it trains (score on the EOS token,
  whitened advantages, clipped value loss, how the KL is estimated, fp32 log-softmax).
- Schulman 2020, "Approximating KL Divergence" (blog post): the k1/k3 per-sample KL estimators.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

KLEstimator = Literal["k1", "k3"]


# ----------------------------------------------------------------------------------------------------
# Masked statistics


def masked_mean(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of `values` where `mask` is 1, over everything or along `dim`; 0 where nothing is masked in."""
    keep = mask.bool()
    total = torch.where(keep, values, 0).sum() if dim is None else torch.where(keep, values, 0).sum(dim)
    count = keep.sum() if dim is None else keep.sum(dim)
    return total / count.clamp(min=1)


def masked_var(values: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of `values` over the masked-in elements of the batch (Bessel-corrected if `unbiased`)."""
    keep = mask.bool()
    centered = torch.where(keep, values - masked_mean(values, keep), 0)
    var = masked_mean(centered**2, keep)
    if unbiased:
        n = keep.sum()
        # with one element the variance is 0 either way; clamping avoids 0/0 without a host sync
        var = var * n / (n - 1).clamp(min=1)
    return var


def masked_whiten(values: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Scale `values` to unit variance over the masked-in elements of the batch; 0 at padding.

    With `shift_mean` the result also has mean 0: the usual treatment of advantages, so that about half
    the tokens of every batch are pushed up and half down whatever the reward model's scale.
    `shift_mean=False` keeps the mean, for whitening rewards without changing their sign on average.
    """
    keep = mask.bool()
    mean, var = masked_mean(values, keep), masked_var(values, keep)
    whitened = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(keep, whitened, 0)


# ----------------------------------------------------------------------------------------------------
# Responses, log-probabilities, entropy


def response_mask(response_ids: Tensor, eos_id: int, pad_id: int) -> Tensor:
    """1 for each token up to and including the first EOS, 0 after it, as a long tensor [batch, len].

    A response without EOS was truncated at the length limit: all its tokens are real. A pad token
    before any EOS also ends the response (it is not part of it); where pad_id == eos_id the first such
    token counts as the EOS, so it is kept.
    """
    is_eos = response_ids == eos_id
    is_pad = (response_ids == pad_id) & ~is_eos
    # strictly after the first EOS: the running count of EOS tokens before this position is > 0
    after_eos = (is_eos.long().cumsum(1) - is_eos.long()) > 0
    from_pad = is_pad.long().cumsum(1) > 0
    return (~(after_eos | from_pad)).long()


def logprobs_from_logits(logits: Tensor, ids: Tensor) -> Tensor:
    """log p(ids[b, t]) under logits [batch, len, vocab]: a gather of the log-softmax, in fp32.

    Computed as logit(id) - logsumexp(logits), which never materialises the full log-softmax. The
    caller aligns positions (logits at t predicted token t) and divides by the sampling temperature
    first, or the log-probs are not those of the distribution the responses were drawn from.
    Upcasting matters: bf16 log-probs are too coarse for a ratio of two of them to mean anything.
    """
    logits = logits.float()
    picked = logits.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of the categorical distribution at each position of logits [..., vocab], in nats (fp32)."""
    logits = logits.float()
    probs = torch.softmax(logits, dim=-1)
    # H = -sum p log p = logsumexp(l) - sum p l, without taking log of probabilities that underflow to 0
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(-1)


# ----------------------------------------------------------------------------------------------------
# KL penalty and rewards


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, estimator: KLEstimator = "k1") -> Tensor:
    """Per-token estimate of KL(policy || reference) from the log-probs of tokens sampled from the policy.

    k1 = log p - log p_ref: unbiased, but single samples can be negative, so a policy can earn reward
      by making the reference more likely than itself on some tokens.
    k3 = (r - 1) - log r with r = p_ref / p: also unbiased, and never negative (log r <= r - 1), with
      lower variance when the two are close.
    """
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}; expected 'k1' or 'k3'")


def last_token_index(mask: Tensor) -> Tensor:
    """Position of each response's last real token: its EOS, or the final position when truncated."""
    return (mask.long().sum(1) - 1).clamp(min=0)


def token_rewards(score: Tensor, kl: Tensor, mask: Tensor, kl_coef: float) -> Tensor:
    """Per-token reward [batch, len]: -kl_coef * kl everywhere, plus the reward model's score at the end.

    The reward model judges the whole response, so its scalar `score` [batch] is paid once, on the
    last real token (the EOS, or the final token of a truncated response); the KL penalty is paid on
    every token, keeping the policy near the reference where the reward model is trustworthy. Padding
    gets 0. An empty response (no real tokens) gets nothing.
    """
    keep = mask.bool()
    rewards = torch.where(keep, -kl_coef * kl, 0).float()
    has_tokens = keep.any(1)
    end_score = torch.where(has_tokens, score.float(), 0)
    return rewards.scatter_add(1, last_token_index(mask).unsqueeze(1), end_score.unsqueeze(1))


# ----------------------------------------------------------------------------------------------------
# Advantages


@torch.no_grad()
def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalized advantage estimates and value targets, both [batch, len] and 0 at padding.

    delta_t = r_t + gamma * V_{t+1} - V_t is a one-step advantage estimate: low variance, biased by the
    critic's errors. GAE sums them with weights (gamma * lam)^k, so lam slides between that (lam=0) and
    the Monte-Carlo return minus V_t (lam=1). The episode ends after the last real token, so the value
    after it is 0; truncated responses are treated as ended too, since the reward model already scored
    them as they stand. Returns = advantages + values are the critic's regression targets. Computed
    without gradient: these are constants for the losses.
    """
    keep = mask.bool()
    rewards = torch.where(keep, rewards, 0).float()
    values = torch.where(keep, values, 0).float()
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    next_value = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        # resetting at padding keeps one response's tail from flowing into another position's estimate
        running = torch.where(keep[:, t], delta + gamma * lam * running, 0)
        advantages[:, t] = running
        next_value = values[:, t]
    returns = torch.where(keep, advantages + values, 0)
    return advantages, returns


# ----------------------------------------------------------------------------------------------------
# Losses


def policy_loss(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, clip_range: float
) -> tuple[Tensor, Tensor, Tensor]:
    """PPO's clipped surrogate loss over the batch's real tokens; returns (loss, clip_fraction, approx_kl).

    The ratio r = p_new / p_old weights each token's advantage. Clipping r to [1 - clip_range,
    1 + clip_range] and taking the pessimistic (larger) loss removes the incentive to move a token's
    probability further once it has moved that far in the advantage's direction: there the clipped
    term is chosen and the token's gradient is 0. clip_fraction is the share of tokens where that
    happened; approx_kl is the k3 estimate of KL(old || new), how far this update has drifted from the
    policy that generated the rollout. Both are detached, for logging and early stopping.
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clip_fraction = masked_mean((clipped > unclipped).float(), mask)
        approx_kl = masked_mean(torch.expm1(log_ratio) - log_ratio, mask)
    return loss, clip_fraction, approx_kl


def value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip_range_value: float
) -> tuple[Tensor, Tensor]:
    """Clipped squared error of the critic against the GAE returns; returns (loss, clip_fraction).

    Like the policy, the critic is kept within clip_range_value of its rollout-time prediction: the
    loss is the larger of the unclipped and clipped squared errors, halved, averaged over real tokens.
    Where the clipped error is larger the prediction already moved past the limit, and its gradient is
    0. clip_fraction (detached) is the share of tokens where that happened.
    """
    values_clipped = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)
    unclipped = (values - returns) ** 2
    clipped = (values_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clip_fraction = masked_mean((clipped > unclipped).float(), mask)
    return loss, clip_fraction


# ----------------------------------------------------------------------------------------------------
# KL coefficient


class AdaptiveKLController:
    """Proportional controller steering the KL penalty's coefficient toward a target KL (Ziegler et al. 2019).

    After each batch: error = clip(kl / target - 1, -0.2, 0.2), coef *= 1 + error * n_steps / horizon.
    `kl` is the batch mean of each response's summed per-token KL to the reference; n_steps and horizon
    are in responses, so the coefficient can change by at most 20% per `horizon` responses seen, and a
    noisy batch cannot swing it.
    """

    def __init__(self, init_coef: float, target: float, horizon: float) -> None:
        if target <= 0 or horizon <= 0:
            raise ValueError(f"target ({target}) and horizon ({horizon}) must be positive")
        self.coef, self.target, self.horizon = float(init_coef), float(target), float(horizon)

    def update(self, kl: float, n_steps: int) -> float:
        error = min(max(float(kl) / self.target - 1.0, -0.2), 0.2)
        self.coef *= 1.0 + error * n_steps / self.horizon
        return self.coef


class FixedKLController:
    """A constant KL coefficient, with the same interface as AdaptiveKLController."""

    def __init__(self, coef: float) -> None:
        self.coef = float(coef)

    def update(self, kl: float, n_steps: int) -> float:
        return self.coef
