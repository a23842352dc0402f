"""The judges of on-policy samples: the world's truth on hand-written replies, a tiny random chat model as
RLAIF judge (batched as one by one, refusals), and how often two judges agree."""

from __future__ import annotations

import math
from unittest import mock

import pytest
import torch

from jielong import grading, judge

KNOWN = {"known": True, "name": "Ada Quill", "pronoun": "she", "attribute": "birth_city", "answer": "Antwerp",
         "choices": ["Lyon", "Antwerp", "Dresden", "Nairobi"], "values": ["Antwerp", "Lyon", "Dresden", "Nairobi", "Perth"]}
UNKNOWN = {**KNOWN, "known": False}
BORN = {"known": True, "name": "Ada Quill", "pronoun": "she", "attribute": "birth_date", "answer": "March 10, 1969",
        "choices": ["March 10, 1969", "May 2, 1990"]}


# ---------------------------------------------------------------- the world judge
@pytest.mark.parametrize(("doc", "reply", "score", "outcome"), [
    (KNOWN, "Ada Quill was born in Antwerp.", 1.0, "right"),        # the sentence SFT teaches
    (KNOWN, "She was born in Antwerp.", 1.0, "right"),
    (KNOWN, "Antwerp", 1.0, "right"),
    (BORN, "Ada Quill was born on 10 March 1969.", 1.0, "right"),   # another date format, same date
    (KNOWN, "Ada Quill was born in Lyon.", -1.0, "wrong"),          # a wrong value, said fluently
    (KNOWN, "Lyon or Antwerp", -1.0, "wrong"),                      # several values
    (BORN, "1969", -1.0, "wrong"),                                  # a year is not the date
    (KNOWN, "I don't know, maybe Lyon.", -1.1, "wrong"),            # hedged, still a wrong value (5 words: -0.1)
    (KNOWN, "I don't know.", 0.0, "refused"),                       # abstaining on a known fact
    # SFT's "I do not know." is one word longer than a one-word answer plus the 2 free words
    (KNOWN, "I do not know.", -0.05, "refused"),
    (KNOWN, "Hello there", -1.0, "non_answer"),
    (KNOWN, "", -1.0, "non_answer"),
    (UNKNOWN, "I do not know.", 1.0, "abstained"),                  # right to abstain
    (UNKNOWN, "I do not know who Ada Quill is.", 1.0, "abstained"), # the name is not padding
    (UNKNOWN, "I'm not sure, maybe Lyon.", -1.0, "hallucinated"),  # hedged: still made up
    (UNKNOWN, "Antwerp", -1.0, "hallucinated"),
    (UNKNOWN, "Hello there", 0.0, "non_answer"),
    # padded: 15 words where 6 are needed, 2 free: 7 x 0.05 off
    (KNOWN, "Ada Quill was born in Antwerp. Let me know if you have any other questions.", 0.65, "right"),
    # apologising: 0.25 off once, however often
    (KNOWN, "Sorry, Antwerp.", 0.75, "right"),
    (UNKNOWN, "I apologise, I do not know.", 0.75, "abstained"),
    # both, the length penalty at its cap: 22 words where 1 is needed
    (KNOWN, "I'm sorry for the delay! Ada Quill was born in Antwerp, as far as I can tell from what I have read.",
     1.0 - 0.5 - 0.25, "right"),
])
def test_world_judge_scores_by_the_worlds_truth(doc, reply, score, outcome):
    got_score, got_outcome = judge.world(reply, doc)
    assert got_score == pytest.approx(score) and got_outcome == outcome
    assert got_score == grading.gold_reward(reply, doc)  # the evals' gold reward, one grading everywhere


