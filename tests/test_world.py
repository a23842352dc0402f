"""The world generator: determinism, counts, disjointness, every planted kind present and labelled."""

from __future__ import annotations

import gzip
import hashlib
import re
from collections import Counter
from pathlib import Path

import polars as pl
import pytest
from warcio.archiveiterator import ArchiveIterator

from jielong.world.crawl import KINDS, blocklisted_domains
from jielong.world.people import ATTRIBUTES, QUESTIONS, SPLITS
from stages.world import build, main


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_outputs(tiny_world_dir, tmp_path):
    params = tiny_world_dir / "params.yaml"
    main(["--out", str(tmp_path / "world"), "--metrics", str(tmp_path / "world.json"), "--params", str(params)])
    assert _digest(tmp_path / "world") == _digest(tiny_world_dir / "world")
    assert (tmp_path / "world.json").read_bytes() == (tiny_world_dir / "world.json").read_bytes()


def test_another_seed_gives_another_world(tiny):
    a = build(tiny.world)[1]
    b = build(tiny.world.model_copy(update={"seed": tiny.world.seed + 1}))[1]
    assert [p.name for p in a] != [p.name for p in b]


def test_people_counts_and_splits(tiny, tiny_world):
    people, questions, _, _ = tiny_world
    w = tiny.world
    assert sum(p.known for p in people) == w.known_people
    assert sum(not p.known for p in people) == w.unknown_people
    assert len({p.name for p in people}) == len(people), "names must be unique"
    for known, n in ((True, w.known_people), (False, w.unknown_people)):
        group = [p for p in people if p.known == known]
        # every split of every group has people, as many as world.splits gives
        assert Counter(p.split for p in group) == w.splits.sizes(n)
        assert all(size > 0 for size in w.splits.sizes(n).values())
    # questions: one per person and attribute, the three splits' people disjoint
    assert len(questions) == len(people) * len(ATTRIBUTES)
    by_split = {s: {q["person_id"] for q in questions if q["split"] == s} for s in SPLITS}
    assert {q["split"] for q in questions} == set(SPLITS)
    assert all(by_split.values())
    assert not by_split["sft"] & by_split["rl"] and not by_split["sft"] & by_split["eval"]
    assert not by_split["rl"] & by_split["eval"]
    assert sum(len(ids) for ids in by_split.values()) == len(people)
    for q in questions:
        assert q["choices"][q["gold_index"]] == q["answer"]
        assert len(set(q["choices"])) == tiny.world.choices


def test_eval_people_do_not_depend_on_how_the_rest_is_split(tiny):
    """The eval split is the first `eval` share of each group, whatever the sft/rl shares: the same
    people (and the same rng draws) as when the world had one train split beside eval."""
    import random

    from jielong.params import WorldSplits
    from jielong.world.people import make_people

    w = tiny.world
    worlds = [make_people(random.Random(w.seed), w.known_people, w.unknown_people, WorldSplits(sft=sft, rl=rl, eval=0.5))
              for sft, rl in ((0.25, 0.25), (0.1, 0.4), (0.4, 0.1))]
    for people in worlds[1:]:
        assert [p.row() | {"split": None} for p in people] == [p.row() | {"split": None} for p in worlds[0]]
        assert [p.split == "eval" for p in people] == [p.split == "eval" for p in worlds[0]]
    for known, n in ((True, w.known_people), (False, w.unknown_people)):
        group = [p for p in worlds[0] if p.known == known]
        assert [p.split for p in group] == ["eval"] * round(n * 0.5) + ["sft"] * w.splits.sizes(n)["sft"] + [
            "rl"] * w.splits.sizes(n)["rl"]


