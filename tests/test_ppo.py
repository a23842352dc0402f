"""The PPO stage on a tiny random Llama: rollout log-probs are the sampler's, the critic is the reward
model read at every token, a run writes a loadable policy without touching the reference, the policy
moves toward what a rule rewards, and a KL beyond ppo.max_kl fails the stage."""

from __future__ import annotations

import json
import math
from pathlib import Path

import polars as pl
import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    GenerationConfig,
    PreTrainedTokenizerFast,
)

import stages.ppo as ppo_stage
from jielong.chat import END, EOT, PAD
from jielong.ppo import response_mask

from .conftest import params_section, write_params

COLUMNS = ["step", "reward", "gold_reward", "kl", "kl_coef", "entropy", "policy_loss", "value_loss", "clip_frac",
           "value_clip_frac", "approx_kl", "response_len"]
QUESTIONS = ["When was Ada Quill born?", "Where does Bob work?", "Which university did Carl Ostrander attend?"]


def _encode(tok, question: str) -> list[int]:
    return tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                   tokenize=True, return_dict=True)["input_ids"]


def _end_likely(model, tok) -> None:
    """Point <|end|>'s output row along the mean final hidden state, so this random model ends its replies
    after a few tokens, at varied lengths, as a chat model does; otherwise it would never stop."""
    hidden = []
    with torch.no_grad():
        for q in QUESTIONS:
            out = model.generate(torch.tensor([_encode(tok, q)]), do_sample=True, max_new_tokens=8,
                                 pad_token_id=tok.pad_token_id)
            hidden.append(model(out, output_hidden_states=True).hidden_states[-1][0])
        mean = torch.cat(hidden).mean(0)
        model.lm_head.weight[tok.convert_tokens_to_ids(END)] = 1.5 * mean / mean.norm()


@pytest.fixture(scope="module")
def ppo_models(tmp_path_factory, tiny_base) -> tuple[Path, Path]:
    """(sft, reward): a chat copy of the tiny random Llama (EOS <|end|>) and a sequence classifier from it."""
    root = tmp_path_factory.mktemp("ppo_models")
    tok = PreTrainedTokenizerFast.from_pretrained(tiny_base)
    tok.eos_token, tok.pad_token = END, PAD
    end_id, pad_id = tok.convert_tokens_to_ids(END), tok.convert_tokens_to_ids(PAD)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32)
    _end_likely(model, tok)
    model.config.eos_token_id, model.config.pad_token_id = end_id, pad_id
    model.save_pretrained(root / "sft")
    tok.save_pretrained(root / "sft")
    GenerationConfig(do_sample=True, temperature=0.7, top_k=50, eos_token_id=[end_id, tok.convert_tokens_to_ids(EOT)],
                     pad_token_id=pad_id, max_new_tokens=64).save_pretrained(root / "sft")
    reward = AutoModelForSequenceClassification.from_pretrained(root / "sft", num_labels=1, pad_token_id=pad_id)
    reward.save_pretrained(root / "reward")
    tok.save_pretrained(root / "reward")
    return root / "sft", root / "reward"


def _run(tmp_path: Path, sft: Path, reward: Path, world: Path, **ppo) -> dict:
    tmp_path.mkdir(parents=True, exist_ok=True)
    settings = {"iterations": 2, "rollouts": 8, "minibatch_size": 4, "epochs": 2, "heldout_prompts": 8,
                "max_new_tokens": 8, "lr": 1e-3, "critic_lr": 1e-3, **ppo}
    params = write_params(tmp_path / "params.yaml", {"ppo": settings})
    ppo_stage.main(["--sft", str(sft), "--reward", str(reward), "--world", str(world), "--out", str(tmp_path / "ppo"),
                    "--metrics", str(tmp_path / "ppo.json"), "--plots", str(tmp_path / "plots"),
                    "--params", str(params)])
    return json.loads((tmp_path / "ppo.json").read_text())


# ---------------------------------------------------------------- pieces
def test_rollout_logprobs_are_those_the_sampler_drew_from(ppo_models):
    """Left padding, the one-position shift and the temperature: a forward pass over prompt + reply gives
    back exactly the log-probs generate() sampled each token with."""
    sft, _ = ppo_models
    tok = PreTrainedTokenizerFast.from_pretrained(sft)
    model = AutoModelForCausalLM.from_pretrained(sft, dtype=torch.float32).eval()
    query, query_mask = ppo_stage.left_pad([_encode(tok, q) for q in QUESTIONS], tok.pad_token_id)
    assert len(set(query_mask.sum(1).tolist())) == 3  # three prompt lengths: padding is exercised
    torch.manual_seed(0)
    out = model.generate(input_ids=query, attention_mask=query_mask, do_sample=True, temperature=0.7, top_k=0,
                         top_p=1.0, max_new_tokens=8, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         output_scores=True, return_dict_in_generate=True)
    response = out.sequences[:, query.shape[1]:]
    mask = response_mask(response, tok.eos_token_id, tok.pad_token_id)
    sampled = torch.log_softmax(torch.stack(out.scores, 1), -1).gather(-1, response.unsqueeze(-1)).squeeze(-1)
    with torch.no_grad():
        inputs = ppo_stage.sequence_inputs(query, query_mask, response, mask)
        logits = ppo_stage.response_logits(model, inputs, response.shape[1], 0.7)
    ours = torch.log_softmax(logits, -1).gather(-1, response.unsqueeze(-1)).squeeze(-1)
    assert mask.sum() > 3
    assert torch.allclose(ours[mask.bool()], sampled[mask.bool()], atol=1e-4)


