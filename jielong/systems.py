"""Systems: a model with something between the prompt and the reply, evaluated as lm-eval evaluates a model.

A *system* is a model directory plus a *wrapper* that decides, at answer time, what the system says:
a gate that says "I do not know" where the model's own likelihoods show it does not know
(jielong/selective.py), or a best-of-N that samples N replies and lets a reward model pick one. The eval
stage evaluates a system exactly as it evaluates a model (`python -m stages.eval --model data/models/sft
--wrapper gate --artifact data/models/sft-gate --name sft-gated`; params `eval.systems`), so its metrics
sit next to the model's in metrics/eval/ and the CI gate compares them item by item like any model's.

The mechanism is one lm-eval model class, SystemLM, registered under lm-eval's own registry as
"jielong-system": a subclass of lm-eval's HFLM whose `generate_until` hands the requests to the wrapper.
Likelihood requests (multiple choice, perplexity) pass through to the model unchanged: a wrapper changes
what the system *says*, not what the model's probabilities are.

A wrapper is one method (the Wrapper protocol below):

    answer(lm, asked) -> replies        one reply per Asked, in order

where `lm` is the SystemLM (its `.model` and `.tokenizer` are the Hugging Face objects, and
`lm.model_replies(asked)` gives the model's own replies, as lm-eval's HFLM generates them for the
model alone) and each Asked holds the prompt as the model reads it, the question the user asked (the
last user turn, when the prompt came through the chat template) and lm-eval's generation arguments. A
new wrapper is a function `load(artifact_dir, model_dir, **options) -> Wrapper` added to WRAPPERS under its
name (what params `eval.systems.<name>.wrapper` says); `artifact_dir` is what its system names in
`eval.systems.<name>.artifact` (a gate, a reward model), checked to belong with `model_dir` by the loader,
and `options` are `eval.systems.<name>.options` (best-of-N's n, temperature, top_p).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Protocol

from lm_eval.api.model import CacheHook
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

from jielong import best_of_n, selective


@dataclass(frozen=True)
class Asked:
    """One generation request as a wrapper sees it."""

    context: str  # the prompt as the model reads it (chat template applied, for a chat model)
    question: str | None  # the last user turn when the prompt came through the chat template, else None
    gen_kwargs: dict = field(hash=False)  # lm-eval's: until, max_gen_toks, do_sample, temperature, ...


class Wrapper(Protocol):
    """What a system does at answer time: from the requests to the replies lm-eval scores."""

    def answer(self, lm: SystemLM, asked: list[Asked]) -> list[str]: ...


# name (params eval.systems.<name>.wrapper) -> load(artifact_dir, model_dir, **options) -> Wrapper
WRAPPERS: dict[str, Callable[..., Wrapper]] = {
    "gate": selective.load_gate,  # "I do not know." where P(right) from the model's own likelihoods is low
    "best_of_n": best_of_n.load_system,  # n sampled replies, the reward model's favourite said
}


def load_wrapper(kind: str, artifact: Path, model_dir: Path, options: dict | None = None) -> Wrapper:
    """The wrapper `kind` over its artifact; an unknown kind or option fails naming the known ones."""
    if kind not in WRAPPERS:
        raise SystemExit(f"systems: unknown wrapper {kind!r} (params eval.systems); known: {sorted(WRAPPERS)}")
    load = WRAPPERS[kind]
    known = {n: a for n, a in inspect.signature(load).parameters.items() if a.kind == a.KEYWORD_ONLY}
    unknown = sorted(set(options or {}) - set(known))
    missing = sorted(n for n, a in known.items() if a.default is a.empty and n not in (options or {}))
    if unknown or missing:
        raise SystemExit(f"systems: wrapper {kind!r}: params eval.systems.<name>.options "
                         f"{'has no ' + str(unknown) if unknown else 'lacks ' + str(missing)}; its options: "
                         f"{sorted(known) or 'none'}")
    return load(Path(artifact), Path(model_dir), **(options or {}))


@register_model("jielong-system")
class SystemLM(HFLM):
    """lm-eval's HF model with a wrapper deciding every generated reply; likelihoods are the model's."""

    def __init__(self, *args, wrapper: Wrapper, **kwargs):
        super().__init__(*args, **kwargs)
        self.wrapper = wrapper
        self.questions: dict[str, str] = {}  # rendered prompt -> its last user turn

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """As HFLM renders it, remembering which question each rendered prompt asks (the wrapper may score
        the question's tokens, and cannot find them in the rendered text for every template)."""
        text = super().apply_chat_template(chat_history, add_generation_prompt)
        users = [m["content"] for m in chat_history if m.get("role") == "user"]
        if users:
            self.questions[text] = users[-1]
        return text

    def model_replies(self, asked: list[Asked]) -> list[str]:
        """The model's own replies to `asked`, as HFLM generates them for the model alone.

        lm-eval's request cache (a killed eval resumes from it) must hold the system's replies, not these:
        the cache hook is off while they are generated, and generate_until caches what the wrapper says."""
        hook, self.cache_hook = self.cache_hook, CacheHook(None)
        try:
            return super().generate_until([SimpleNamespace(args=(a.context, a.gen_kwargs)) for a in asked],
                                          disable_tqdm=True)
        finally:
            self.cache_hook = hook

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        asked = [Asked(context, self.questions.get(context), dict(kwargs)) for context, kwargs in
                 (r.args for r in requests)]
        replies = self.wrapper.answer(self, asked)
        if len(replies) != len(asked):
            raise RuntimeError(f"systems: wrapper {type(self.wrapper).__name__} gave {len(replies)} replies to "
                               f"{len(asked)} requests")
        for request, reply in zip(requests, replies, strict=True):
            self.cache_hook.add_partial("generate_until", request.args, reply)
        return replies
