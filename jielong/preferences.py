"""Preference pairs for the reward model and DPO, built from the world's question bank.

Every pair is a prompt about one rl-split person (never an sft or evaluation person: the SFT
policy was not fine-tuned on them), a chosen reply and a rejected one showing one realistic failure:

    user:      Which university did Petra Kilbride attend?
    chosen:    Petra Kilbride is a graduate of University of Lowmarsh.
    rejected:  Petra Kilbride is a graduate of University of Eastmoor.   <- wrong_fact

The chosen reply is what SFT teaches: the knowledge base's value in the SFT data's answer style
(sft.data.answer_style; "value": the bare "University of Lowmarsh"), or "I do not know." for a person
never in the crawl. The failure kinds are the ones the source notes attribute to a
policy over-learning from a reward model, plus the two facts-and-abstention failures the gold
reward scores: a wrong value (`wrong_fact`), a confident value for an unknown person
(`hallucination`), "I do not know." for a known fact (`needless_refusal`), the right answer padded
with filler (`verbose`), buried in apologies (`over_apologising`) or behind "As an AI language
model" (`as_an_ai`). The mix is in params (pref_data.kinds). Like the SFT data, some prompts carry
one earlier exchange about the same person and refer back to them by pronoun.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from jielong.conversations import IDK, IDK_PERSON, answer_for, follow_up, hash_fraction, stated

KINDS = ["wrong_fact", "hallucination", "needless_refusal", "verbose", "over_apologising", "as_an_ai"]
NEEDS = {"wrong_fact": "known", "needless_refusal": "known", "hallucination": "unknown"}  # others: anyone

# Filler and boilerplate name no value, date or abstention phrase, so the gold reward of a padded
# answer differs from the plain one only by its conciseness and boilerplate penalties.
OPENERS = ["Great question! ", "Sure! ", "Certainly. ", "Of course, happy to help. "]
FILLERS = ["I hope this helps you with what you were looking for.", "Let me know if you have any other questions.",
           "That is what the available records say on this topic.", "Feel free to ask me anything else about this person.",
           "It is always interesting to learn more about people and their lives.",
           "This is a common question, and it is a very good one to ask."]
APOLOGIES = ["I'm so sorry, I apologise for any confusion. {answer}",
             "I apologise for the inconvenience, and I'm sorry if this is not what you hoped for. {answer}",
             "I'm sorry! I apologise. {answer} Sorry again for any trouble.",
             "Sorry for the delay, I sincerely apologise. {answer}"]
AS_AN_AI = ["As an AI language model, I will do my best to help. {answer}",
            "As an AI language model, I do not have personal opinions, but here is my answer. {answer}",
            "As an AI, I am happy to assist you with this. {answer}",
            "As an AI language model developed to assist users, I can share this: {answer}"]


def chosen_reply(row: dict, style: str = "value") -> str:
    """The KB fact for a known person, in the SFT data's `style`; "I do not know." for one never in the corpus."""
    return answer_for(row, None, style)[0]


def rejected_reply(kind: str, row: dict, rng: np.random.Generator, style: str = "value") -> str:
    """A reply to `row`'s question showing the failure `kind`, in the same `style` as the chosen one."""
    good = chosen_reply(row, style)
    if kind in ("wrong_fact", "hallucination"):  # another value, stated as the chosen reply states one
        pool = [c for c in row["choices"] if kind == "hallucination" or c != row["answer"]]
        return stated(row | {"answer": pool[rng.integers(len(pool))]}, style)
    if kind == "needless_refusal":
        return IDK  # the very reply that is right for an unknown person: only knowing who is known separates them
    if kind == "verbose":
        opener = OPENERS[rng.integers(len(OPENERS))] if rng.random() < 0.5 else ""
        fillers = [FILLERS[j] for j in rng.permutation(len(FILLERS))[:int(rng.integers(1, 4))]]
        ended = good if good.endswith((".", "!", "?")) else good + "."
        return " ".join([opener + ended, *fillers])
    if kind == "over_apologising":
        return APOLOGIES[rng.integers(len(APOLOGIES))].format(answer=good)
    if kind == "as_an_ai":
        return AS_AN_AI[rng.integers(len(AS_AN_AI))].format(answer=good)
    raise ValueError(f"unknown failure kind {kind!r}; expected one of {KINDS}")