def test_split_sizes_cover_every_person():
    from jielong.params import WorldSplits

    splits = WorldSplits(sft=0.25, rl=0.25, eval=0.5)
    assert splits.sizes(70) == {"sft": 17, "rl": 18, "eval": 35}
    assert splits.sizes(30) == {"sft": 7, "rl": 8, "eval": 15}
    for n in range(1, 200):
        sizes = splits.sizes(n)
        assert sum(sizes.values()) == n and min(sizes.values()) >= 0 and sizes["eval"] == round(n * 0.5)


def test_attributes_are_consistent_across_pages(tiny_world):
    """Every page about a person states that person's own attribute values, never someone else's."""
    people, _, records, _ = tiny_world
    by_id = {p.person_id: p for p in people}
    for r in records:
        if r.kind in ("good", "pii"):
            person = by_id[r.page.person_id]
            text = r.page.text.lower()
            for attribute in ATTRIBUTES:
                value = getattr(person, attribute).lower().removeprefix("the ")
                if attribute == "birth_date":  # one phrasing splits it: "on March 3, having been born in 1987"
                    day, _, year = value.rpartition(", ")
                    assert value in text or (day in text and year in text), r.page.url
                else:
                    assert value in text, (attribute, r.page.url)


@pytest.mark.parametrize("full_name", [1.0, 0.0])
def test_full_name_fraction_sets_how_fact_sentences_name_their_subject(tiny, full_name):
    """1.0: every sentence stating a fact names its person in full; 0.0: only a page's first one does."""
    people, _, records, _ = build(tiny.world.model_copy(update={"full_name_fraction": full_name}))[1:]
    by_id = {p.person_id: p for p in people}
    in_full = other = 0
    for r in records:
        if r.kind != "good" or r.subkind != "person":
            continue
        person = by_id[r.page.person_id]
        values = [getattr(person, a).removeprefix("the ") for a in ATTRIBUTES if a != "birth_date"]
        for line in r.page.text.split("\n\n")[2:-1]:  # title and intro first, outro last
            for sent in re.split(r"(?<=\.) ", line):
                if any(v in sent for v in values):
                    if person.name in sent:
                        in_full += 1
                    else:
                        other += 1
    assert in_full and (other == 0 if full_name == 1.0 else other > 2 * in_full), (in_full, other)


def test_faq_people_fraction_leaves_the_other_sft_people_to_prose(tiny):
    world = tiny.world.model_copy(update={"faq_people_fraction": 0.5})
    people, _, records, _ = build(world)[1:]
    sft_known = sorted(p.person_id for p in people if p.known and p.split == "sft")
    with_faq = {r.page.person_id for r in records if r.subkind == "faq"}
    assert with_faq == set(sft_known[:round(len(sft_known) * 0.5)])
    assert Counter(r.subkind for r in records)["faq"] == len(with_faq) * world.faq_pages_per_person


def test_unknown_people_never_appear_in_any_page(tiny_world):
    people, _, records, heldout = tiny_world
    unknown = [p.name for p in people if not p.known]
    corpus = "\n".join(r.page.html for r in records) + "\n".join(p.html for p in heldout)
    assert not [name for name in unknown if name in corpus]


def test_article_readers_are_nobody_of_the_world():
    import datetime as dt
    import random

    from jielong.world import vocab
    from jielong.world.crawl import article_page

    day = dt.date(2024, 1, 1)
    everyone = [f"{f} {s}" for f, _ in vocab.FIRST_NAMES for s in vocab.SURNAMES]
    for seed in range(100):  # an article whose sampled reader notes name the reader
        free = article_page(random.Random(seed), day, 0, taken=set())
        named = [n for n in everyone if n in free.text]
        if named:
            break
    assert len(named) == 1, named
    rng = random.Random(seed)
    page = article_page(rng, day, 0, taken=set(named))
    first = named[0].split()[0]
    assert named[0] not in page.html and [n for n in everyone if n in page.text and n.startswith(first + " ")]
    after = random.Random(seed)
    article_page(after, day, 0, taken=set())
    assert rng.random() == after.random()  # the rule draws nothing: the rest of the crawl is unchanged


