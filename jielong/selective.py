"""Selective answering: the model's own likelihoods decide whether its reply is given or "I do not know.".

The source notes' probe made part of the served system: ask the model again, and read how sure it was of
the question it was asked and of the reply it gave. Every signal is computed by the model itself on the
prompt and its reply, batched; nothing reads the world's knowledge base, so a gate serves any causal LM
and any question.

Signals (SIGNALS; log-probabilities in nats, each token's given the text before it):
- question_logprob_mean, question_logprob_min: the question's tokens in the prompt. A network that keys
  people by first name still predicts a known person's surname after it, and not a never-seen one's
  (docs/findings.md "The model knows whom it has read about, but cannot see that it does").
- span_logprob_min: the minimum over the runs of the question's words that the reply repeats (a name
  it answers about), each run's first token aside: how well the model predicts the rest of a name
  from its start. The question's minimum when no run has a second token.
- reply_logprob_mean, reply_entropy_mean: the reply's tokens, and the entropy of the distribution each
  was drawn from, read after the prompt.
- agreement: the share of k sampled replies with the reply's canonical form (grading.canonical without
  a question-bank item: normalised text, every abstention one answer).

A calibrator (scikit-learn's logistic regression on standardised signals, fitted by stages/gate_fit.py
on the sft and rl people's questions with the world's gold labels) maps the signals of a reply that is
not already an abstention to P(the reply is right). The gate answers when that is at least its
threshold, else with its abstention sentence. Its artifact is `<dir>/gate.json`: plain JSON (feature
names, scaler, coefficients, threshold, sentence, decoding settings, and the model it belongs to by
the sha256 of its weights). Nothing is unpickled: a gate directory holding a pickle is refused.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import GenerationConfig

from jielong import grading

SIGNALS = ("question_logprob_mean", "question_logprob_min", "span_logprob_min", "reply_logprob_mean",
           "reply_entropy_mean", "agreement")
# +1: a larger value says the reply is more likely right; -1 smaller (an AUROC is reported in that direction)
DIRECTION = {s: -1.0 if s == "reply_entropy_mean" else 1.0 for s in SIGNALS}
FORMAT = "jielong-gate/1"
ARTIFACT = "gate.json"
PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib", ".pt", ".pth", ".bin", ".npy", ".npz", ".skops")
_WORD = re.compile(r"\w+")


# ---------------------------------------------------------------- decoding
@dataclass(frozen=True)
class Decoding:
    """How replies are generated for the signals: the reply itself greedily, `k` samples for agreement."""

    k: int
    temperature: float
    top_p: float
    top_k: int  # 0: off
    max_new_tokens: int
    stop: tuple[str, ...]  # besides the model's end-of-turn token
    seed: int
    batch_size: int

    def config(self, model, sample: bool) -> GenerationConfig:
        base = {k: v for k, v in model.generation_config.to_dict().items()
                if k in ("bos_token_id", "eos_token_id", "pad_token_id")}
        kwargs = dict(do_sample=True, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k) if sample \
            else dict(do_sample=False)
        return GenerationConfig(**base, **kwargs, max_new_tokens=self.max_new_tokens,
                                stop_strings=list(self.stop) or None)


def cut(text: str, stops: tuple[str, ...] | list[str]) -> str:
    """A decoded continuation up to its first stop string, its opening space kept (as lm-eval returns it)."""
    for stop in stops:
        if stop and stop in text:
            text = text[:text.index(stop)]
    return text


@torch.no_grad()
def greedy_replies(model, tok, contexts: list[str], decoding: Decoding) -> list[str]:
    """The greedy continuation of each context, decoded without special tokens and cut at a stop string."""
    config, replies = decoding.config(model, sample=False), []
    side, tok.padding_side = tok.padding_side, "left"
    try:
        for i in range(0, len(contexts), decoding.batch_size):
            enc = tok(contexts[i:i + decoding.batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
            enc = {k: v.to(model.device) for k, v in enc.items()}
            out = model.generate(**enc, generation_config=config, tokenizer=tok)
            replies += [cut(tok.decode(row, skip_special_tokens=True), decoding.stop)
                        for row in out[:, enc["input_ids"].shape[1]:]]
    finally:
        tok.padding_side = side
    return replies


@torch.no_grad()
def sampled_replies(model, tok, contexts: list[str], decoding: Decoding) -> list[list[str]]:
    """k sampled continuations of each context. Each context's k are drawn under a seed of its own
    (decoding.seed and the context's CRC32), so they do not depend on which other prompts are asked with it."""
    config, out = decoding.config(model, sample=True), []
    for context in contexts:
        torch.manual_seed(decoding.seed + zlib.crc32(context.encode()))
        ids = tok(context, return_tensors="pt", add_special_tokens=False)["input_ids"].to(model.device)
        rows = model.generate(input_ids=ids.repeat(decoding.k, 1), attention_mask=torch.ones_like(ids).repeat(decoding.k, 1),
                              generation_config=config, tokenizer=tok)
        out.append([cut(tok.decode(r, skip_special_tokens=True), decoding.stop) for r in rows[:, ids.shape[1]:]])
    return out


# ---------------------------------------------------------------- signals
def question_span(context: str, question: str | None) -> tuple[int, int]:
    """Where the question lies in the prompt (its last occurrence); the whole prompt if not given or not found."""
    at = context.rfind(question) if question else -1
    return (at, at + len(question)) if at >= 0 else (0, len(context))


def repeated_runs(question: str, reply: str) -> list[tuple[int, int]]:
    """Character spans (in `question`) of its runs of consecutive words that `reply` repeats (compared
    case-insensitively): "When was Ada Dunmore born?" answered "Ada Dunmore was born in Lisbon." gives
    the spans of "Ada Dunmore" and "born" ("was" too, but "When" is not repeated)."""
    said, runs = {w.lower() for w in _WORD.findall(reply)}, []
    for m in _WORD.finditer(question):
        if m.group(0).lower() not in said:
            continue
        if runs and not question[runs[-1][1]:m.start()].strip():
            runs[-1] = (runs[-1][0], m.end())
        else:
            runs.append(m.span())
    return runs


@torch.no_grad()
def token_scores(model, tok, texts: list[str], batch_size: int) -> list[tuple[list, np.ndarray, np.ndarray]]:
    """Per text: (token character offsets, log-probability of each token given the ones before, entropy of
    the distribution it was drawn from); the first token has neither (NaN). Right-padded batches."""
    out = []
    for i in range(0, len(texts), batch_size):
        enc = [tok(t, add_special_tokens=False, return_offsets_mapping=True) for t in texts[i:i + batch_size]]
        width = max(len(e["input_ids"]) for e in enc)
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        ids = torch.tensor([e["input_ids"] + [pad] * (width - len(e["input_ids"])) for e in enc], device=model.device)
        mask = torch.tensor([[1] * len(e["input_ids"]) + [0] * (width - len(e["input_ids"])) for e in enc],
                            device=model.device)
        logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
        token_logp = logp[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)
        entropy = -(logp[:, :-1].exp() * logp[:, :-1]).sum(-1)
        for row, e in enumerate(enc):
            n = len(e["input_ids"])
            lp = np.concatenate([[np.nan], token_logp[row, :n - 1].cpu().numpy()])
            ent = np.concatenate([[np.nan], entropy[row, :n - 1].cpu().numpy()])
            out.append((e["offset_mapping"], lp, ent))
    return out


def _inside(offsets, spans: list[tuple[int, int]]) -> np.ndarray:
    """Which tokens (but the first, which has no log-probability) overlap any of the character spans."""
    return np.array([i > 0 and any(s < b and e > a for a, b in spans) for i, (s, e) in enumerate(offsets)], dtype=bool)


def agreement(reply: str, samples: list[str]) -> float:
    """Share of the samples with the reply's canonical form (an abstention agrees with any abstention)."""
    form = grading.canonical(reply)
    return sum(grading.canonical(s) == form for s in samples) / len(samples)


def signals(model, tok, contexts: list[str], questions: list[str | None], replies: list[str],
            samples: list[list[str] | None], batch_size: int) -> list[dict[str, float]]:
    """SIGNALS of each reply (a continuation of its context, opening space kept) to its question; a reply
    without samples (None) has no agreement (NaN)."""
    scored = token_scores(model, tok, [c + r for c, r in zip(contexts, replies, strict=True)], batch_size)
    rows = []
    for context, question, reply, sample, (offsets, lp, ent) in zip(contexts, questions, replies, samples, scored,
                                                                    strict=True):
        qs, qe = question_span(context, question)
        in_question = _inside(offsets, [(qs, qe)])
        in_span = np.zeros(len(offsets), dtype=bool)
        for a, b in repeated_runs(context[qs:qe], reply):
            run = np.flatnonzero(_inside(offsets, [(qs + a, qs + b)]) & in_question)
            in_span[run[1:]] = True  # the run's first token depends on what precedes it, not on the name
        in_reply = np.array([e > len(context) for _, e in offsets], dtype=bool)
        in_reply[0] = False
        q = lp[in_question] if in_question.any() else np.array([0.0])
        rows.append({
            "question_logprob_mean": float(q.mean()),
            "question_logprob_min": float(q.min()),
            "span_logprob_min": float(lp[in_span].min()) if in_span.any() else float(q.min()),
            # an empty reply (the end-of-turn token at once) has no token to read: 0, as sure as can be
            "reply_logprob_mean": float(lp[in_reply].mean()) if in_reply.any() else 0.0,
            "reply_entropy_mean": float(ent[in_reply].mean()) if in_reply.any() else 0.0,
            "agreement": agreement(reply, sample) if sample is not None else float("nan"),
        })
    return rows


# ---------------------------------------------------------------- calibrator
@dataclass(frozen=True)
class Calibrator:
    """Logistic regression on standardised signals, as JSON numbers: P = sigmoid(((x - mean) / scale) . coef + b)."""

    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float

    def predict(self, rows: list[dict[str, float]]) -> np.ndarray:
        x = np.array([[r[f] for f in self.features] for r in rows], dtype=float).reshape(len(rows), len(self.features))
        z = ((x - np.array(self.mean)) / np.array(self.scale)) @ np.array(self.coef) + self.intercept
        return 1.0 / (1.0 + np.exp(-z))

    def to_json(self) -> dict:
        return {"kind": "logistic_regression", "features": list(self.features), "mean": list(self.mean),
                "scale": list(self.scale), "coef": list(self.coef), "intercept": self.intercept}

    @classmethod
    def from_json(cls, raw: dict, where: str) -> Calibrator:
        if raw.get("kind") != "logistic_regression":
            raise SystemExit(f"{where}: calibrator.kind must be logistic_regression, got {raw.get('kind')!r}")
        feats = tuple(raw["features"])
        unknown = sorted(set(feats) - set(SIGNALS))
        if unknown:
            raise SystemExit(f"{where}: calibrator.features {unknown} are not signals this code computes ({SIGNALS})")
        vectors = [tuple(float(v) for v in raw[k]) for k in ("mean", "scale", "coef")]
        if any(len(v) != len(feats) for v in vectors) or not all(math.isfinite(v) for vec in vectors for v in vec):
            raise SystemExit(f"{where}: calibrator mean/scale/coef must be {len(feats)} finite numbers each")
        return cls(feats, *vectors, float(raw["intercept"]))


def fit_calibrator(rows: list[dict[str, float]], right: list[bool], features: list[str], c: float) -> Calibrator:
    """scikit-learn's StandardScaler + LogisticRegression(C=c) on the rows' `features`, as a Calibrator."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x = np.array([[r[f] for f in features] for r in rows], dtype=float)
    scaler = StandardScaler().fit(x)
    mean, scale = tuple(map(float, scaler.mean_)), tuple(float(s) for s in scaler.scale_)
    if len(set(right)) < 2:
        # scikit-learn's LogisticRegression refuses a single class; a model that is never (or always) right
        # on these rows gets the constant P(right) of its smoothed rate, which no signal changes
        rate = (sum(right) + 0.5) / (len(right) + 1)
        return Calibrator(tuple(features), mean, scale, (0.0,) * len(features), float(np.log(rate / (1 - rate))))
    lr = LogisticRegression(C=c, max_iter=1000).fit(scaler.transform(x), np.array(right, dtype=int))
    return Calibrator(tuple(features), mean, scale, tuple(map(float, lr.coef_[0])), float(lr.intercept_[0]))


def out_of_fold(rows: list[dict[str, float]], right: list[bool], groups: list[str], features: list[str], c: float,
                folds: int) -> np.ndarray:
    """P(right) of each row from a calibrator fitted without its group's rows (scikit-learn's GroupKFold by
    person), so that a threshold chosen on them is chosen on predictions for people the fit did not see."""
    from sklearn.model_selection import GroupKFold

    p = np.zeros(len(rows))
    for train, held in GroupKFold(n_splits=folds).split(rows, right, groups):
        p[held] = fit_calibrator([rows[i] for i in train], [right[i] for i in train], features,
                                 c).predict([rows[i] for i in held])
    return p


def choose_threshold(p_right: np.ndarray, abstains: np.ndarray, target: float) -> float:
    """The largest threshold (a P(right) below it abstains) at which the known people's questions are
    refused, by the model's own abstentions and the gate's together, at most `target` of the time; 0 (the
    gate never abstains) when the model alone already refuses more."""
    n = len(p_right)
    room = math.floor(target * n + 1e-9) - int(abstains.sum())
    answered = np.sort(p_right[~abstains])
    if room < 0 or len(answered) == 0:
        return 0.0
    return float(answered[room]) if room < len(answered) else 1.0


# ---------------------------------------------------------------- the gate
def model_sha256(model_dir: Path) -> str:
    """sha256 over the model's weight files (*.safetensors, by name): which model a gate was fitted on."""
    h = hashlib.sha256()
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise SystemExit(f"{model_dir}: no *.safetensors weights to identify the model by")
    for f in files:
        h.update(f.name.encode())
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


