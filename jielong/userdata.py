"""Your own fine-tuning data: SFT conversations, preference pairs and RL prompts, from JSONL or Parquet.

One record per JSONL line (`.jsonl`, `.jsonl.gz`) or Parquet row (`.parquet`), from local paths, globs
or fsspec URLs (hf://, s3://):

    sft      {"messages": [{"role": "system" | "user" | "assistant", "content": "..."}, ...]}
             an optional system turn first, then user and assistant turns alternating, ending on the assistant
    prefs    {"prompt": "..." or [turns ending on a user turn], "chosen": "..." or [one assistant turn],
              "rejected": the same as chosen}                 (TRL's preference format, both of its forms)
    prompts  {"prompt": "..." or [turns ending on a user turn]}  what PPO rolls out on

Optional fields: `id` (else `<file>:<row>`), and on a pair `kind` (the reward model's accuracy is
reported per kind). Other fields, and turn keys other than role and content, are ignored. Every record
is checked; a bad one is reported as `<file>: row <n>: <field>: <what is wrong> (got <value>)`, rows
counted from 1, and the stage fails listing them (jielong.checks.expect).
"""

from __future__ import annotations

import hashlib
import json

import polars as pl

ROLES = ("system", "user", "assistant")
FORMATS = (".jsonl", ".jsonl.gz", ".parquet")


# ---------------------------------------------------------------- files
def expand(specs: list[str], param: str) -> list[str]:
    """Every file the paths, globs or URLs of `param` name, in order; a spec matching nothing fails naming it."""
    import os
    from glob import has_magic

    from fsspec.core import url_to_fs
    from fsspec.implementations.local import LocalFileSystem

    here = os.getcwd() + os.sep
    files = []
    for i, spec in enumerate(specs):
        fs, path = url_to_fs(spec)
        local = isinstance(fs, LocalFileSystem)
        matches = sorted(fs.glob(path)) if has_magic(path) else [path] if fs.isfile(path) else []
        matches = [m for m in matches if fs.isfile(m)]
        if not matches:
            raise ValueError(f"{param}[{i}] = {spec!r}: no such file" + (" (the glob matches none)" if has_magic(path) else ""))
        for m in matches:
            if not m.endswith(FORMATS):
                raise ValueError(f"{param}[{i}] = {spec!r}: {m} is none of {', '.join(FORMATS)}")
            # named as the user would: relative to the repository root, or by URL
            files.append(m.removeprefix(here) if local else fs.unstrip_protocol(m))
    return files