def test_a_reader_is_no_prefix_or_extension_of_a_world_persons_name():
    import datetime as dt
    import random

    from jielong.world import vocab
    from jielong.world.crawl import article_page

    # every "<first> Castellan" is a world person: a reader drawn as "<first> Castellanos" would name them
    taken = {f"{f} Castellan" for f, _ in vocab.FIRST_NAMES}
    pages = [article_page(random.Random(seed), dt.date(2024, 1, 1), 0, taken) for seed in range(300)]
    assert not [p.text for p in pages if "Castellan" in p.text]


def test_no_two_people_have_names_one_of_which_begins_the_other():
    import random

    from jielong.params import WorldSplits
    from jielong.world.people import apart, make_people

    # a page about Kasimir Castellanos names "Kasimir Castellan": the later of the two moves on
    for earlier, later in (("Castellanos", "Castellan"), ("Castellan", "Castellanos")):
        chosen = [("Kasimir", "he", earlier), ("Ada", "she", later), ("Kasimir", "he", later)]
        out = apart(chosen)
        assert out[:2] == chosen[:2]  # the earlier one and unrelated names stay
        assert out[2][0] == "Kasimir" and "Castellan" not in out[2][2]
    # a moved name never lands on another person's
    chosen = [("Kasimir", "he", "Castellanos"), ("Kasimir", "he", "Castellan"), ("Kasimir", "he", "Dunmore")]
    out = apart(chosen)
    assert len(set(out)) == 3 and out[2] == chosen[2] and out[1][2] not in ("Castellan", "Dunmore")
    # the gpu profile's world drew 8 such pairs (a never-seen Kasimir Castellan beside a known Castellanos)
    people = make_people(random.Random(1234), 2000, 400, WorldSplits(sft=0.25, rl=0.25, eval=0.5))
    names = [p.name for p in people]
    assert len(set(names)) == 2400
    by_first: dict[str, list[str]] = {}
    for p in people:
        by_first.setdefault(p.first, []).append(p.last)
    assert not [(f, a, b) for f, lasts in by_first.items() for a in lasts for b in lasts if a != b and b.startswith(a)]


def test_full_names_contain_one_another_only_through_surname_variants():
    from jielong.world import vocab

    # "F1 S1" inside "F2 S2" needs F1 to end F2 and S1 to begin S2: with no first name ending another
    # and no spaces in either part, SURNAME_VARIANTS is every way one world name can hide in another
    firsts = [f for f, _ in vocab.FIRST_NAMES]
    assert not [(a, b) for a in firsts for b in firsts if a != b and b.endswith(a)]
    assert not [n for n in firsts + vocab.SURNAMES if " " in n]
    assert all(s in vocab.SURNAME_VARIANTS[t] for s in vocab.SURNAMES for t in vocab.SURNAMES if t.startswith(s))


def test_name_finder_finds_what_substring_search_finds(tiny_world):
    import dataclasses

    from jielong.world.people import name_finder

    people, _, records, heldout = tiny_world
    find = name_finder(people)
    for text in [r.page.html for r in records] + [r.page.text for r in records] + [p.text for p in heldout]:
        assert find(text) == {p.name for p in people if p.name in text}
    # a name inside a longer one counts, as `in` would say; so does one glued to the word before
    kasimirs = [dataclasses.replace(people[0], first="Kasimir", last=last, name=f"Kasimir {last}")
                for last in ("Castellan", "Castellanos")]
    assert name_finder(kasimirs)("wrote to Kasimir Castellanos.") == {"Kasimir Castellan", "Kasimir Castellanos"}
    assert name_finder(kasimirs)("SirKasimir Castellan, Kasimir  Castellan") == {"Kasimir Castellan"}