@dataclass(frozen=True)
class Gate:
    """A fitted gate: P(right) below `threshold` -> `sentence`. Loaded by load_gate, written by to_json."""

    model: str  # the model directory it was fitted on, as the stage named it
    model_sha256: str
    decoding: Decoding
    calibrator: Calibrator
    threshold: float
    sentence: str

    def to_json(self) -> dict:
        d = self.decoding
        return {"format": FORMAT, "model": self.model, "model_sha256": self.model_sha256,
                "decoding": {"k": d.k, "temperature": d.temperature, "top_p": d.top_p, "top_k": d.top_k,
                             "max_new_tokens": d.max_new_tokens, "stop": list(d.stop), "seed": d.seed,
                             "batch_size": d.batch_size},
                "calibrator": self.calibrator.to_json(), "threshold": self.threshold, "sentence": self.sentence}

    def decide(self, model, tok, contexts: list[str], questions: list[str | None],
               replies: list[str]) -> tuple[list[str], list[dict]]:
        """(what the system says, and per reply its signals and P(right)). A reply that is already an
        abstention is given as it is; any other is given if P(right) >= threshold, else the sentence."""
        todo = [i for i, r in enumerate(replies) if not grading.is_abstention(r)]
        said, records = list(replies), [{"abstains": True, "p_right": None} for _ in replies]
        if todo:
            ctx = [contexts[i] for i in todo]
            # the k samples feed the agreement signal alone: a calibrator without it is not worth k generations
            samples = (sampled_replies(model, tok, ctx, self.decoding) if "agreement" in self.calibrator.features
                       else [None] * len(ctx))
            rows = signals(model, tok, ctx, [questions[i] for i in todo], [replies[i] for i in todo], samples,
                           self.decoding.batch_size)
            for i, row, p in zip(todo, rows, self.calibrator.predict(rows), strict=True):
                records[i] = {**row, "abstains": False, "p_right": float(p)}
                if p < self.threshold:
                    said[i] = self.sentence
        return said, records

    def answer(self, lm, asked) -> list[str]:
        """jielong.systems' Wrapper: the model's own replies (lm-eval's HFLM), gated; each distinct prompt and
        reply is decided once (world_facts_gen and world_known ask a chat model the same prompts)."""
        replies = lm.model_replies(asked)
        keys = list(dict.fromkeys((a.context, a.question, r) for a, r in zip(asked, replies, strict=True)))
        said, _ = self.decide(lm.model, lm.tokenizer, [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys])
        by_key = dict(zip(keys, said, strict=True))
        return [by_key[(a.context, a.question, r)] for a, r in zip(asked, replies, strict=True)]


