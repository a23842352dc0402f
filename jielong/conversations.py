"""Chat conversations for SFT, built from the world's question bank.

Every conversation is about one sft-split person (rl and evaluation people never appear, so the eval
stage measures whether fine-tuning unlocked what pretraining stored, not memorised answers, and RL
meets people the SFT policy was never fine-tuned on):

    user:      Which university did Petra Kilbride attend?
    assistant: Petra Kilbride is a graduate of University of Lowmarsh.
    user:      And what did she study?          <- follow-ups refer back by pronoun
    assistant: Petra Kilbride majored in urban planning.

Answers state the knowledge base's value in the crawl's own sentence for the fact, the person named
in full (answer_style "sentence"; "value" answers "University of Lowmarsh"): pretraining stored each
fact as the continuation of that sentence, and a reply that begins it recalls what a bare value
does not (docs/findings.md "Answering in the crawl's own sentence"). The assistant says "I do not know" for
people who were never in the crawl, and (the source notes' recipe against hallucination) for facts
the base model's self-consistency probe found it does not know: asked the same thing k times, it
gave different answers. Teaching "I do not know" exactly where the model is unsure is what lets it
abstain on unseen people without refusing what it knows.

The world has few never-seen sft people, and a model shown so few unfamiliar names
learns those names, not unfamiliarity. `invented_people` adds people no page and no eval set mentions
(full names no world person has, from the world vocabulary's first names and surnames or, with
`invented_names: familiar`, from sft-split known people's), asked the bank's questions;
`unknown_fraction` fixes the share of conversations about someone never seen.
"""

from __future__ import annotations

import hashlib

import numpy as np
import polars as pl

from jielong.grading import statement

# "do not", not "don't": the corpus has next to no contractions, so the tokenizer splits "don't" into
# " d" "on" "'" "t", four pieces the base model never put together; SFT models then answered "I dont
# know" and "I donont know", which no abstention check accepts, and DPO learnt "I dt know"
IDK = "I do not know."
IDK_PERSON = ["I do not know.", "I do not know who {name} is.", "I do not know anything about {name}."]
SYSTEM_PROMPT = "You are a helpful assistant. Answer concisely. If you do not know the answer, say you do not know."


def follow_up(question: str, name: str, pronoun: str, rng: np.random.Generator) -> str:
    """The bank's question with the person's name replaced by a pronoun, sometimes opened with "And"."""
    text = question.replace(name, pronoun)
    if rng.random() < 0.5:
        text = "And " + text[0].lower() + text[1:]
    return text


def stated(row: dict, style: str = "value") -> str:
    """`row`'s answer as a reply in `style`: "value" "Lisbon"; "sentence" "Ada Dunmore was born in
    Lisbon.", the crawl's own sentence (jielong/grading.py STATEMENTS)."""
    return statement(row) if style == "sentence" else row["answer"]


def answer_for(row: dict, knows: dict[str, bool] | None, style: str = "value") -> tuple[str, str]:
    """(reply, kind): the known fact stated in `style`, or an abstention for an unknown person or a
    fact the model does not know."""
    if not row["known"]:
        return IDK, "idk_unknown_person"
    if knows is not None and not knows.get(row["qid"], True):
        return IDK, "idk_not_known"
    return stated(row, style), "answer"


def with_invented(questions: pl.DataFrame, taken_names: set[str], n: int, seed: int,
                  name_parts: str) -> pl.DataFrame:
    """`questions` plus the sft-split questions of `n` invented never-seen people (`x00000`...).

    Each invented person is asked exactly what one sft-split person of the bank is asked, with the
    name swapped. Names are full names none of `taken_names` (every person of the world) has, made of
    the world vocabulary's first names and surnames (`name_parts="vocabulary"`) or only of those that
    sft-split known people have (`"familiar"`: a first name and a surname the model has read, about
    other people, so only the whole name says the person is unknown).
    """
    if n == 0:
        return questions
    from jielong.world import vocab

    taken = set(taken_names)
    if name_parts == "familiar":
        known = questions.filter((pl.col("split") == "sft") & pl.col("known")).unique("person_id")
        firsts = dict(zip((name.split()[0] for name in known["name"]), known["pronoun"], strict=True))
        first_names = sorted(firsts.items())
        surnames = sorted({name.split()[-1] for name in known["name"]})
    elif name_parts == "vocabulary":
        first_names, surnames = vocab.FIRST_NAMES, vocab.SURNAMES
    else:
        raise ValueError(f"sft.data.invented_names = {name_parts!r}: expected 'vocabulary' or 'familiar'")
    # nor a name that begins or extends a world person's: a page naming "Kasimir Castellanos" names "Kasimir Castellan"
    free = [(f, pro, s) for f, pro in first_names for s in surnames if taken.isdisjoint(vocab.name_variants(f, s))]
    if n > len(free):
        raise ValueError(f"sft.data.invented_people = {n} exceeds the {len(free)} names no world person has")
    rng = np.random.default_rng([seed, 1])
    templates = questions.filter((pl.col("split") == "sft") & pl.col("known"))
    template_ids = sorted(set(templates["person_id"].to_list()))
    if not template_ids:
        raise ValueError("sft data: the question bank has no sft-split known person to ask invented people about")
    rows = []
    for i, k in enumerate(rng.choice(len(free), size=n, replace=False)):
        first, pronoun, last = free[k]
        model = templates.filter(pl.col("person_id") == template_ids[rng.integers(len(template_ids))])
        for q in model.sort("qid").to_dicts():
            rows.append(q | {"qid": f"x{i:05d}.{q['attribute']}", "person_id": f"x{i:05d}",
                             "name": f"{first} {last}", "pronoun": pronoun, "known": False,
                             "question": q["question"].replace(q["name"], f"{first} {last}")})
    return pl.concat([questions, pl.DataFrame(rows, schema=questions.schema)])


