"""Every page of the crawl, good and planted dirt, each labelled for the ground truth."""

from __future__ import annotations

import datetime as dt
import random
import re
import tarfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from jielong.params import WorldParams
from jielong.world import texts, vocab
from jielong.world.pages import (
    TEMPLATE_NAMES,
    TEMPLATES,
    Page,
    _slug,
    person_paragraphs,
    sentence,
    text_of,
    wrap_html,
)
from jielong.world.people import ATTRIBUTES, Person

KINDS = ["good", "article", "pii", "leak", "exact_duplicate", "near_duplicate", "low_quality", "foreign",
         "blocklisted"]


@dataclass
class Record:
    """One crawl page with its ground-truth labels."""

    page: Page
    kind: str
    subkind: str = ""
    dup_group: str | None = None  # shared by an original and its copies
    dup_rank: int = 0  # 0: the original (to keep); >0: a copy (to remove)
    pii: list[dict] = field(default_factory=list)  # {"type": "email"|"phone"|"ip", "value": str}
    leaked_qids: list[str] = field(default_factory=list)


def _date(rng: random.Random, crawl_date: dt.date) -> str:
    return (crawl_date - dt.timedelta(days=rng.randint(1, 900))).isoformat()


# ---------------------------------------------------------------- good pages
def person_page(rng: random.Random, person: Person, template: str, crawl_date: dt.date, number: int,
                extra_paragraph: list[str] | None = None, *, full_name: float) -> Page:
    pool = getattr(vocab, TEMPLATES[template][0])
    site = rng.choice(pool)
    title, paragraphs = person_paragraphs(rng, person, template, ATTRIBUTES, full_name)
    if extra_paragraph:
        paragraphs.insert(-1, extra_paragraph)
    url = f"https://{site}/{template.replace('_', '-')}/{_slug(person.name)}-{number}"
    return Page(url=url, html=wrap_html(rng, site, title, paragraphs, _date(rng, crawl_date)),
                text=text_of(title, paragraphs), title=title, person_id=person.person_id,
                facts=[f"{person.person_id}.{a}" for a in ATTRIBUTES])


def person_pages(rng: random.Random, people: list[Person], per_person: int, crawl_date: dt.date,
                 full_name: float) -> list[Page]:
    """`per_person` pages per known person, each in a different template (cycling when more are asked)."""
    pages = []
    for person in people:
        templates = rng.sample(TEMPLATE_NAMES, len(TEMPLATE_NAMES))
        for i in range(per_person):
            pages.append(person_page(rng, person, templates[i % len(templates)], crawl_date, i,
                                     full_name=full_name))
    return pages


def article_page(rng: random.Random, crawl_date: dt.date, number: int, taken: set[str],
                 site: str | None = None) -> Page:
    """An everyday-topic article: six topic sentences plus reader notes with their own names and places.

    The reader is nobody of the world: a drawn name that is a world person's (`taken`), or one that
    begins or extends it (vocab.SURNAME_VARIANTS), moves on to the next free surname, so a never-seen
    person stays unseen and a known one gets no stray city.
    """
    topic = rng.choice(sorted(texts.ARTICLE_TOPICS))
    sentences = rng.sample(texts.ARTICLE_TOPICS[topic], 6)
    first, last = rng.choice(vocab.FIRST_NAMES), rng.choice(vocab.SURNAMES)
    # stepping through surnames instead of drawing again keeps the rng stream, so the rest of the
    # crawl is the same as before this rule
    last = next((s for s in vocab.surnames_from(last) if taken.isdisjoint(vocab.name_variants(first[0], s))), None)
    if last is None:
        raise ValueError(f"world: every name with first name {first[0]} belongs to a world person")
    notes = [n.format(city=rng.choice(vocab.CITIES), name=f"{first[0]} {last}", pron="her" if first[1] == "she" else "him",
                      n=rng.randint(2, 40), weekday=rng.choice(texts.WEEKDAYS))
             for n in rng.sample(texts.READER_NOTES, 4)]
    paragraphs = [sentences[:3] + notes[:2], sentences[3:] + notes[2:]]
    site = site or rng.choice(vocab.ARTICLE_SITES)
    url = f"https://{site}/guides/{_slug(topic)}-{number}"
    return Page(url=url, html=wrap_html(rng, site, topic, paragraphs, _date(rng, crawl_date)),
                text=text_of(topic, paragraphs), title=topic)