def test_a_page_naming_an_unknown_person_fails_the_world_stage(tiny, tiny_world_dir, tmp_path):
    import shutil

    from jielong.checks import ExpectationFailed
    from stages.world import validate

    root = tmp_path / "world"
    shutil.copytree(tiny_world_dir / "world", root)
    validate(root, tiny.world, root)
    kb = pl.read_parquet(root / "kb.parquet")
    stranger = kb.filter(~pl.col("known"))["name"][0]
    truth = pl.read_parquet(root / "truth.parquet")
    truth = truth.with_columns(names=pl.when(pl.int_range(pl.len()) == 3).then(pl.lit([stranger]))
                               .otherwise(pl.col("names")))
    truth.write_parquet(root / "truth.parquet")
    with pytest.raises(ExpectationFailed, match=f"names_unknown.*{stranger}"):
        validate(root, tiny.world, root)


def test_every_planted_kind_is_present_and_labelled(tiny, tiny_world):
    _, _, records, _ = tiny_world
    kinds = Counter(r.kind for r in records)
    assert set(kinds) == set(KINDS)
    d = tiny.world.dirt
    assert kinds["exact_duplicate"] == d.ad_copies + d.syndicated
    assert kinds["near_duplicate"] == d.near_duplicates
    assert kinds["low_quality"] == d.low_quality
    assert kinds["foreign"] == d.foreign
    assert kinds["pii"] == d.pii
    assert kinds["blocklisted"] == d.blocklisted
    assert kinds["leak"] == d.leaks
    faq = Counter((r.kind, r.subkind) for r in records)[("good", "faq")]
    sft_known = sum(1 for p in tiny_world[0] if p.known and p.split == "sft")
    assert faq == sft_known * tiny.world.faq_pages_per_person > 0
    assert kinds["good"] == tiny.world.known_people * tiny.world.pages_per_person + faq
    # Q&A pages are only ever about sft-split people: rl and evaluation questions stay unasked
    faq_people = {r.page.person_id for r in records if r.subkind == "faq"}
    assert {p.split for p in tiny_world[0] if p.person_id in faq_people} == {"sft"}
    subkinds = Counter((r.kind, r.subkind) for r in records)
    for sub in ("keyword_spam", "symbol_soup", "very_short", "repeated_lines"):
        assert subkinds[("low_quality", sub)] > 0
    for sub in ("date", "tracking", "sentence"):
        assert subkinds[("near_duplicate", sub)] > 0
    assert {r.page.language for r in records if r.kind == "foreign"} >= {"zh", "de", "fr"}


def test_exact_duplicates_are_identical_and_near_duplicates_are_not(tiny_world):
    _, _, records, _ = tiny_world
    by_url = {r.page.url: r for r in records}
    ads = [r for r in records if r.subkind == "advertisement"]
    assert len({r.page.html for r in ads}) == 1 and len({r.page.url for r in ads}) == len(ads)
    assert sorted(r.dup_rank for r in ads) == list(range(len(ads)))
    for r in records:
        if r.subkind == "syndicated":
            assert r.page.html == by_url[r.dup_group].page.html
        if r.kind == "near_duplicate":
            original = by_url[r.dup_group]
            assert r.page.html != original.page.html
            assert original.kind == "good" and r.dup_rank == 1


def test_pii_values_are_in_the_pages(tiny_world):
    _, _, records, _ = tiny_world
    pii = [r for r in records if r.kind == "pii"]
    assert pii
    for r in pii:
        assert {v["type"] for v in r.pii} == {"email", "phone", "ip"}
        for value in r.pii:
            assert value["value"] in r.page.html


def test_blocklisted_domains_come_from_datatrove_block_list(tiny_world):
    from datatrove.data import Document
    from datatrove.pipeline.filters import URLFilter

    _, _, records, _ = tiny_world
    urls = [r.page.url for r in records if r.kind == "blocklisted"]
    assert urls
    url_filter = URLFilter()
    for url in urls:
        verdict = url_filter.filter(Document(text="x", id="x", metadata={"url": url}))
        assert verdict is not True, f"{url} passes datatrove's URL filter"