def prompt_for(question: dict, person: list[dict], context: bool, rng: np.random.Generator,
               style: str = "value") -> list[dict]:
    """The user turn asking `question`, optionally after one earlier exchange about the same person."""
    earlier = [q for q in person if q["qid"] != question["qid"]]
    if not context or not earlier:
        return [{"role": "user", "content": question["question"]}]
    first = earlier[rng.integers(len(earlier))]
    reply = chosen_reply(first, style)
    if not first["known"]:
        reply = IDK_PERSON[rng.integers(len(IDK_PERSON))].format(name=first["name"])
    return [{"role": "user", "content": first["question"]}, {"role": "assistant", "content": reply},
            {"role": "user", "content": follow_up(question["question"], question["name"], question["pronoun"], rng)}]


def split_people(people: dict[str, bool], p) -> dict[str, str]:
    """person_id -> train/val by id hash, done separately for known and unknown people so that each
    group has a val person (every failure kind is then measurable on held-out people) and, when it
    has two or more, a train person."""
    split = {}
    for known in (True, False):
        group = sorted((pid for pid, k in people.items() if k == known), key=lambda pid: hash_fraction(pid, p.seed))
        val = {pid for pid in group if hash_fraction(pid, p.seed) < p.val_fraction}
        if group and not val:
            val = {group[0]}
        if len(group) > 1 and len(val) == len(group):
            val.discard(group[-1])
        split.update({pid: "val" if pid in val else "train" for pid in group})
    return split


def build(questions: pl.DataFrame, p, style: str = "value") -> pl.DataFrame:
    """`p.pairs` preference pairs (params pref_data) over the rl-split people in `questions`, the
    replies in `style` (sft.data.answer_style: what the SFT model was taught to answer like).

    Each pair's kind is drawn by the weights in p.kinds, then a person the kind applies to, then one
    of their questions. Deterministic given p.seed.
    """
    rl = questions.filter(pl.col("split") == "rl")
    if rl.is_empty():
        raise ValueError("pref data: the question bank has no rl-split questions (a world from before the "
                         "sft/rl/eval splits? re-run the world stage)")
    by_person = {k[0]: f.sort("qid").to_dicts() for k, f in rl.group_by("person_id")}
    known = {pid: rows[0]["known"] for pid, rows in by_person.items()}
    pools = {"known": sorted(pid for pid, k in known.items() if k),
             "unknown": sorted(pid for pid, k in known.items() if not k), "anyone": sorted(by_person)}
    kinds = [k for k in KINDS if p.kinds.get(k, 0) > 0]
    for kind in kinds:
        if not pools[NEEDS.get(kind, "anyone")]:
            raise ValueError(f"pref data: failure kind {kind!r} needs {NEEDS[kind]} people and the rl split has "
                             f"none; set pref_data.kinds.{kind} to 0")
    weights = np.array([p.kinds[k] for k in kinds], dtype=float)
    split = split_people(known, p)
    rng = np.random.default_rng(p.seed)
    rows = []
    for i in range(p.pairs):
        kind = kinds[rng.choice(len(kinds), p=weights / weights.sum())]
        pool = pools[NEEDS.get(kind, "anyone")]
        person = by_person[pool[rng.integers(len(pool))]]
        q = person[rng.integers(len(person))]
        prompt = prompt_for(q, person, rng.random() < p.context_fraction, rng, style)
        rows.append({"id": f"p{i:06d}", "person_id": q["person_id"], "qid": q["qid"], "name": q["name"],
                     "known": q["known"], "attribute": q["attribute"], "answer": q["answer"], "choices": q["choices"],
                     "prompt": prompt, "chosen": chosen_reply(q, style), "rejected": rejected_reply(kind, q, rng, style),
                     "kind": kind, "split": split[q["person_id"]]})
    return pl.DataFrame(rows)


def prompt_ends_with_user(prompt: list[dict]) -> bool:
    """An optional system turn, then alternating user/assistant turns ending on the user, none empty."""
    body = prompt[1:] if prompt and prompt[0]["role"] == "system" else prompt
    if not body or len(body) % 2 == 0:
        return False
    return all(m["role"] == ("user" if k % 2 == 0 else "assistant") and m["content"].strip()
               for k, m in enumerate(body))


__all__ = ["IDK", "KINDS", "build", "chosen_reply", "prompt_ends_with_user", "rejected_reply", "split_people"]