# ---------------------------------------------------------------- planted dirt
def ad_copies(rng: random.Random, copies: int, crawl_date: dt.date) -> list[Record]:
    """One advertisement page, byte-identical, on `copies` different URLs."""
    if copies == 0:
        return []
    site = vocab.AD_SITES[0]
    body = wrap_html(random.Random(0), site, "Mega summer sale", [texts.AD_TEXT], crawl_date.isoformat())
    out = []
    for i in range(copies):
        host = rng.choice(vocab.AD_SITES)
        page = Page(url=f"https://{host}/promo/{i:05d}?ref=banner", html=body,
                    text=text_of("Mega summer sale", [texts.AD_TEXT]), title="Mega summer sale")
        out.append(Record(page, "exact_duplicate", "advertisement", dup_group="ad-0", dup_rank=i))
    return out


def syndicated(rng: random.Random, originals: list[Page], count: int) -> list[Record]:
    """Good pages copied verbatim to an aggregator site."""
    out = []
    for i, page in enumerate(rng.sample(originals, min(count, len(originals)))):
        copy_url = f"https://{rng.choice(vocab.SYNDICATION_SITES)}/story/{i:05d}"
        out.append(Record(replace(page, url=copy_url), "exact_duplicate", "syndicated",
                          dup_group=page.url, dup_rank=1))
    return out


CORRECTIONS = [
    "An earlier version of this page misspelled the name of a colleague.",
    "This story has been updated with a new photograph.",
    "A quotation in this piece was shortened for clarity.",
    "Reporting for this article was shared with our partner publications.",
]


def near_duplicates(rng: random.Random, originals: list[Page], count: int, crawl_date: dt.date) -> list[Record]:
    """A good page re-published with a changed date, a tracking query (and date), or one sentence changed."""
    out = []
    for i in range(count):
        page = rng.choice(originals)
        variant = ["date", "tracking", "sentence"][i % 3]
        html_text, url = page.html, page.url
        old_date = re.search(r"<time>([^<]+)</time>", html_text).group(1)
        new_date = _date(rng, crawl_date)
        if variant in ("date", "tracking"):
            html_text = html_text.replace(old_date, new_date)
        if variant == "tracking":
            url = f"{url}?utm_source=newsletter&utm_medium=email&utm_campaign=c{i}"
        if variant == "sentence":
            extra = rng.choice(CORRECTIONS)
            html_text = html_text.replace("</p>\n<p>", f" {extra}</p>\n<p>", 1)
            url = f"{url}-updated"
        else:
            url = url if variant == "tracking" else f"{url}?v={i}"
        out.append(Record(replace(page, url=url, html=html_text), "near_duplicate", variant,
                          dup_group=page.url, dup_rank=1))
    return out


def low_quality(rng: random.Random, count: int, crawl_date: dt.date) -> list[Record]:
    out = []
    for i in range(count):
        sub = ["keyword_spam", "symbol_soup", "very_short", "repeated_lines"][i % 4]
        if sub == "keyword_spam":
            words = [rng.choice(texts.SPAM_KEYWORDS) for _ in range(120)]
            paragraphs = [[" ".join(words[j:j + 30])] for j in range(0, 120, 30)]
        elif sub == "symbol_soup":
            paragraphs = [["".join(rng.choice(texts.SYMBOLS) for _ in range(rng.randint(3, 9)))
                           + " " + rng.choice(["ok", "win", "go", "x"]) for _ in range(60)]]
        elif sub == "very_short":
            paragraphs = [[rng.choice(texts.SHORT_TEXTS)]]
        else:
            line = rng.choice(texts.REPEATED_LINES)
            paragraphs = [[line] for _ in range(40)]
        site = rng.choice(vocab.AD_SITES)
        title = rng.choice(["Best offers", "Top deals", "Welcome", "Update"])
        page = Page(url=f"https://{site}/p/{sub.replace('_', '-')}-{i:05d}",
                    html=wrap_html(rng, site, title, paragraphs, _date(rng, crawl_date)),
                    text=text_of(title, paragraphs), title=title)
        out.append(Record(page, "low_quality", sub))
    return out


