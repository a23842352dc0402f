"""Talk to any model directory the pipeline wrote: interactively with streamed tokens, or in batch.

    python -m jielong.talk data/models/sft                       # chat; /reset clears, /quit leaves
    python -m jielong.talk data/models/sft --prompts questions.txt --output answers.jsonl
    python -m jielong.talk data/models/base --mode complete --temperature 0.8 --top-k 20

Sampling defaults come from the model's generation_config.json (params sft.generation for chat
models); every one is overridable here: --greedy/--sample, --temperature, --top-k, --top-p,
--repetition-penalty, --max-new-tokens, --stop (repeatable), --seed. A chat model (its tokenizer's
EOS is <|end|>) is prompted through its chat template and keeps the conversation; any other model
continues the raw text. --prompts reads a .txt (one prompt per line) or .jsonl ({"prompt": ...} or
{"messages": [...]}) file and writes one JSON line per prompt.

--self-consistency K answers a chat prompt by sampling K replies and giving the most common one only
if at least --agreement of them give it, else "I do not know." (measured: docs/findings.md).
--gate data/models/<model>-gate answers through the model's gate (jielong/selective.py): the greedy reply
if the model's own likelihoods put P(right) at or above the gate's threshold, else its abstention
sentence; the model is the one the gate names (or the one given, if its weights are the gate's).
--best-of N --reward data/models/reward samples N replies and answers with the one the reward model
scores highest (jielong/best_of_n.py).
Generation itself is jielong/generation.py, which the stages share; this file is the command line.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from pathlib import Path

import torch
from transformers import GenerationConfig, TextIteratorStreamer

from jielong.best_of_n import RewardScorer, best_of_n
from jielong.chat import is_chat_tokenizer
from jielong.generation import encode, generate_batch, load, self_consistent_batch, trim
from jielong.selective import Gate, greedy_replies, load_gate


def sampling(model, args) -> GenerationConfig:
    """The model's defaults with the command line's overrides."""
    config = GenerationConfig.from_dict(model.generation_config.to_dict())
    overrides = {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p,
                 "repetition_penalty": args.repetition_penalty, "max_new_tokens": args.max_new_tokens}
    for key, value in overrides.items():
        if value is not None:
            setattr(config, key, value)
    if args.sample or any(v is not None for k, v in overrides.items() if k in ("temperature", "top_k", "top_p")):
        config.do_sample = True
    if args.greedy:
        config.do_sample = False
    if args.stop:
        config.stop_strings = list(args.stop)
    return config


def is_chat(tok, mode: str) -> bool:
    return mode == "chat" or (mode == "auto" and is_chat_tokenizer(tok))


def read_prompts(path: Path) -> list[str | list[dict]]:
    """A .txt file's non-blank lines, or a .jsonl file's {"prompt": str} / {"messages": [{role, content}]}
    objects; anything else stops naming the file and line (counted in the file, blank ones included)."""
    if not path.is_file():
        raise SystemExit(f"talk: prompts file {path} " + ("is a directory" if path.is_dir() else "not found"))
    lines = [(n, line) for n, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
    if not lines:
        raise SystemExit(f"talk: prompts file {path} has no prompt (every line is blank)")
    if path.suffix != ".jsonl":
        return [line for _, line in lines]
    items = []
    for n, line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise SystemExit(f"talk: {path}:{n}: not a JSON line ({err.msg} at column {err.colno})") from None
        if not isinstance(row, dict):
            raise SystemExit(f"talk: {path}:{n}: expected a JSON object, got {type(row).__name__}")
        if "messages" in row:
            messages = row["messages"]
            if not (isinstance(messages, list) and messages and all(
                    isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                    for m in messages)):
                raise SystemExit(f"talk: {path}:{n}: 'messages' must be a non-empty list of "
                                 "{\"role\": ..., \"content\": ...} objects")
            items.append(messages)
        elif "prompt" in row:
            if not isinstance(row["prompt"], str):
                raise SystemExit(f"talk: {path}:{n}: 'prompt' must be a string, got {type(row['prompt']).__name__}")
            items.append(row["prompt"])
        else:
            raise SystemExit(f"talk: {path}:{n}: expected a 'prompt' or 'messages' field, got {sorted(row)}")
    return items


def check_args(args) -> None:
    """Every bad flag stops before the model loads, naming the flag and the value."""
    if args.greedy and args.sample:
        raise SystemExit("talk: --greedy and --sample contradict each other")
    if args.gate is not None and (args.self_consistency or args.best_of or args.sample or args.temperature is not None
                                  or args.top_k is not None or args.top_p is not None):
        raise SystemExit("talk: --gate decides on the greedy reply its calibrator was fitted on; it does not combine "
                         "with --self-consistency, --best-of or sampling flags")
    if args.self_consistency and (args.greedy or args.self_consistency < 2 or not 0 < args.agreement <= 1):
        raise SystemExit(f"talk: --self-consistency {args.self_consistency} needs K >= 2 sampled replies (not "
                         f"--greedy) and 0 < --agreement <= 1 (got {args.agreement})")
    if args.best_of and (args.best_of < 2 or args.greedy or args.self_consistency or args.reward is None):
        raise SystemExit(f"talk: --best-of {args.best_of} needs N >= 2 sampled replies (not --greedy, not with "
                         f"--self-consistency) and --reward, a reward model directory (got {args.reward})")
    if args.reward is not None and not args.best_of:
        raise SystemExit("talk: --reward is what --best-of N chooses with; give --best-of too")
    bounds = {"--temperature": (args.temperature, "> 0", lambda v: v > 0),
              "--top-k": (args.top_k, ">= 0 (0: off)", lambda v: v >= 0),
              "--top-p": (args.top_p, "in (0, 1]", lambda v: 0 < v <= 1),
              "--repetition-penalty": (args.repetition_penalty, "> 0", lambda v: v > 0),
              "--max-new-tokens": (args.max_new_tokens, ">= 1", lambda v: v >= 1),
              "--batch-size": (args.batch_size, ">= 1", lambda v: v >= 1)}
    for flag, (value, want, ok) in bounds.items():
        if value is not None and not ok(value):
            hint = " (use --greedy for deterministic replies)" if flag == "--temperature" else ""
            raise SystemExit(f"talk: {flag} must be {want}, got {value}{hint}")
    if args.output is not None and not args.output.parent.is_dir():
        raise SystemExit(f"talk: --output {args.output}: directory {args.output.parent} does not exist")


def gated_batch(tok, model, gate: Gate, prompts: list[str], questions: list[str | None]) -> list[str]:
    """The greedy reply to each prompt (decoded as the gate was fitted on), or the gate's sentence."""
    replies = greedy_replies(model, tok, prompts, gate.decoding)
    said, _ = gate.decide(model, tok, prompts, questions, replies)
    return [s.strip() for s in said]