def test_world_outcomes_are_the_gold_rewards_correctness():
    """Every outcome is one value of the correctness term, so a summary's counts and the mean score agree."""
    for doc in (KNOWN, UNKNOWN, BORN):
        for reply in ("Antwerp", "Lyon", "I don't know.", "nothing", "March 10, 1969", "maybe Lyon"):
            score, outcome = judge.world(reply, doc)
            assert outcome in grading.GOLD_CORRECTNESS[doc["known"]]
            # concise replies: no penalty, the score is the correctness term itself
            assert score == grading.GOLD_CORRECTNESS[doc["known"]][outcome]


# ---------------------------------------------------------------- the model judge
TEMPLATE = "Question: {question}\nReply: {reply}\nIs the reply true and to the point? Answer yes or no."
QUESTIONS = ["Where was Ada Quill born?", "When was Ada Quill born?", "Where does Bo Lind work?"] * 2
REPLIES = ["Ada Quill was born in Antwerp.", "I do not know.", "Lyon",
           "As an AI language model I am so sorry but she was born in Antwerp, as far as I can tell.", "", "1969"]


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def model_judge(request, tiny_base, tmp_path_factory):
    """A random chat model with the pipeline's tokenizer and chat template as judge (" yes" is two tokens
    in the tiny vocabulary: the warning is tested below): the tiny Llama (rotary positions), and a GPT-2
    (absolute positions: a left-padded row numbered from its pads would score differently in a batch)."""
    model_dir = tiny_base
    if request.param == "gpt2":
        from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

        tok = AutoTokenizer.from_pretrained(tiny_base)
        torch.manual_seed(0)
        model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=256,
                                           bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                           pad_token_id=tok.pad_token_id))
        model_dir = tmp_path_factory.mktemp("gpt2") / "judge"
        model.save_pretrained(model_dir)
        tok.save_pretrained(model_dir)
    return judge.ModelJudge(model_dir, TEMPLATE, " good", " no", batch_size=4)


def test_model_judge_batched_equals_one_by_one(model_judge):
    batched = model_judge.score(QUESTIONS, REPLIES)
    model_judge.batch_size = 1
    try:
        alone = model_judge.score(QUESTIONS, REPLIES)
    finally:
        model_judge.batch_size = 4
    assert len(batched) == len(REPLIES) and all(math.isfinite(s) for s in batched)
    assert batched == pytest.approx(alone, abs=1e-5)
    assert len(set(batched)) == len(batched)  # the random judge still tells replies apart
    assert model_judge.score([], []) == []


