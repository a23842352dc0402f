"""PPO math: hand-computed GAE, masking never lets padding matter, clipping zeroes gradients, KL control."""

from __future__ import annotations

import math

import pytest
import torch

from jielong.ppo import (
    AdaptiveKLController,
    FixedKLController,
    entropy_from_logits,
    gae,
    kl_penalty,
    logprobs_from_logits,
    masked_mean,
    masked_var,
    masked_whiten,
    policy_loss,
    response_mask,
    token_rewards,
    value_loss,
)

EOS, PAD = 2, 0


def close(a: torch.Tensor, b, atol: float = 1e-6) -> bool:
    return torch.allclose(a, torch.as_tensor(b, dtype=a.dtype), atol=atol)


# ----------------------------------------------------------------------------------------------------
# Masks and masked statistics


def test_response_mask_ends_at_first_eos_inclusive():
    ids = torch.tensor([
        [5, EOS, PAD, PAD],  # ended early, right-padded
        [5, 6, 7, 8],  # truncated: no EOS, every token is real
        [EOS, 5, EOS, PAD],  # only the first EOS counts
        [5, 6, PAD, PAD],  # pad without EOS also ends it
    ])
    assert response_mask(ids, EOS, PAD).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 0, 0]]


def test_response_mask_when_pad_is_eos():
    ids = torch.tensor([[5, 2, 2, 2], [5, 6, 7, 8]])
    assert response_mask(ids, eos_id=2, pad_id=2).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]


def test_masked_mean_and_var_ignore_padding():
    values = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, 5.0, -50.0, -50.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    real = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    assert close(masked_mean(values, mask), real.mean())
    assert close(masked_var(values, mask), real.var(unbiased=True))
    assert close(masked_var(values, mask, unbiased=False), real.var(unbiased=False))
    assert close(masked_mean(values, mask, dim=1), [2.0, 4.5])


def test_whitening_ignores_padding():
    torch.manual_seed(0)
    values = torch.randn(3, 6)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0]])
    garbage = values.clone()
    garbage[mask == 0] = torch.tensor([1e6, -1e6, float("nan"), float("inf"), 3.0, 7.0, -2.0, 0.5])
    a, b = masked_whiten(values, mask), masked_whiten(garbage, mask)
    assert torch.equal(a, b)
    assert (a[mask == 0] == 0).all()
    assert close(masked_mean(a, mask), 0.0, atol=1e-5)
    assert close(masked_var(a, mask), 1.0, atol=1e-4)