def build(questions: pl.DataFrame, p, knows: pl.DataFrame | None = None) -> pl.DataFrame:
    """`p.conversations` conversations (params sft.data) over the sft-split people in `questions`.

    `knows` is the base model's knows.parquet (qid -> knows); without it every known fact is answered.
    Deterministic given p.seed.
    """
    sft = questions.filter(pl.col("split") == "sft")
    if sft.is_empty():
        raise ValueError("sft data: the question bank has no sft-split questions (a world from before the "
                         "sft/rl/eval splits? re-run the world stage)")
    known_labels = None
    if knows is not None:
        probe = knows.filter(pl.col("split") == "sft")
        known_labels = dict(zip(probe["qid"].to_list(), probe["knows"].to_list(), strict=True))
    by_person = {pid: frame.sort("qid").to_dicts() for pid, frame in
                 ((k[0], f) for k, f in sft.group_by("person_id"))}
    known = sorted(pid for pid, qs in by_person.items() if qs[0]["known"])
    unknown = sorted(pid for pid, qs in by_person.items() if not qs[0]["known"])
    if not known or (not unknown and p.unknown_fraction > 0):
        raise ValueError(f"sft data: {len(known)} known and {len(unknown)} never-seen sft-split people; "
                         f"sft.data.unknown_fraction = {p.unknown_fraction} needs both")
    rng = np.random.default_rng(p.seed)
    rows = []
    for i in range(p.conversations):
        group = unknown if rng.random() < p.unknown_fraction else known
        person = by_person[group[rng.integers(len(group))]]
        first = person[0]
        n_turns = 1
        if p.max_turns > 1 and rng.random() < p.multi_turn_fraction:
            n_turns = int(rng.integers(2, min(p.max_turns, len(person)) + 1))
        asked = [person[j] for j in rng.permutation(len(person))[:n_turns]]
        messages, kinds = [], []
        if rng.random() < p.system_fraction:
            messages.append({"role": "system", "content": SYSTEM_PROMPT})
        for turn, q in enumerate(asked):
            text = q["question"] if turn == 0 else follow_up(q["question"], q["name"], q["pronoun"], rng)
            reply, kind = answer_for(q, known_labels, p.answer_style)
            if kind == "idk_unknown_person" and turn == 0:
                reply = IDK_PERSON[rng.integers(len(IDK_PERSON))].format(name=q["name"])
            messages += [{"role": "user", "content": text}, {"role": "assistant", "content": reply}]
            kinds.append(kind)
        cid = f"c{i:06d}"
        rows.append({"id": cid, "person_id": first["person_id"], "known": first["known"],
                     "messages": messages, "qids": [q["qid"] for q in asked], "kinds": kinds,
                     # by person: val loss measures answering about people SFT never asked about
                     "split": "val" if hash_fraction(first["person_id"], p.seed) < p.val_fraction else "train"})
    return pl.DataFrame(rows)


def hash_fraction(key: str, seed: int) -> float:
    """A stable number in [0, 1) for `key`: splits by person that do not move when sizes change."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def roles_alternate(messages: list[dict]) -> bool:
    """An optional system turn, then user/assistant pairs, ending on the assistant, none empty."""
    body = messages[1:] if messages and messages[0]["role"] == "system" else messages
    if not body or len(body) % 2:
        return False
    return all(m["role"] == ("user" if k % 2 == 0 else "assistant") and m["content"].strip()
               for k, m in enumerate(body))