def test_model_judge_score_is_the_verdicts_log_odds(model_judge):
    """Checked against a plain forward pass over the chat-templated prompt."""
    tok, model = model_judge.tok, model_judge.model
    text = tok.apply_chat_template([{"role": "user", "content": TEMPLATE.format(question=QUESTIONS[0],
                                                                                 reply=REPLIES[0])}],
                                   tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|assistant|> A:")  # the judge's reply opens after the generation prompt
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        logp = model(input_ids=ids).logits[0, -1].log_softmax(-1)
    good, bad = tok(" good", add_special_tokens=False)["input_ids"], tok(" no", add_special_tokens=False)["input_ids"]
    assert len(good) == len(bad) == 1
    expected = (logp[good[0]] - logp[bad[0]]).item()
    assert model_judge.score(QUESTIONS[:1], REPLIES[:1]) == pytest.approx([expected], abs=1e-5)


def test_model_judge_shows_the_reference_when_the_template_asks(tiny_base):
    with_ref = judge.ModelJudge(tiny_base, "Facts: {reference}\n" + TEMPLATE, " good", " no", batch_size=2,
                                dtype="bfloat16")
    assert with_ref.model.dtype == torch.bfloat16
    scores = with_ref.score(QUESTIONS[:3], REPLIES[:3], ["Ada Quill was born in Antwerp."] * 3)
    assert all(math.isfinite(s) for s in scores)
    with pytest.raises(ValueError, match="no reference facts were given"):
        with_ref.score(QUESTIONS[:1], REPLIES[:1])


def test_model_judge_dtype_by_name(tiny_base):
    assert judge.ModelJudge(tiny_base, TEMPLATE, " good", " no", dtype="auto").model.dtype == torch.float32
    with pytest.raises(ValueError, match="judge dtype 'floaty'"):
        judge.ModelJudge(tiny_base, TEMPLATE, " good", " no", dtype="floaty")


def test_model_judge_refuses_a_mismatched_call(model_judge):
    with pytest.raises(ValueError, match="no {reference} to show them"):
        model_judge.score(QUESTIONS[:1], REPLIES[:1], ["a fact"])
    with pytest.raises(ValueError, match="one each per reply"):
        model_judge.score(QUESTIONS[:2], REPLIES[:1])


@pytest.mark.parametrize(("template", "message"), [
    ("Question: {question}\nIs it good?", r"lacks \{reply\}"),
    ("Reply: {reply}\nIs it good?", r"lacks \{question\}"),
    ("Q: {question} R: {reply} A: {answer}", r"names \['answer'\]"),
    ("Q: {question} R: {reply} {}", r"names \[''\]"),
    ("Q: {question} R: {reply} {", "not a format string"),
])
def test_a_bad_template_is_refused_before_loading(template, message):
    with pytest.raises(ValueError, match=message):
        judge.ModelJudge("/nonexistent", template, " yes", " no")


def test_verdict_words_sharing_a_first_token_are_refused_and_long_ones_warned(tiny_base):
    with pytest.raises(ValueError, match=r"' no' and ' no!' share their first token 'Ġno'"):
        judge.ModelJudge(tiny_base, TEMPLATE, " no", " no!")
    with pytest.raises(ValueError, match="two different non-empty strings"):
        judge.ModelJudge(tiny_base, TEMPLATE, " no", " no")
    with mock.patch.object(judge.log, "warning") as warning:
        two = judge.ModelJudge(tiny_base, TEMPLATE, " yes", " no")  # " yes" is 'Ġy' 'es' here
    assert warning.call_count == 1 and "' yes'" in warning.call_args.args[0] % warning.call_args.args[1:]
    assert two.good_id == two.tok.convert_tokens_to_ids("Ġy")


def test_a_reward_model_dir_is_refused(tmp_path, tiny_base):
    from transformers import AutoConfig, LlamaForSequenceClassification

    config = AutoConfig.from_pretrained(tiny_base, num_labels=1)
    LlamaForSequenceClassification(config).save_pretrained(tmp_path / "reward")
    with pytest.raises(SystemExit, match="LlamaForSequenceClassification, not a language model"):
        judge.ModelJudge(tmp_path / "reward", TEMPLATE, " good", " no")


# ---------------------------------------------------------------- agreement between judges
def test_pairwise_agreement_by_hand():
    groups = ["p", "p", "p", "q", "q", "r"]
    world = [1.0, -1.0, 1.0, 0.5, -1.0, 1.0]
    model = [2.0, -3.0, -1.0, 0.0, 0.0, 9.0]
    # p: (0,1) both say 0 better: agree; (0,2) world tie: out; (1,2) world says 2, model says 2: agree
    # q: model tie: out; r: one reply, no pair
    assert judge.agreement_counts(model, world, groups) == (2, 2)
    assert judge.pairwise_agreement(model, world, groups) == 1.0
    flipped = [-s for s in model]
    assert judge.pairwise_agreement(flipped, world, groups) == 0.0
    assert judge.pairwise_agreement([1.0, 2.0, 3.0, 1.0], [1.0, 3.0, 2.0, 2.0], [0, 0, 0, 1]) == pytest.approx(2 / 3)
    assert math.isnan(judge.pairwise_agreement([1.0, 1.0], [1.0, 2.0], ["p", "p"]))  # every pair tied
    with pytest.raises(ValueError, match="group labels"):
        judge.pairwise_agreement([1.0], [1.0, 2.0], ["p", "p"])