def records(url: str):
    """(row number from 1, record or None, what is wrong with the line) for every record of one file."""
    import fsspec

    if url.endswith(".parquet"):
        with fsspec.open(url, "rb") as f:
            for n, row in enumerate(pl.read_parquet(f).iter_rows(named=True), 1):
                yield n, row, None
        return
    with fsspec.open(url, "rt", compression="infer", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                yield n, None, f"not JSON ({err.msg} at column {err.colno})"
                continue
            yield n, row, None if isinstance(row, dict) else f"expected a JSON object, got {type(row).__name__}"


def short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


# ---------------------------------------------------------------- turns
def check_turns(turns, field: str, last: str, first_turn: int = 0) -> tuple[list[dict] | None, str | None]:
    """(the turns as [{role, content}], None) or (None, what is wrong, naming the field). `last` is the role
    the turns must end on; `first_turn` 1 for a reply list, which holds only assistant turns."""
    if not isinstance(turns, list) or not turns:
        return None, f"{field}: expected a non-empty list of {{role, content}} turns (got {short(turns)})"
    out = []
    for i, turn in enumerate(turns):
        where = f"{field}[{i}]"
        if not isinstance(turn, dict) or "role" not in turn or "content" not in turn:
            return None, f"{where}: expected an object with role and content (got {short(turn)})"
        role, content = turn["role"], turn["content"]
        if role not in ROLES:
            return None, f"{where}.role: expected one of {', '.join(ROLES)} (got {short(role)})"
        if not isinstance(content, str) or not content.strip():
            return None, f"{where}.content: expected non-empty text (got {short(content)})"
        if role == "system" and i + first_turn > 0:
            return None, f"{where}.role: only the first turn may be the system's (got 'system')"
        offset = 1 if turns[0]["role"] == "system" else 0
        if role != "system":
            expected = ("user", "assistant")[(i - offset + first_turn) % 2]
            if role != expected:
                return None, f"{where}.role: expected {expected!r}, turns alternate user, assistant (got {role!r})"
        out.append({"role": role, "content": content})
    if out[-1]["role"] != last:
        return None, f"{field}: must end on a{'n' if last == 'assistant' else ''} {last} turn (ends on {out[-1]['role']!r})"
    return out, None


def as_prompt(value, field: str) -> tuple[list[dict] | None, str | None]:
    """A prompt given as text or as turns ending on the user's."""
    if isinstance(value, str):
        return ([{"role": "user", "content": value}], None) if value.strip() else (None, f"{field}: empty text")
    return check_turns(value, field, "user")


def as_reply(value, field: str) -> tuple[str | None, str | None]:
    """A reply given as text or as one assistant turn."""
    if isinstance(value, str):
        return (value, None) if value.strip() else (None, f"{field}: empty text")
    turns, problem = check_turns(value, field, "assistant", first_turn=1)
    if problem:
        return None, problem
    if len(turns) != 1:
        return None, f"{field}: expected one assistant turn (got {len(turns)} turns)"
    return turns[0]["content"], None


# ---------------------------------------------------------------- the three kinds
def read(kind: str, specs: list[str], param: str) -> pl.DataFrame:
    """Every record of `kind` ("sft", "prefs", "prompts") under `specs`: `id`, `source` ("<file>: row <n>"),
    the parsed fields, and `problem` (None, or what is wrong, naming file, row and field)."""
    rows = []
    for url in expand(specs, param):
        for n, record, problem in records(url):
            source = f"{url}: row {n}"
            out = {"id": None, "source": source, "messages": None, "prompt": None, "chosen": None, "rejected": None,
                   "kind": "all"}
            if record is not None:
                out["id"] = str(record["id"]) if record.get("id") is not None else f"{url}:{n}"
                problem = parse(kind, record, out)
            out["problem"] = f"{source}: {problem}" if problem else None
            rows.append(out)
    schema = {"id": pl.String, "source": pl.String, "messages": pl.List(pl.Struct({"role": pl.String, "content": pl.String})),
              "prompt": pl.List(pl.Struct({"role": pl.String, "content": pl.String})), "chosen": pl.String,
              "rejected": pl.String, "kind": pl.String, "problem": pl.String}
    return pl.DataFrame(rows, schema=schema)


def parse(kind: str, record: dict, out: dict) -> str | None:
    """Fill `out` from `record`; what is wrong, naming the field, or None."""
    needed = {"sft": ["messages"], "prefs": ["prompt", "chosen", "rejected"], "prompts": ["prompt"]}[kind]
    missing = [f for f in needed if record.get(f) is None]
    if missing:
        return f"{missing[0]}: missing (fields present: {sorted(record)})"
    if kind == "sft":
        out["messages"], problem = check_turns(record["messages"], "messages", "assistant")
        return problem
    out["prompt"], problem = as_prompt(record["prompt"], "prompt")
    if problem or kind == "prompts":
        return problem
    for side in ("chosen", "rejected"):
        out[side], problem = as_reply(record[side], side)
        if problem:
            return problem
    if out["chosen"] == out["rejected"]:
        return f"rejected: the same text as chosen (got {short(out['chosen'])})"
    if record.get("kind") is not None:
        out["kind"] = str(record["kind"])
    return None


def split_of(key: str, seed: int, val_fraction: float) -> str:
    """"val" for a stable `val_fraction` of keys (by hash: adding rows moves no other row), else "train"."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return "val" if int.from_bytes(digest[:8], "big") / 2**64 < val_fraction else "train"