def last_user(item: str | list[dict]) -> str | None:
    """The question a prompt asks: the text itself, or its last user turn."""
    if isinstance(item, str):
        return item
    return next((m["content"] for m in reversed(item) if m["role"] == "user"), None)


def interactive(tok, model, config: GenerationConfig, chat: bool, system: str | None,
                consistency: tuple[int, float] | None = None, batch_size: int = 16, gate: Gate | None = None,
                best: tuple[int, RewardScorer] | None = None) -> None:
    history: list[dict] = [{"role": "system", "content": system}] if system else []
    print(f"[{'chat' if chat else 'complete'} mode; /reset clears the conversation, /quit or Ctrl-D leaves]")
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            print()
            return
        if line in ("/quit", "/exit"):
            return
        if line == "/reset":
            history = history[:1] if system else []
            continue
        if not line:
            continue
        prompt = encode(tok, chat, [*history, {"role": "user", "content": line}] if chat else line)
        if gate is not None:  # the whole reply is read before it is given: nothing to stream
            reply = gated_batch(tok, model, gate, [prompt], [line])[0]
            print(f"model> {reply}")
            history += [{"role": "user", "content": line}, {"role": "assistant", "content": reply}]
            continue
        if consistency or best:  # k replies decide one: nothing to stream
            reply = (self_consistent_batch(tok, model, config, [prompt], *consistency, batch_size)[0] if consistency
                     else best_of_n(tok, model, config, [[*history, {"role": "user", "content": line}]], best[0],
                                    best[1], batch_size)[0][0])
            print(f"model> {reply}")
            history += [{"role": "user", "content": line}, {"role": "assistant", "content": reply}]
            continue
        enc = tok(prompt, return_tensors="pt", add_special_tokens=False).to(model.device)
        streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
        worker = threading.Thread(target=model.generate, kwargs={**enc, "generation_config": config,
                                                                 "tokenizer": tok, "streamer": streamer})
        worker.start()
        print("model> ", end="", flush=True)
        reply, shown = "", 0
        for piece in streamer:
            reply += piece
            # the reply as batch mode gives it: without the opening space, and cut before a stop string
            # (generate stops after one but keeps it); a stop split over pieces shows its first part
            text = trim(reply, config.stop_strings) if any(s in reply for s in config.stop_strings or []) \
                else reply.lstrip()
            print(text[shown:], end="", flush=True)
            shown = max(shown, len(text))
        worker.join()
        print()
        if chat:
            history += [{"role": "user", "content": line}, {"role": "assistant", "content": trim(reply, config.stop_strings)}]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path, nargs="?", help="a model directory, e.g. data/models/sft (with --gate: "
                    "the model the gate names, by default)")
    ap.add_argument("--prompts", type=Path, help="batch mode: a .txt or .jsonl file of prompts")
    ap.add_argument("--output", type=Path, help="batch mode: write JSON lines here (default: stdout)")
    ap.add_argument("--mode", choices=["auto", "chat", "complete"], default="auto")
    ap.add_argument("--system", help="a system prompt (chat mode)")
    ap.add_argument("--greedy", action="store_true", help="greedy decoding")
    ap.add_argument("--sample", action="store_true", help="sample (implied by --temperature/--top-k/--top-p)")
    ap.add_argument("--temperature", type=float)
    ap.add_argument("--top-k", type=int, help="0 turns top-k off")
    ap.add_argument("--top-p", type=float)
    ap.add_argument("--repetition-penalty", type=float)
    ap.add_argument("--max-new-tokens", type=int)
    ap.add_argument("--stop", action="append", help="a stop string (repeatable)")
    ap.add_argument("--self-consistency", type=int, default=0, metavar="K",
                    help="chat models: sample K replies, answer with the most common or say I do not know")
    ap.add_argument("--agreement", type=float, default=0.6,
                    help="with --self-consistency: the share of the K replies the answer needs (default 0.6)")
    ap.add_argument("--gate", type=Path, help="a gate directory (data/models/<model>-gate): answer greedily, or say "
                    "the gate's abstention sentence where the model's own likelihoods say it does not know")
    ap.add_argument("--best-of", type=int, default=0, metavar="N",
                    help="chat models: sample N replies, answer with the one --reward scores highest")
    ap.add_argument("--reward", type=Path, help="with --best-of: a reward model directory, e.g. data/models/reward")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    check_args(args)
    items = read_prompts(args.prompts) if args.prompts is not None else None
    torch.manual_seed(args.seed)
    gate = None
    if args.gate is not None:
        gate = load_gate(args.gate)
        args.model = args.model or Path(gate.model)
    if args.model is None:
        raise SystemExit("talk: name a model directory (or a --gate, which names its model)")
    try:
        tok, model = load(args.model, args.device)
        if gate is not None:
            load_gate(args.gate, args.model)  # the model's weights are the ones the gate was fitted on
    except SystemExit as err:
        raise SystemExit(f"talk: {err}") from None
    config = sampling(model, args)
    chat = is_chat(tok, args.mode)
    if args.self_consistency and not chat:
        raise SystemExit(f"talk: --self-consistency compares a chat model's replies; {args.model} is prompted "
                         "as a base model (--mode complete or no chat template)")
    consistency = (args.self_consistency, args.agreement) if args.self_consistency else None
    best = None
    if args.best_of:
        if not chat:
            raise SystemExit(f"talk: --best-of scores a chat model's replies; {args.model} is prompted as a base model")
        try:
            scorer = RewardScorer(args.reward, args.device)
        except SystemExit as err:
            raise SystemExit(f"talk: --reward: {err}") from None
        if not scorer.vocab_matches(tok):
            raise SystemExit(f"talk: the tokenizers of {args.model} and {args.reward} differ; the reward model must "
                             "be trained from this chat model")
        best = (args.best_of, scorer)
    if args.prompts is None:
        interactive(tok, model, config, chat, args.system, consistency, args.batch_size, gate, best)
        return
    if chat and args.system:
        items = [[{"role": "system", "content": args.system}, *([{"role": "user", "content": i}] if isinstance(i, str) else i)]
                 for i in items]
    prompts = [encode(tok, chat, i) for i in items]
    if gate is not None:
        replies = gated_batch(tok, model, gate, prompts, [last_user(i) for i in items])
    elif best:
        messages = [[{"role": "user", "content": i}] if isinstance(i, str) else i for i in items]
        replies = best_of_n(tok, model, config, messages, best[0], best[1], args.batch_size)[0]
    elif consistency:
        replies = self_consistent_batch(tok, model, config, prompts, *consistency, args.batch_size)
    else:
        replies = generate_batch(tok, model, config, prompts, args.batch_size)
    out = args.output.open("w") if args.output else sys.stdout
    try:
        for item, reply in zip(items, replies, strict=True):
            out.write(json.dumps({"prompt": item, "reply": reply}, ensure_ascii=False) + "\n")
    finally:
        if args.output:
            out.close()


if __name__ == "__main__":
    main()
