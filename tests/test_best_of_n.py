"""Best-of-N with a reward model: the choice, the sweep over N, and the talk CLI's flags."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import AutoTokenizer, GenerationConfig, LlamaForCausalLM

from jielong import best_of_n
from jielong.chat import END


def test_pick_is_the_highest_score_and_the_first_of_equal_ones():
    assert best_of_n.pick([0.1, 2.5, -1.0, 2.4]) == 1
    assert best_of_n.pick([1.0, 3.0, 3.0]) == 1
    with pytest.raises(ValueError, match="no reply"):
        best_of_n.pick([])


def test_best_of_n_answers_with_the_reply_the_reward_function_prefers(tmp_path, tiny_base):
    """A reward function we control (longest reply wins; then one that prefers the shortest): the chosen
    reply is that one among the n sampled for its own prompt, whatever the model says."""
    tok = AutoTokenizer.from_pretrained(tiny_base)
    tok.padding_side = "left"
    model = LlamaForCausalLM.from_pretrained(tiny_base).eval()
    config = GenerationConfig(do_sample=True, temperature=1.0, top_k=0, max_new_tokens=6,
                              eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    prompts = [[{"role": "user", "content": "Where was Ada Quill born?"}],
               [{"role": "user", "content": "When was Bo Vale born?"}]]
    seen = []

    def longest(convs, replies):
        seen.append((convs, replies))
        return [float(len(r)) for r in replies]

    torch.manual_seed(0)
    chosen, candidates, scores = best_of_n.best_of_n(tok, model, config, prompts, 5, longest, batch_size=4)
    assert [len(c) for c in candidates] == [5, 5] and len(seen) == 1
    assert seen[0][0] == [p for p in prompts for _ in range(5)]  # each reply scored with its own prompt
    for reply, rs, ss in zip(chosen, candidates, scores, strict=True):
        assert reply == max(rs, key=len) and ss == [float(len(r)) for r in rs]
    chosen, candidates, _ = best_of_n.best_of_n(tok, model, config, prompts, 5,
                                                lambda c, rs: [-len(r) for r in rs], batch_size=4)
    assert chosen == [min(rs, key=len) for rs in candidates]


def test_sweep_reads_each_n_from_disjoint_chunks_of_the_samples():
    from stages.bon import sweep

    known = {"task": "world_facts_gen", "known": True, "attribute": "birth_city", "answer": "Lyon",
             "name": "Ada Quill", "values": ["Lyon", "Porto"]}
    right, wrong = "Ada Quill was born in Lyon.", "Ada Quill was born in Porto."
    # four samples: the reward model prefers the wrong reply in the first pair and the right one in the second
    rows = sweep([known], [[wrong, right, right, wrong]], [[0.9, 0.1, 0.8, 0.2]], [1, 2, 4])
    by_n = {row["n"]: row for row in rows}
    assert by_n[1]["exact_match"] == 0.5  # four single draws: two right
    assert by_n[2]["exact_match"] == 0.5  # chunk 1 picks wrong (0.9), chunk 2 picks right (0.8)
    assert by_n[4]["exact_match"] == 0.0  # the favourite of all four is the wrong one
    assert by_n[4]["reward_model"] == 0.9 and by_n[2]["reward_model"] == pytest.approx(0.85)


def test_talk_best_of_n_needs_a_reward_model_of_the_same_tokenizer(tmp_path, tiny_base, capsys):
    from jielong.talk import main as talk_main

    chat = shutil.copytree(tiny_base, tmp_path / "sft")
    tok = AutoTokenizer.from_pretrained(chat)
    tok.eos_token = END
    tok.save_pretrained(chat)
    (tmp_path / "q.txt").write_text("Where was Ada Quill born?\n")
    nowhere = str(tmp_path / "no-model")
    for flags, message in [(["--best-of", "4"], r"--best-of 4 needs N >= 2 .* and --reward"),
                           (["--best-of", "1", "--reward", "r"], "--best-of 1 needs N >= 2"),
                           (["--best-of", "4", "--reward", "r", "--greedy"], "not --greedy"),
                           (["--reward", "r"], "give --best-of too")]:
        with pytest.raises(SystemExit, match=message):
            talk_main([nowhere, *flags])
    with pytest.raises(SystemExit, match="sft is not a reward model directory"):
        talk_main([str(chat), "--prompts", str(tmp_path / "q.txt"), "--best-of", "3", "--reward", str(chat)])
    # a reward model trained from this chat model: the SFT body under a scalar head, as stages/reward.py saves it
    from transformers import AutoModelForSequenceClassification

    reward = tmp_path / "reward"
    rm = AutoModelForSequenceClassification.from_pretrained(chat, num_labels=1)
    rm.config.pad_token_id = tok.pad_token_id
    rm.save_pretrained(reward)
    tok.save_pretrained(reward)
    talk_main([str(chat), "--prompts", str(tmp_path / "q.txt"), "--best-of", "3", "--reward", str(reward),
               "--max-new-tokens", "4"])
    line = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert line["prompt"] == "Where was Ada Quill born?" and isinstance(line["reply"], str)


def test_the_best_of_n_system_says_the_reply_its_scorer_prefers_among_sampled_ones():
    """BestOfN as lm-eval's wrapper (jielong/systems.py): n sampled requests per question, the task's stop
    sequences kept, each scored with its own question, the top one said."""
    from jielong.systems import Asked

    class Lm:
        def model_replies(self, asked):
            self.asked = asked
            return [f"{a.question} #{i % 3}" for i, a in enumerate(asked)]

    scored = []

    def scorer(convs, replies):
        scored.append((convs, replies))
        return [float(r.endswith("#1")) for r in replies]  # the second sample of each question

    lm = Lm()
    asked = [Asked("<u> Q1 <a>", "Q1", {"until": ["\n"], "do_sample": False}), Asked("<u> Q2 <a>", "Q2", {"until": ["."]})]
    said = best_of_n.BestOfN(scorer, 3, 0.7, 0.9).answer(lm, asked)
    assert said == ["Q1 #1", "Q2 #1"]
    assert [a.question for a in lm.asked] == ["Q1"] * 3 + ["Q2"] * 3
    assert all(a.gen_kwargs["do_sample"] and a.gen_kwargs["temperature"] == 0.7 and a.gen_kwargs["top_p"] == 0.9
               for a in lm.asked)
    assert lm.asked[0].gen_kwargs["until"] == ["\n"] and lm.asked[3].gen_kwargs["until"] == ["."]
    assert scored[0][0][0] == [{"role": "user", "content": "Q1"}]
    with pytest.raises(SystemExit, match="did not come through the chat template"):
        best_of_n.BestOfN(scorer, 3, 0.7, 0.9).answer(lm, [Asked("plain text", None, {})])


def test_a_wrapper_s_options_are_checked_by_name(tmp_path):
    from jielong import systems

    with pytest.raises(SystemExit, match=r"best_of_n.*lacks \['n'\]"):
        systems.load_wrapper("best_of_n", tmp_path, tmp_path, {"temperature": 1.0, "top_p": 1.0})
    with pytest.raises(SystemExit, match=r"gate.*has no \['n'\]"):
        systems.load_wrapper("gate", tmp_path, tmp_path, {"n": 4})
    with pytest.raises(SystemExit, match="not a reward model directory"):
        systems.load_wrapper("best_of_n", tmp_path, tmp_path, {"n": 4, "temperature": 1.0, "top_p": 1.0})
