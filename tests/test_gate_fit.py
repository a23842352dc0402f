"""Selective answering (jielong/selective.py, stages/gate_fit.py): each signal on a hand-made case, a
calibrator that recovers a known rule, a gate that refuses pickles and other models, and the gated eval
of a tiny chat model end to end (gate_fit, eval_system, talk --gate)."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from jielong import selective

from .conftest import REPO, write_params
from .test_systems import chat_model  # noqa: F401  (fixture)


# ---------------------------------------------------------------- signals
class Unigram:
    """A causal LM that predicts the same distribution at every position: softmax(logits)."""

    def __init__(self, logits: torch.Tensor):
        self.logits, self.device = logits, torch.device("cpu")

    def __call__(self, input_ids, attention_mask):
        return SimpleNamespace(logits=self.logits.expand(*input_ids.shape, -1).clone())


def test_each_signal_on_a_hand_made_case(tiny_tokenizer_dir):
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast.from_pretrained(tiny_tokenizer_dir / "tok")
    question, reply = "When was Ada Dunmore born?", " Ada Dunmore was born in Lisbon."
    context = f"<|user|>Q: {question}<|end|>\n<|assistant|> A:"
    when, dunmore = (set(tok.encode(w, add_special_tokens=False)) for w in (" When", " Dunmore"))
    logits = torch.zeros(len(tok))
    logits[list(dunmore)] = -10.0  # the surname: unlikely
    logits[list(when)] = -20.0  # the question's first word: least likely, but not a word the reply repeats
    ids = tok.encode(context + reply, add_special_tokens=False)
    assert not when & dunmore and ids.count(next(iter(when))) == 1  # the case is as designed
    log_z = torch.logsumexp(logits, 0).item()
    entropy = -(torch.softmax(logits, 0) * torch.log_softmax(logits, 0)).sum().item()
    samples = [" Ada Dunmore was born in Lisbon.", "ada dunmore was born in lisbon", " I do not know.", " Porto"]

    (row,) = selective.signals(Unigram(logits), tok, [context], [question], [reply], [samples], batch_size=4)

    q_ids = tok.encode(" " + question, add_special_tokens=False)  # the question as the prompt tokenises it
    r_ids = tok.encode(reply, add_special_tokens=False)
    assert row["question_logprob_min"] == pytest.approx(-20.0 - log_z, abs=1e-4)  # " When"
    assert row["question_logprob_mean"] == pytest.approx(np.mean([logits[i].item() for i in q_ids]) - log_z, abs=1e-4)
    # the run the reply repeats is "was Ada Dunmore born"; its first token aside, its least likely is the surname
    assert row["span_logprob_min"] == pytest.approx(-10.0 - log_z, abs=1e-4)
    assert row["reply_logprob_mean"] == pytest.approx(np.mean([logits[i].item() for i in r_ids]) - log_z, abs=1e-4)
    assert row["reply_entropy_mean"] == pytest.approx(entropy, abs=1e-4)
    assert row["agreement"] == 0.5  # two of four samples say the reply, whatever their case and punctuation
    # a reply that repeats no run of two tokens: the span is the question's minimum
    (other,) = selective.signals(Unigram(logits), tok, [context], [question], [" Lisbon."], [samples], batch_size=4)
    assert other["span_logprob_min"] == other["question_logprob_min"] and other["agreement"] == 0.0


def test_repeated_runs_and_question_span():
    q = "When was Ada Dunmore born?"
    assert [q[a:b] for a, b in selective.repeated_runs(q, "Ada Dunmore was born in Lisbon.")] == ["was Ada Dunmore born"]
    assert [q[a:b] for a, b in selective.repeated_runs(q, "ada dunmore? I think Lisbon")] == ["Ada Dunmore"]
    assert selective.question_span("<u>Q: x y<e> A:", "x y") == (6, 9)
    assert selective.question_span("a prompt", None) == (0, 8)


# ---------------------------------------------------------------- calibrator and threshold
def test_a_calibrator_fitted_on_synthetic_signals_recovers_the_rule():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, 3))
    right = (2.0 * x[:, 0] - 1.0 * x[:, 1] + 0.3 * rng.logistic(size=4000)) > 0  # the third signal is noise
    names = ["question_logprob_mean", "reply_entropy_mean", "agreement"]
    rows = [dict(zip(names, r, strict=True)) for r in x]
    cal = selective.fit_calibrator(rows, right.tolist(), names, c=10.0)
    coef = np.array(cal.coef) / np.array(cal.scale)  # per unit of each raw signal
    assert coef[0] / -coef[1] == pytest.approx(2.0, rel=0.1) and abs(coef[2]) < 0.05 * abs(coef[0])
    p = cal.predict(rows)
    assert ((p > 0.5) == right).mean() > 0.9  # the noise flips a few
    # the JSON artifact predicts what scikit-learn does
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x)
    sk = LogisticRegression(C=10.0, max_iter=1000).fit(scaler.transform(x), right.astype(int))
    assert np.allclose(p, sk.predict_proba(scaler.transform(x))[:, 1], atol=1e-9)
    again = selective.Calibrator.from_json(json.loads(json.dumps(cal.to_json())), "test")
    assert np.array_equal(again.predict(rows), p)
    # out of fold by group: every row predicted by a fit without its group
    groups = [str(i % 40) for i in range(4000)]
    oof = selective.out_of_fold(rows, right.tolist(), groups, names, 10.0, folds=4)
    assert ((oof > 0.5) == right).mean() > 0.9 and not np.array_equal(oof, p)


def test_a_model_never_right_gets_a_constant_calibrator_from_its_smoothed_rate():
    names = ["question_logprob_mean", "agreement"]
    rows = [{"question_logprob_mean": -float(i), "agreement": i / 10} for i in range(10)]
    cal = selective.fit_calibrator(rows, [False] * 10, names, c=1.0)
    assert cal.coef == (0.0, 0.0) and np.allclose(cal.predict(rows), 0.5 / 11)
    # a fold whose training rows hold one class is predicted the same way, not refused
    right = [i == 0 for i in range(10)]
    oof = selective.out_of_fold(rows, right, [str(i) for i in range(10)], names, 1.0, folds=2)
    assert np.isfinite(oof).all()


def test_the_threshold_refuses_known_facts_at_most_the_target_rate():
    p = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 1.0])
    abstains = np.array([False] * 9 + [True])  # the model itself refuses one of ten
    t = selective.choose_threshold(p, abstains, target=0.3)  # room for two more refusals: 0.1 and 0.2
    assert t == 0.3 and (abstains | (p < t)).mean() == 0.3
    assert selective.choose_threshold(p, abstains, target=0.05) == 0.0  # the model alone refuses more
    assert selective.choose_threshold(p, abstains, target=0.99) == 0.9  # nine of ten refused: the 0.9 answered
    assert selective.choose_threshold(p, abstains, target=1.0) == 1.0


# ---------------------------------------------------------------- the artifact
def test_the_gate_refuses_a_pickle_and_a_model_it_was_not_fitted_on(tmp_path, chat_model):  # noqa: F811
    gate_dir = tmp_path / "sft-gate"
    gate_dir.mkdir()
    cal = selective.Calibrator(("agreement",), (0.5,), (0.2,), (1.0,), 0.0)
    gate = selective.Gate("data/models/sft", selective.model_sha256(chat_model),
                          selective.Decoding(2, 1.0, 1.0, 0, 4, ("\n",), 0, 4), cal, 0.5, "I do not know.")
    (gate_dir / "gate.json").write_text(json.dumps(gate.to_json()))
    assert selective.load_gate(gate_dir, chat_model) == gate

    (gate_dir / "calibrator.pkl").write_bytes(b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00K\x01.")
    with pytest.raises(SystemExit, match=r"holds \['calibrator.pkl'\].*never loaded"):
        selective.load_gate(gate_dir)
    (gate_dir / "calibrator.pkl").unlink()
    (gate_dir / "gate.json").write_bytes(b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00K\x01.")  # pickle.dumps(1)
    with pytest.raises(SystemExit, match=r"gate.json is a pickle, not JSON"):
        selective.load_gate(gate_dir)
    (gate_dir / "gate.json").write_text(json.dumps({**gate.to_json(), "format": "sklearn"}))
    with pytest.raises(SystemExit, match=r"expected format 'jielong-gate/1', got 'sklearn'"):
        selective.load_gate(gate_dir)
    (gate_dir / "gate.json").write_text(json.dumps({**gate.to_json(), "model_sha256": "0" * 64}))
    with pytest.raises(SystemExit, match=r"was fitted on data/models/sft .* not on"):
        selective.load_gate(gate_dir, chat_model)


def test_a_gate_samples_only_when_its_calibrator_reads_agreement(chat_model, monkeypatch):  # noqa: F811
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok, model = AutoTokenizer.from_pretrained(chat_model), AutoModelForCausalLM.from_pretrained(chat_model)
    decoding = selective.Decoding(2, 1.0, 1.0, 0, 4, ("\n",), 0, 4)
    ctx, q = ["<|user|> Where was Ada Quill born?<|end|>\n<|assistant|> A:"], ["Where was Ada Quill born?"]
    sampled = []
    real = selective.sampled_replies
    monkeypatch.setattr(selective, "sampled_replies", lambda *a: sampled.append(1) or real(*a))
    likelihood = selective.Calibrator(("question_logprob_mean",), (0.0,), (1.0,), (1.0,), 50.0)
    said, records = selective.Gate("m", "", decoding, likelihood, 0.5, "I do not know.").decide(model, tok, ctx, q, [" Lyon."])
    assert said == [" Lyon."] and not sampled and math.isnan(records[0]["agreement"])
    with_agreement = selective.Calibrator(("agreement",), (0.5,), (0.2,), (1.0,), 0.0)
    selective.Gate("m", "", decoding, with_agreement, 0.5, "I do not know.").decide(model, tok, ctx, q, [" Lyon."])
    assert sampled == [1]


# ---------------------------------------------------------------- end to end on the tiny profile
def test_the_gated_eval_on_the_tiny_profile(tmp_path, chat_model, tiny_world_dir, tiny_decontam_dir,  # noqa: F811
                                            monkeypatch, capsys):
    """gate_fit writes a gate, eval_system evaluates the model behind it, talk answers through it. A random
    model is never right, so here a known person's reply counts as right: the calibrator needs both labels."""
    import stages.gate_fit as gate_fit
    from jielong.params import load_all
    from jielong.talk import main as talk_main
    from stages.eval import main as eval_main

    params = write_params(tmp_path / "params.yaml", {
        "eval": {"limit": 8, "batch_size": 8, "bootstrap_iters": 0, "extra_tasks": {},
                 "tasks": ["world_facts_gen", "world_unknown", "world_known", "world_facts_mc"]},
        "selective": {"decoding": {"k": 2, "max_new_tokens": 6, "batch_size": 16},
                      "calibrator": {"folds": 3}, "target_false_abstain_rate": 0.5}})
    monkeypatch.setattr(gate_fit.grading, "is_correct", lambda reply, doc: bool(doc["known"]))
    gate_dir, metrics = tmp_path / "models" / "sft-gate", tmp_path / "gate_fit" / "sft.json"
    gate_fit.main(["--model", str(chat_model), "--world", str(tiny_world_dir / "world"),
                   "--evals", str(tiny_decontam_dir / "evals"), "--out", str(gate_dir), "--metrics", str(metrics),
                   "--plots", str(tmp_path / "plots"), "--params", str(params)])
    monkeypatch.undo()
    m = json.loads(metrics.read_text())
    gate = selective.load_gate(gate_dir, chat_model)
    assert gate.calibrator.features == tuple(load_all(params).selective.signals) and 0 <= gate.threshold <= 1
    assert all(0 <= m[f"auroc.right.{s}"] <= 1 and 0 <= m[f"auroc.known.{s}"] <= 1 for s in selective.SIGNALS)
    assert m["fit.gated_out_of_fold.false_abstain_rate"] <= 0.5 + 1e-9
    assert (tmp_path / "plots" / "gate.csv").read_text().startswith("threshold,abstain_rate,false_abstain_rate")
    assert len((tmp_path / "plots" / "consistency.csv").read_text().splitlines()) == 1 + 2  # k agreements

    out = {}
    for name, extra in (("sft", []), ("sft-gated", ["--wrapper", "gate", "--artifact", str(gate_dir)])):
        eval_main(["--model", str(chat_model), "--name", name, "--evals", str(tiny_decontam_dir / "evals"),
                   "--tasks", str(REPO / "evals" / "tasks"), "--out", str(tmp_path / f"{name}.json"),
                   "--samples", str(tmp_path / "eval" / name), "--items", str(tmp_path / "items" / f"{name}.json"),
                   "--work", str(tmp_path / "work" / name), "--params", str(params), *extra])
        out[name] = json.loads((tmp_path / f"{name}.json").read_text())
    alone, gated = out["sft"], out["sft-gated"]
    assert gated["world_facts_mc.acc"] == alone["world_facts_mc.acc"]  # likelihoods pass through
    assert gated["world_unknown.abstain_rate"] >= alone["world_unknown.abstain_rate"]  # the gate only adds refusals
    assert gated["world_known.false_abstain_rate"] >= alone["world_known.false_abstain_rate"]
    assert not math.isnan(gated["gold_reward.mean"])

    prompts = tmp_path / "q.txt"
    prompts.write_text("When was Ada Dunmore born?\nWhere does Bo Lind work?\n")
    talk_main(["--gate", str(gate_dir), str(chat_model), "--prompts", str(prompts), "--device", "cpu"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["prompt"] for r in lines] == ["When was Ada Dunmore born?", "Where does Bo Lind work?"]
    with pytest.raises(SystemExit, match="--gate decides on the greedy reply"):
        talk_main(["--gate", str(gate_dir), "--prompts", str(prompts), "--self-consistency", "3"])