def load_gate(gate_dir: Path, model_dir: Path | None = None) -> Gate:
    """The gate in `gate_dir`/gate.json; refuses a directory holding a pickle (or any serialised object
    format), a gate.json that is not JSON of this format, and, with `model_dir`, a model it was not fitted on."""
    gate_dir = Path(gate_dir)
    path = gate_dir / ARTIFACT
    pickles = sorted(p.name for p in gate_dir.glob("*") if p.suffix.lower() in PICKLE_SUFFIXES) if gate_dir.is_dir() else []
    if pickles:
        raise SystemExit(f"gate: {gate_dir} holds {pickles}: a gate is plain JSON ({ARTIFACT}); pickled or other "
                         "serialised objects are never loaded")
    if not path.is_file():
        raise SystemExit(f"gate: {path} not found (a gate directory is what `python -m stages.gate_fit` writes)")
    data = path.read_bytes()
    if data[:1] == b"\x80" or b"\x80\x04\x95" in data[:8]:
        raise SystemExit(f"gate: {path} is a pickle, not JSON; pickles are never loaded")
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SystemExit(f"gate: {path} is not JSON ({err})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise SystemExit(f"gate: {path}: expected format {FORMAT!r}, got {raw.get('format') if isinstance(raw, dict) else raw!r}")
    try:
        d = raw["decoding"]
        gate = Gate(str(raw["model"]), str(raw["model_sha256"]),
                    Decoding(int(d["k"]), float(d["temperature"]), float(d["top_p"]), int(d["top_k"]),
                             int(d["max_new_tokens"]), tuple(str(s) for s in d["stop"]), int(d["seed"]),
                             int(d["batch_size"])),
                    Calibrator.from_json(raw["calibrator"], str(path)), float(raw["threshold"]), str(raw["sentence"]))
    except (KeyError, TypeError, ValueError) as err:
        raise SystemExit(f"gate: {path}: missing or malformed field ({err!r})") from None
    if not 0.0 <= gate.threshold <= 1.0:
        raise SystemExit(f"gate: {path}: threshold must lie in [0, 1], got {gate.threshold}")
    if model_dir is not None and model_sha256(model_dir) != gate.model_sha256:
        raise SystemExit(f"gate: {path} was fitted on {gate.model} (weights sha256 {gate.model_sha256[:12]}...), "
                         f"not on {model_dir}")
    return gate