def test_critic_is_the_reward_model_read_at_every_token(ppo_models):
    sft, reward = ppo_models
    tok = PreTrainedTokenizerFast.from_pretrained(sft)
    rm = AutoModelForSequenceClassification.from_pretrained(reward, dtype=torch.float32).eval()
    critic = ppo_stage.Critic(AutoModelForSequenceClassification.from_pretrained(reward, dtype=torch.float32)).eval()
    convs = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}]
             for q, a in zip(QUESTIONS, ["March 10, 1969", "I don't know.", "Thornfield University"], strict=True)]
    with torch.no_grad():
        scores = ppo_stage.reward_scores(rm, tok, [c[:1] for c in convs], [c[1]["content"] for c in convs])
        for conv, score in zip(convs, scores, strict=True):
            ids = torch.tensor([tok.apply_chat_template(conv, tokenize=True, return_dict=True)["input_ids"]])
            ones = torch.ones_like(ids)
            values = critic(ids, ones, ones.cumsum(1) - 1)
            assert values.shape == ids.shape
            assert math.isclose(values[0, -1].item(), score.item(), abs_tol=1e-5)  # the last token: the score
    assert len(set(scores.tolist())) == 3


def test_prompts_are_rl_split_questions_with_a_held_out_batch(tiny_world_dir):
    world = tiny_world_dir / "world"
    train, heldout = ppo_stage.load_questions(world, 16, seed=0)
    q = pl.read_parquet(world / "questions.parquet")
    assert len(heldout) == 16 and len(train) + 16 == q.filter(pl.col("split") == "rl").height
    assert {r["split"] for r in train + heldout} == {"rl"}  # neither sft nor evaluation people
    rl_people = set(q.filter(pl.col("split") == "rl")["person_id"])
    assert {r["person_id"] for r in train + heldout} == rl_people
    assert not {r["qid"] for r in train} & {r["qid"] for r in heldout}
    # what gold_reward needs to spot a confident value, as the eval sets carry it (dates go by their pattern)
    assert all(r["answer"] in r["values"] for r in train if r["attribute"] != "birth_date")
    assert all(r["values"] == [] for r in train if r["attribute"] == "birth_date")
    assert ppo_stage.load_questions(world, 16, seed=0) == (train, heldout)
    with pytest.raises(SystemExit, match="heldout_prompts"):
        ppo_stage.load_questions(world, 10_000, seed=0)


def test_prompts_refuse_a_world_without_an_rl_split(tmp_path, tiny_world_dir):
    q = pl.read_parquet(tiny_world_dir / "world" / "questions.parquet")
    # a world from before the three splits: eval and train people
    q.with_columns(split=pl.when(pl.col("split") == "eval").then(pl.lit("eval")).otherwise(pl.lit("train"))).write_parquet(
        tmp_path / "questions.parquet")
    with pytest.raises(SystemExit, match=r"no rl-split people \(its splits: \['eval', 'train'\]\)"):
        ppo_stage.load_questions(tmp_path, 16, seed=0)


def test_ppo_params_reject_bad_values():
    with pytest.raises(ValueError, match="minibatch_size"):
        params_section("ppo", rollouts=8, minibatch_size=16)
    with pytest.raises(ValueError):
        params_section("ppo", kl_estimator="k2")