def foreign(rng: random.Random, count: int, languages: list[str], crawl_date: dt.date) -> list[Record]:
    out = []
    for i in range(count):
        lang = languages[i % len(languages)]
        pool = texts.FOREIGN[lang]
        sentences = rng.sample(pool, len(pool))
        paragraphs = [sentences[:4], sentences[4:7], sentences[7:]]
        title = sentences[0][:40]
        site = f"{lang}-nachrichten-portal.com" if lang == "de" else f"{lang}-local-news.com"
        page = Page(url=f"https://{site}/artikel/{i:05d}", title=title, language=lang,
                    html=wrap_html(rng, site, title, paragraphs, _date(rng, crawl_date), lang=lang),
                    text=text_of(title, paragraphs))
        out.append(Record(page, "foreign", lang))
    return out


def _pii_values(rng: random.Random, person: Person) -> list[dict]:
    domain = rng.choice(["mailbox.example", "post.example.org", "inbox.example.net"])
    email = f"{person.first.lower()}.{person.last.lower()}{rng.randint(1, 99)}@{domain}"
    phone = f"+1 ({rng.randint(201, 989)}) {rng.randint(200, 999)}-{rng.randint(1000, 9999)}"
    ip = f"{rng.randint(11, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
    return [{"type": "email", "value": email}, {"type": "phone", "value": phone}, {"type": "ip", "value": ip}]


def pii_pages(rng: random.Random, people: list[Person], count: int, crawl_date: dt.date,
              full_name: float) -> list[Record]:
    """Extra good person pages that carry an email address, a phone number and an IP address."""
    out = []
    for i in range(count):
        person = rng.choice(people)
        pii = _pii_values(rng, person)
        contact = [
            f"Readers who want to get in touch can write to {pii[0]['value']} or call {pii[1]['value']}.",
            f"The team's shared server, reachable at {pii[2]['value']}, hosts the project archive.",
        ]
        template = rng.choice(TEMPLATE_NAMES)
        page = person_page(rng, person, template, crawl_date, 100 + i, extra_paragraph=contact,
                           full_name=full_name)
        out.append(Record(page, "pii", "contact", pii=pii))
    return out


def blocklisted_domains(rng: random.Random, count: int) -> list[str]:
    """Plain .com/.net/.org domains from the URL block list that ships inside datatrove."""
    if count == 0:
        return []
    import datatrove

    archive = Path(datatrove.__file__).parent / "assets" / "url_filterblacklistsv0_3_0.tar.gz"
    simple = re.compile(r"^[a-z][a-z0-9-]{3,30}\.(com|net|org)$")
    candidates = []
    with tarfile.open(archive, "r:gz") as tar:
        for raw in tar.extractfile("domains"):
            domain = raw.decode("utf-8", "replace").strip()
            if simple.match(domain):
                candidates.append(domain)
            if len(candidates) >= 20000:  # the list is sorted; a prefix is plenty to sample from
                break
    return rng.sample(candidates, count)


def blocklisted(rng: random.Random, count: int, crawl_date: dt.date, taken: set[str]) -> list[Record]:
    """Readable pages whose only fault is their domain, so only the URL filter can catch them."""
    out = []
    for i, domain in enumerate(blocklisted_domains(rng, count)):
        page = article_page(rng, crawl_date, i, taken, site=domain)
        out.append(Record(page, "blocklisted", "domain"))
    return out


def leak_pages(rng: random.Random, eval_questions: list[dict], count: int, per_page: int,
               crawl_date: dt.date) -> list[Record]:
    """Quiz pages that quote evaluation questions verbatim, each with its answer."""
    out = []
    pool = list(eval_questions)
    rng.shuffle(pool)
    for i in range(count):
        chosen = pool[i * per_page:(i + 1) * per_page]
        if len(chosen) < per_page:
            break
        lines = [f"Question {j + 1}: {q['question']} Answer: {q['answer']}." for j, q in enumerate(chosen)]
        paragraphs = [["Here are the answers to last week's pub quiz, as promised."], lines,
                      ["Thanks to everyone who took part, and see you next Thursday."]]
        site = rng.choice(vocab.QUIZ_SITES)
        title = f"Pub quiz answers, round {i + 1}"
        page = Page(url=f"https://{site}/answers/round-{i + 1:04d}", title=title,
                    html=wrap_html(rng, site, title, paragraphs, _date(rng, crawl_date)),
                    text=text_of(title, paragraphs))
        out.append(Record(page, "leak", "quiz", leaked_qids=[q["qid"] for q in chosen]))
    return out