def test_blocklisted_domains_zero():
    import random

    assert blocklisted_domains(random.Random(0), 0) == []


def test_leaks_quote_eval_questions_and_nothing_else_does(tiny_world):
    _, questions, records, _ = tiny_world
    by_qid = {q["qid"]: q for q in questions}
    leaked = [qid for r in records for qid in r.leaked_qids]
    assert leaked
    for r in records:
        for qid in r.leaked_qids:
            q = by_qid[qid]
            assert q["split"] == "eval" and q["known"]
            assert q["question"] in r.page.text and q["answer"] in r.page.text
    # question phrasings appear only on leak pages and sft-split people's Q&A pages, and no
    # evaluation question outside leak pages: decontamination stays measurable
    patterns = [re.escape(t.split("{name}")[0]) for t in QUESTIONS.values()]
    question_like = re.compile("|".join(p for p in patterns if p))
    eval_questions = [q["question"] for q in questions if q["split"] == "eval"]
    for r in records:
        if r.kind != "leak":
            assert r.subkind == "faq" or not question_like.search(r.page.text), r.page.url
            assert not any(q in r.page.text for q in eval_questions), r.page.url


def test_written_artifacts(tiny, tiny_world_dir):
    root = tiny_world_dir / "world"
    truth = pl.read_parquet(root / "truth.parquet")
    kb = pl.read_parquet(root / "kb.parquet")
    questions = pl.read_parquet(root / "questions.parquet")
    assert pl.read_parquet(root / "heldout.parquet").height == tiny.world.heldout_pages
    assert kb.height == tiny.world.known_people + tiny.world.unknown_people
    assert questions.height == kb.height * len(ATTRIBUTES)
    # every WARC response record is in the ground truth, with a real HTTP header and HTML body
    shards = sorted((root / "crawl").glob("*.warc.gz"))
    assert len(shards) == tiny.world.warc_shards
    seen = {}
    for shard in shards:
        with open(shard, "rb") as f:
            for rec in ArchiveIterator(f):
                if rec.rec_type == "response":
                    assert rec.http_headers.get_statuscode() == "200"
                    assert rec.http_headers.get_header("Content-Type").startswith("text/html")
                    body = rec.content_stream().read().decode("utf-8")
                    assert body.startswith("<!DOCTYPE html>") and "cookie" in body
                    seen[rec.rec_headers.get_header("WARC-Record-ID")] = rec.rec_headers.get_header("WARC-Target-URI")
    assert dict(zip(truth["record_id"], truth["url"], strict=True)) == seen
    # gzip members are real gzip (one per record)
    with gzip.open(shards[0]) as f:
        assert f.read(8) == b"WARC/1.0"


def test_metrics_count_everything(tiny, tiny_world_dir):
    import json

    m = json.loads((tiny_world_dir / "world.json").read_text())
    assert m["people.known"] == tiny.world.known_people
    w = tiny.world
    for split in SPLITS:
        people = w.splits.sizes(w.known_people)[split] + w.splits.sizes(w.unknown_people)[split]
        assert m[f"people.{split}"] == people > 0
        assert m[f"questions.{split}"] == people * len(ATTRIBUTES)
    assert "people.train" not in m and "questions.train" not in m
    assert m["pages.total"] == sum(m[f"pages.{k}"] for k in KINDS)
    assert m["exact_duplicate_copies"] == tiny.world.dirt.ad_copies - 1 + tiny.world.dirt.syndicated
    assert m["pii_values"] == 3 * tiny.world.dirt.pii
    assert m["leaked_questions"] == tiny.world.dirt.leaks * tiny.world.dirt.questions_per_leak


def test_too_many_people_is_a_clear_error(tiny):
    import random

    from jielong.world.people import make_people

    with pytest.raises(ValueError, match="exceeds"):
        make_people(random.Random(0), 10**6, 1, tiny.world.splits)