def test_whitening_without_shift_keeps_the_mean():
    values = torch.tensor([[3.0, 5.0, 0.0], [7.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    out = masked_whiten(values, mask, shift_mean=False)
    # real values 3, 5, 7: mean 5, unbiased std 2 -> (v - 5) / 2 + 5
    assert close(out, [[4.0, 5.0, 0.0], [6.0, 0.0, 0.0]], atol=1e-5)


# ----------------------------------------------------------------------------------------------------
# Log-probs, entropy, KL


def test_logprobs_and_entropy_match_the_definitions():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 7)
    ids = torch.randint(0, 7, (2, 3))
    expected = torch.log_softmax(logits, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    assert close(logprobs_from_logits(logits, ids), expected, atol=1e-5)
    p = torch.softmax(logits, -1)
    assert close(entropy_from_logits(logits), -(p * p.log()).sum(-1), atol=1e-5)
    assert close(entropy_from_logits(torch.zeros(1, 4)), [math.log(4)], atol=1e-6)
    assert logprobs_from_logits(logits.bfloat16(), ids).dtype == torch.float32


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_kl_is_zero_when_policy_equals_reference(estimator):
    logprobs = torch.log(torch.tensor([[0.1, 0.5, 0.9]]))
    assert close(kl_penalty(logprobs, logprobs, estimator), [[0.0, 0.0, 0.0]])


def test_k3_is_nonnegative_k1_is_not():
    torch.manual_seed(0)
    logprobs, ref = -torch.rand(4, 50) * 5, -torch.rand(4, 50) * 5
    assert (kl_penalty(logprobs, ref, "k3") >= 0).all()
    assert (kl_penalty(logprobs, ref, "k1") < 0).any()
    with pytest.raises(ValueError, match="k2"):
        kl_penalty(logprobs, ref, "k2")


def test_kl_estimators_average_to_kl_of_policy_from_reference():
    torch.manual_seed(0)
    policy, ref = torch.tensor([0.6, 0.3, 0.1]), torch.tensor([0.2, 0.3, 0.5])
    exact = (policy * (policy / ref).log()).sum()  # KL(policy || ref), tokens drawn from the policy
    tokens = torch.multinomial(policy, 20_000, replacement=True)
    logprobs, ref_logprobs = policy.log()[tokens], ref.log()[tokens]
    for estimator in ("k1", "k3"):
        assert abs(kl_penalty(logprobs, ref_logprobs, estimator).mean() - exact) < 0.03


# ----------------------------------------------------------------------------------------------------
# Rewards and GAE


def test_score_is_paid_on_the_last_real_token():
    ids = torch.tensor([[5, EOS, PAD, PAD], [5, 6, 7, 8], [EOS, PAD, PAD, PAD]])  # ended, truncated, EOS only
    mask = response_mask(ids, EOS, PAD)
    kl = torch.ones(3, 4)
    kl[mask == 0] = 99.0  # padding's KL must not be charged
    rewards = token_rewards(torch.tensor([2.0, 3.0, -1.0]), kl, mask, kl_coef=0.1)
    assert close(rewards, [[-0.1, 1.9, 0.0, 0.0], [-0.1, -0.1, -0.1, 2.9], [-1.1, 0.0, 0.0, 0.0]], atol=1e-6)


def test_empty_response_gets_no_reward():
    mask = torch.tensor([[0, 0, 0]])
    assert close(token_rewards(torch.tensor([5.0]), torch.ones(1, 3), mask, kl_coef=0.1), [[0.0, 0.0, 0.0]])


def test_gae_matches_hand_computation():
    gamma, lam = 0.9, 0.8
    # three real tokens then one pad whose reward and value are garbage and must be ignored
    rewards = torch.tensor([[0.1, -0.2, 1.0, 5.0]])
    values = torch.tensor([[0.5, 0.4, 0.3, 9.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    # delta_t = r_t + gamma * V_{t+1} - V_t, with V after the last real token = 0
    #   delta_2 = 1.0 + 0.9 * 0.0 - 0.3 =  0.70
    #   delta_1 = -0.2 + 0.9 * 0.3 - 0.4 = -0.33
    #   delta_0 = 0.1 + 0.9 * 0.4 - 0.5 = -0.04
    # A_t = delta_t + gamma * lam * A_{t+1}, gamma * lam = 0.72
    #   A_2 = 0.70
    #   A_1 = -0.33 + 0.72 * 0.70  = 0.174
    #   A_0 = -0.04 + 0.72 * 0.174 = 0.08528
    # returns = A + V = 0.58528, 0.574, 1.0
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    assert close(advantages, [[0.08528, 0.174, 0.70, 0.0]], atol=1e-6)
    assert close(returns, [[0.58528, 0.574, 1.0, 0.0]], atol=1e-6)


def test_gae_with_lambda_one_is_return_to_go_minus_value():
    rewards = torch.tensor([[1.0, 0.0, 2.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 3.0]])
    values = torch.tensor([[0.5, 0.5, 0.5, 7.0, 7.0], [1.0, 1.0, 1.0, 1.0, 1.0]])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert close(returns, [[3.0, 2.0, 2.0, 0.0, 0.0], [3.0, 3.0, 3.0, 3.0, 3.0]])
    assert close(advantages, [[2.5, 1.5, 1.5, 0.0, 0.0], [2.0, 2.0, 2.0, 2.0, 2.0]])


def test_gae_advantages_are_zero_on_padding_and_carry_no_gradient():
    torch.manual_seed(0)
    values = torch.randn(4, 8, requires_grad=True)
    mask = torch.ones(4, 8, dtype=torch.long)
    for row, length in enumerate([8, 5, 2, 1]):
        mask[row, length:] = 0
    advantages, returns = gae(torch.randn(4, 8), values, mask, gamma=0.99, lam=0.95)
    assert (advantages[mask == 0] == 0).all() and (returns[mask == 0] == 0).all()
    assert not advantages.requires_grad and not returns.requires_grad


# ----------------------------------------------------------------------------------------------------
# Losses


def test_policy_loss_clips_and_zeroes_the_clipped_gradient():
    # all advantages +1, clip 0.2: ratio 1.5 is clipped (gradient 0), ratio 0.5 is not (min picks it)
    old = torch.zeros(1, 3)
    logprobs = torch.log(torch.tensor([[1.5, 0.5, 1.0]])).requires_grad_()
    advantages = torch.ones(1, 3)
    mask = torch.ones(1, 3)
    loss, clip_fraction, approx_kl = policy_loss(logprobs, old, advantages, mask, clip_range=0.2)
    loss.backward()
    assert close(loss, -(1.2 + 0.5 + 1.0) / 3)
    assert close(clip_fraction, 1 / 3)
    # d/d logp of -A * exp(logp - old) is -A * ratio, divided by the 3 tokens of the mean
    assert close(logprobs.grad, [[0.0, -0.5 / 3, -1.0 / 3]])
    assert approx_kl > 0 and not approx_kl.requires_grad


def test_policy_loss_negative_advantage_clips_the_low_side():
    logprobs = torch.log(torch.tensor([[0.5, 1.5]])).requires_grad_()
    old, advantages, mask = torch.zeros(1, 2), -torch.ones(1, 2), torch.ones(1, 2)
    loss, clip_fraction, _ = policy_loss(logprobs, old, advantages, mask, clip_range=0.2)
    loss.backward()
    # A = -1: ratio 0.5 is pushed down already past 0.8 -> clipped; ratio 1.5 is not
    assert close(clip_fraction, 0.5)
    assert close(logprobs.grad, [[0.0, 1.5 / 2]])


def test_value_loss_clips_and_zeroes_the_clipped_gradient():
    old = torch.zeros(1, 2)
    returns = torch.ones(1, 2)
    # token 0 moved 0.5 toward the return: clipped to 0.2, error 0.64 > 0.25 -> clipped term, gradient 0
    # token 1 moved 0.5 away: clipped -0.2 has error 1.44 < 2.25 -> unclipped term, gradient (v - R)
    values = torch.tensor([[0.5, -0.5]], requires_grad=True)
    loss, clip_fraction = value_loss(values, old, returns, torch.ones(1, 2), clip_range_value=0.2)
    loss.backward()
    assert close(loss, 0.5 * (0.64 + 2.25) / 2)
    assert close(clip_fraction, 0.5)
    assert close(values.grad, [[0.0, -1.5 / 2]])


def test_padding_changes_no_loss_and_gets_no_gradient():
    torch.manual_seed(0)
    batch, length, vocab = 3, 5, 11
    ids = torch.tensor([[4, 7, EOS, PAD, PAD], [3, 3, 3, 3, 3], [EOS, PAD, PAD, PAD, PAD]])
    mask = response_mask(ids, EOS, PAD)
    old_logprobs = -torch.rand(batch, length)
    old_values, advantages, returns = (torch.randn(batch, length) for _ in range(3))

    def losses(logits: torch.Tensor, values: torch.Tensor) -> list[torch.Tensor]:
        logprobs = logprobs_from_logits(logits, ids)
        pg, pg_clip, approx_kl = policy_loss(logprobs, old_logprobs, advantages, mask, clip_range=0.2)
        vf, vf_clip = value_loss(values, old_values, returns, mask, clip_range_value=0.2)
        entropy = masked_mean(entropy_from_logits(logits), mask)
        kl = masked_mean(kl_penalty(logprobs, old_logprobs, "k3"), mask)
        return [pg, pg_clip, approx_kl, vf, vf_clip, entropy, kl]

    logits = torch.randn(batch, length, vocab, requires_grad=True)
    values = torch.randn(batch, length, requires_grad=True)
    clean = losses(logits, values)
    sum(clean[i] for i in (0, 3, 5)).backward()
    assert (logits.grad[mask == 0] == 0).all() and (values.grad[mask == 0] == 0).all()
    assert (logits.grad[mask == 1] != 0).any()

    noisy_logits, noisy_values = logits.detach().clone(), values.detach().clone()
    noisy_logits[mask == 0] += 50 * torch.randn(int((mask == 0).sum()), vocab)
    noisy_values[mask == 0] = 1e4
    for a, b in zip(clean, losses(noisy_logits, noisy_values), strict=True):
        assert torch.equal(a.detach(), b)


# ----------------------------------------------------------------------------------------------------
# KL controllers


def test_adaptive_controller_raises_coef_above_target_and_lowers_it_below():
    above = AdaptiveKLController(init_coef=0.1, target=6.0, horizon=10_000)
    assert above.update(kl=7.0, n_steps=256) > 0.1
    below = AdaptiveKLController(init_coef=0.1, target=6.0, horizon=10_000)
    assert below.update(kl=5.0, n_steps=256) < 0.1
    on_target = AdaptiveKLController(init_coef=0.1, target=6.0, horizon=10_000)
    assert on_target.update(kl=6.0, n_steps=256) == pytest.approx(0.1)


def test_adaptive_controller_error_is_clipped():
    ctl = AdaptiveKLController(init_coef=0.1, target=6.0, horizon=10_000)
    assert ctl.update(kl=600.0, n_steps=1000) == pytest.approx(0.1 * (1 + 0.2 * 1000 / 10_000))
    assert ctl.coef == pytest.approx(0.102)
    ctl = AdaptiveKLController(init_coef=0.1, target=6.0, horizon=10_000)
    assert ctl.update(kl=0.0, n_steps=1000) == pytest.approx(0.1 * (1 - 0.2 * 1000 / 10_000))


def test_fixed_controller_never_moves():
    ctl = FixedKLController(0.05)
    assert ctl.update(kl=100.0, n_steps=1000) == 0.05 and ctl.coef == 0.05


# ----------------------------------------------------------------------------------------------------
# The pieces together


def test_ppo_on_a_bandit_learns_the_rewarded_token():
    """One-token responses, reward 1 for token 3: a few PPO iterations make it the likeliest token."""
    torch.manual_seed(0)
    vocab, batch = 6, 64
    policy_logits = torch.zeros(vocab, requires_grad=True)
    value = torch.zeros(1, requires_grad=True)
    ref_logprobs_all = torch.log_softmax(torch.zeros(vocab), -1)
    opt = torch.optim.Adam([policy_logits, value], lr=0.1)
    kl_ctl = AdaptiveKLController(init_coef=0.05, target=1.0, horizon=1000)
    for _ in range(15):
        with torch.no_grad():
            ids = torch.multinomial(torch.softmax(policy_logits, -1), batch, replacement=True).unsqueeze(1)
            mask = torch.ones_like(ids)
            logprobs = logprobs_from_logits(policy_logits.expand(batch, 1, vocab), ids)
            kl = kl_penalty(logprobs, ref_logprobs_all[ids], "k1")
            rewards = token_rewards((ids[:, 0] == 3).float(), kl, mask, kl_ctl.coef)
            old_values = value.expand(batch, 1).clone()
            advantages, returns = gae(rewards, old_values, mask, gamma=1.0, lam=0.95)
            advantages = masked_whiten(advantages, mask)
        for _ in range(4):
            new_logprobs = logprobs_from_logits(policy_logits.expand(batch, 1, vocab), ids)
            pg, _, _ = policy_loss(new_logprobs, logprobs, advantages, mask, clip_range=0.2)
            vf, _ = value_loss(value.expand(batch, 1), old_values, returns, mask, clip_range_value=0.2)
            opt.zero_grad()
            (pg + 0.5 * vf).backward()
            opt.step()
        kl_ctl.update(kl.sum(1).mean().item(), n_steps=batch)
    probs = torch.softmax(policy_logits.detach(), -1)
    assert probs.argmax() == 3 and probs[3] > 0.5
    assert torch.isfinite(value).all()