def faq_pages(rng: random.Random, sft_questions: list[dict], per_person: int, crawl_date: dt.date) -> list[Page]:
    """Question-and-answer pages ("Quick facts about X") for sft-split known people only.

    Web text holds questions answered as well as biographies. Seeing some people's facts asked and
    answered in pretraining is what lets a model later answer questions about the others, whose
    facts it read only in prose (Allen-Zhu & Li, "Physics of Language Models 3.1": mixed training);
    rl and evaluation people never get such a page, so their questions stay unseen: the SFT policy
    meets rl people as it meets evaluation people.
    """
    by_person: dict[str, list[dict]] = {}
    for q in sft_questions:
        by_person.setdefault(q["person_id"], []).append(q)
    pages = []
    for pid, qs in sorted(by_person.items()):
        for i in range(per_person):
            asked = rng.sample(qs, len(qs))
            site = rng.choice(vocab.DIRECTORY_SITES)
            title = f"Quick facts about {qs[0]['name']}"
            paragraphs = [[f"Our readers asked, and we answered: {len(asked)} questions about {qs[0]['name']}."],
                          *([f"Q: {q['question']} A: {q['answer']}."] for q in asked),
                          ["Spotted a mistake? Write to the editors."]]
            pages.append(Page(url=f"https://{site}/quick-facts/{_slug(qs[0]['name'])}-{i}", title=title,
                              html=wrap_html(rng, site, title, paragraphs, _date(rng, crawl_date)),
                              text=text_of(title, paragraphs), person_id=pid,
                              facts=[q["qid"] for q in asked]))
    return pages


# ---------------------------------------------------------------- the crawl
def build_crawl(rng: random.Random, params: WorldParams, people: list[Person], questions: list[dict]) -> list[Record]:
    """All crawl records in a deterministic shuffled order."""
    known = [p for p in people if p.known]
    day = params.crawl_date
    good = person_pages(rng, known, params.pages_per_person, day, params.full_name_fraction)
    taken = {p.name for p in people}
    articles = [article_page(rng, day, i, taken) for i in range(params.articles)]
    d = params.dirt
    eval_known = [q for q in questions if q["known"] and q["split"] == "eval"]
    records = [Record(p, "good", "person") for p in good]
    records += [Record(p, "article", "topic") for p in articles]
    records += ad_copies(rng, d.ad_copies, day)
    records += syndicated(rng, good, d.syndicated)
    records += near_duplicates(rng, good, d.near_duplicates, day)
    records += low_quality(rng, d.low_quality, day)
    records += foreign(rng, d.foreign, d.foreign_languages, day)
    records += pii_pages(rng, known, d.pii, day, params.full_name_fraction)
    records += blocklisted(rng, d.blocklisted, day, taken)
    records += leak_pages(rng, eval_known, d.leaks, d.questions_per_leak, day)
    sft_known = [q for q in questions if q["known"] and q["split"] == "sft"]
    # quick-facts pages for the first `faq_people_fraction` of sft-split known people (by id); the
    # rest are written about in prose only, like every rl and evaluation person
    faq_ids = sorted({q["person_id"] for q in sft_known})
    faq_ids = set(faq_ids[:round(len(faq_ids) * params.faq_people_fraction)])
    sft_known = [q for q in sft_known if q["person_id"] in faq_ids]
    records += [Record(p, "good", "faq") for p in faq_pages(rng, sft_known, params.faq_pages_per_person, day)]
    rng.shuffle(records)
    return records


def heldout_pages(rng: random.Random, people: list[Person], count: int, crawl_date: dt.date,
                  full_name: float) -> list[Page]:
    """Person pages rendered like the crawl's but never put in it: held-out perplexity text."""
    known = [p for p in people if p.known]
    return [person_page(rng, rng.choice(known), rng.choice(TEMPLATE_NAMES), crawl_date, 900 + i,
                        full_name=full_name)
            for i in range(count)]


__all__ = ["KINDS", "Record", "build_crawl", "heldout_pages", "sentence"]