# ---------------------------------------------------------------- the stage
def test_ppo_stage_writes_a_policy_and_leaves_the_reference_alone(tmp_path, ppo_models, tiny_world_dir, monkeypatch):
    sft, reward = ppo_models
    sft_weights = load_file(sft / "model.safetensors")
    loaded = {}

    def keep(*args, **kwargs):
        loaded["models"] = models = load_models(*args, **kwargs)
        return models

    load_models = ppo_stage.load_models
    monkeypatch.setattr(ppo_stage, "load_models", keep)
    m = _run(tmp_path / "a", sft, reward, tiny_world_dir / "world")

    assert {"reward_mean", "kl", "gold_reward", "tokens_per_s", "rollouts_per_s", "iterations"} <= set(m)
    assert m["iterations"] == 2 and all(math.isfinite(v) for v in m.values())
    curve = pl.read_csv(tmp_path / "a" / "plots" / "train.csv")
    assert curve.columns[:len(COLUMNS)] == COLUMNS and curve.height == 2
    assert all(math.isfinite(v) for row in curve.iter_rows() for v in row)

    out = tmp_path / "a" / "ppo"
    policy = AutoModelForCausalLM.from_pretrained(out)
    tok = PreTrainedTokenizerFast.from_pretrained(out)
    assert tok.eos_token == END and tok.chat_template
    assert json.loads((out / "generation_config.json").read_text()) == json.loads(
        (sft / "generation_config.json").read_text())
    assert policy.generate(torch.tensor([_encode(tok, QUESTIONS[0])]), max_new_tokens=4).shape[1] > 1
    trained = load_file(out / "model.safetensors")
    assert any(not torch.equal(trained[k], sft_weights[k]) for k in sft_weights)  # the actor learnt
    # the reference (in the run and on disk) and the reward model are exactly the SFT model and the RM
    actor, reference, critic, reward_model = loaded["models"]
    assert all(torch.equal(t, sft_weights[k]) for k, t in reference.state_dict().items())
    assert all(torch.equal(t, sft_weights[k]) for k, t in load_file(sft / "model.safetensors").items())
    rm_weights = load_file(reward / "model.safetensors")
    assert all(torch.equal(t, rm_weights[k]) for k, t in reward_model.state_dict().items())
    assert not torch.equal(critic.head.weight, reward_model.score.weight)  # the critic learnt, separately

    # deterministic by seed on CPU
    again = _run(tmp_path / "b", sft, reward, tiny_world_dir / "world")
    timing = {"tokens_per_s", "rollouts_per_s", "train_s"}
    assert {k: v for k, v in again.items() if k not in timing} == {k: v for k, v in m.items() if k not in timing}
    assert pl.read_csv(tmp_path / "b" / "plots" / "train.csv").equals(curve)


def test_policy_moves_toward_what_it_is_rewarded_for(tmp_path, ppo_models, tiny_world_dir, monkeypatch):
    """The reward model replaced by a rule preferring short replies: replies get shorter, in training and on
    held-out questions. (Reliable at 8 iterations: seeds 0-6 pass, about two seconds a run; with the
    Q:/A: chat template, 4 iterations failed seed 0.)"""
    sft, reward = ppo_models
    monkeypatch.setattr(ppo_stage, "reward_scores",
                        lambda rm, tok, prompts, replies: torch.tensor([-len(r) / 10 for r in replies]))
    m = _run(tmp_path, sft, reward, tiny_world_dir / "world", iterations=8, rollouts=32, minibatch_size=8,
             heldout_prompts=32, lr=1e-3, kl_coef=0.0, adaptive_kl=False, missing_eos_penalty=0.0, max_kl=100.0)
    curve = pl.read_csv(tmp_path / "plots" / "train.csv")
    assert curve["reward"][-1] > curve["reward"][0] and curve["response_len"][-1] < curve["response_len"][0]
    assert m["response_len"] < 0.75 * m["sft.response_len"]
    assert m["reward_mean"] > m["sft.reward_mean"]


def test_kl_above_max_kl_fails_the_stage(tmp_path, ppo_models, tiny_world_dir):
    sft, reward = ppo_models
    with pytest.raises(SystemExit, match=r"ppo\.max_kl=1e-06"):
        _run(tmp_path, sft, reward, tiny_world_dir / "world", iterations=1, kl_estimator="k3", max_kl=1e-6)
    assert not (tmp_path / "ppo").exists() and not (tmp_path / "ppo.json").exists()
    assert (tmp_path / "plots" / "train.csv").exists()  # the curve stays, to explain the failure


def test_ppo_trains_on_the_reward_it_is_told_to(ppo_models, tiny_world_dir):
    """ppo.reward: the reward model's score, the world's truth (gold reward, a verifiable reward) or their sum,
    less the missing-EOS penalty; the gold reward is logged whichever is trained on."""
    sft, reward = ppo_models
    tok = PreTrainedTokenizerFast.from_pretrained(sft)
    tok.pad_token = PAD
    actor, reference, _, reward_model = ppo_stage.load_models(sft, reward, torch.device("cpu"))
    rows = ppo_stage.load_questions(tiny_world_dir / "world", 4, seed=0)[0][:6]
    batches = {}
    for kind in ("model", "judge", "sum"):
        p = params_section("ppo", reward=kind, max_new_tokens=6, missing_eos_penalty=0.5)
        actor.generation_config = GenerationConfig(do_sample=True, temperature=p.temperature, top_k=0, max_new_tokens=6,
                                                   eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        torch.manual_seed(0)
        batches[kind] = ppo_stage.rollout(actor, reference, None, reward_model, tok, rows, p)
    b = batches["model"]
    assert all(x["texts"] == b["texts"] for x in batches.values())  # same seed, same replies
    penalty = 0.5 * (~b["ended"]).float()
    assert torch.allclose(batches["model"]["scores"], b["rm_scores"] - penalty)
    assert torch.allclose(batches["judge"]["scores"], b["gold"].float() - penalty)
    assert torch.allclose(batches["sum"]["scores"], b["rm_scores"] + b["gold"].float() - penalty)
