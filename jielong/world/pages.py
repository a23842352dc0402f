"""Realistic HTML pages: boilerplate (navigation, cookie banner, sidebar, footer) around content.

A person page states facts in sentences drawn from several phrasings, in an
order that differs per page, so a fact is seen in varied forms across pages.
The question phrasings of people.QUESTIONS never appear here: only leak pages
quote them, which keeps decontamination measurable.
"""

from __future__ import annotations

import html
import random
from dataclasses import dataclass, field

from jielong.world.people import Person

# ---------------------------------------------------------------- fact sentences
# {s}: subject (full name, first name or pronoun), {S}: same, capitalised; {N}: a name, never a pronoun.
FACT_SENTENCES = {
    "birth_date": [
        "{S} was born on {birth_date}.",
        "{S} celebrates {pos} birthday on {birth_day}, having been born in {birth_year}.",
        "The records show that {s} was born on {birth_date}.",
        "{N}'s date of birth is {birth_date}.",
        "Born on {birth_date}, {s} grew up surrounded by books.",
    ],
    "birth_city": [
        "{S} was born in {birth_city}.",
        "{S} is a native of {birth_city}.",
        "{birth_city} is the city where {s} was born.",
        "{S} spent {pos} early childhood in {birth_city}, the city of {pos} birth.",
        "Originally from {birth_city}, {s} still visits family there every summer.",
    ],
    "university": [
        "{S} studied at {university}.",
        "{S} is a graduate of {university}.",
        "{S} earned a degree from {university}.",
        "{University} counts {N} among its alumni.",
        "After finishing school, {s} enrolled at {university}.",
    ],
    "major": [
        "{S} majored in {major}.",
        "{S} holds a degree in {major}.",
        "At university, {s} focused on {major}.",
        "{Major} was the subject {s} chose to study.",
        "{S} completed {pos} studies in {major} with honours.",
    ],
    "employer": [
        "{S} works for {employer}.",
        "{S} is currently employed by {employer}.",
        "{S} joined {employer} and has worked there ever since.",
        "{Employer} employs {N} as a senior specialist.",
        "These days {s} is on the staff of {employer}.",
    ],
    "employer_city": [
        "{S} works in {employer_city}.",
        "{N}'s office is located in {employer_city}.",
        "{S} commutes every day to {pos} workplace in {employer_city}.",
        "{Employer_city} is where {s} works.",
        "For work, {s} is based in {employer_city}.",
    ],
}

FILLER = [
    "Colleagues describe {N} as patient, curious and generous with {pos} time.",
    "In {pos} spare time, {s} enjoys hiking, reading and long walks by the water.",
    "{S} is known for keeping meticulous notebooks about every project.",
    "Friends say that {s} rarely misses the Sunday market.",
    "{S} has mentored several younger colleagues over the years.",
    "{S} volunteers at a local library on weekends.",
    "Outside of work, {s} plays the cello in an amateur orchestra.",
    "{S} believes that good work comes from asking simple questions.",
    "A keen cyclist, {s} often rides to meetings when the weather allows.",
    "{S} has given talks at schools about finding a career one loves.",
    "Those who know {N} mention a dry sense of humour and a love of puzzles.",
    "{S} collects old maps and keeps a few of them framed at home.",
    "Every winter, {s} spends a week skiing in the mountains with friends.",
    "{S} writes a short newsletter for friends about recent reading.",
    "Cooking for large groups is one of {pos} favourite ways to relax.",
    "{S} says the best advice {pron} ever received was to stay curious.",
    "{S} learned to sail as a teenager and still sails most summers.",
    "Neighbours know {N} as the person who looks after everyone's plants.",
]

# ---------------------------------------------------------------- templates
# Each template: (site pool, title pattern, intro sentences, outro sentences). Facts go in between.
TEMPLATES = {
    "news_profile": (
        "NEWS_SITES", "Meet {name}: a profile",
        ["Our series on local personalities continues this week with {name}."],
        ["We thank {first} for speaking with us for this profile."],
    ),
    "directory_entry": (
        "DIRECTORY_SITES", "{name} - biography",
        ["{name} is a professional whose career is summarised in this entry."],
        ["This entry was last reviewed by the directory editors."],
    ),
    "blog_post": (
        "BLOG_SITES", "An afternoon with {name}",
        ["I first met {name} at a friend's dinner party, and we have kept in touch ever since."],
        ["I hope this short portrait gives a sense of who {first} is."],
    ),
    "speaker_bio": (
        "EVENT_SITES", "Speaker: {name}",
        ["{name} will speak at this year's autumn summit."],
        ["Tickets for the session are available on the registration page."],
    ),
    "staff_news": (
        "NEWS_SITES", "{employer} profile: {name}",
        ["This month our business desk looks at the people behind {employer}."],
        ["The company did not comment further on its staffing plans."],
    ),
    "alumni_story": (
        "DIRECTORY_SITES", "Alumni stories: {name}",
        ["Alumni stories collects the paths our graduates have taken after university."],
        ["Graduates who want to share their own story can write to the alumni office."],
    ),
}
TEMPLATE_NAMES = list(TEMPLATES)


@dataclass
class Page:
    """A rendered page and what the ground truth needs to know about it."""

    url: str
    html: str
    text: str  # the content as plain text (what extraction should recover)
    title: str
    facts: list[str] = field(default_factory=list)  # "person_id.attribute"
    person_id: str | None = None
    language: str = "en"


def _slug(text: str) -> str:
    return "-".join("".join(c.lower() if c.isalnum() else " " for c in text).split())


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _values(person: Person) -> dict:
    day, _, year = person.birth_date.rpartition(", ")
    v = {
        "birth_date": person.birth_date, "birth_day": day, "birth_year": year,
        "birth_city": person.birth_city, "university": person.university, "major": person.major,
        "employer": person.employer, "employer_city": person.employer_city,
        "pos": "her" if person.pronoun == "she" else "his", "pron": person.pronoun,
        "name": person.name, "first": person.first,
    }
    v.update({k.capitalize() if k != "employer_city" else "Employer_city": _cap(v[k])
              for k in ("university", "major", "employer", "employer_city")})
    return v


# share of filler sentences naming their person in full (fact sentences: world.full_name_fraction)
FILLER_FULL_NAME = 0.6


def _subject(rng: random.Random, person: Person, first_sentence: bool, full_name: float) -> str:
    """The full name with probability `full_name`, else the first name (5 in 8) or the pronoun."""
    roll = rng.random()
    if first_sentence or roll < full_name:
        return person.name
    if roll < full_name + (1.0 - full_name) * 0.625:
        return person.first
    return person.pronoun


def sentence(rng: random.Random, pattern: str, person: Person, first_sentence: bool = False,
             full_name: float = FILLER_FULL_NAME) -> str:
    s = _subject(rng, person, first_sentence, full_name)
    n = s if s != person.pronoun else person.first
    return pattern.format(s=s, S=_cap(s), N=n, **_values(person))


def person_paragraphs(rng: random.Random, person: Person, template: str, attributes: list[str],
                      full_name: float) -> tuple[str, list[list[str]]]:
    """Title and paragraphs (lists of sentences) stating `attributes` of `person` in a shuffled order.

    A fact sentence names its subject in full with probability `full_name` (fillers: FILLER_FULL_NAME);
    the rest say the first name, which other people share, or a pronoun.
    """
    _, title, intro, outro = TEMPLATES[template]
    v = _values(person)
    order = list(attributes)
    rng.shuffle(order)
    body = [sentence(rng, rng.choice(FACT_SENTENCES[a]), person, first_sentence=(i == 0),
                     full_name=full_name)
            for i, a in enumerate(order)]
    fillers = [sentence(rng, f, person) for f in rng.sample(FILLER, 4)]
    # interleave: facts in two or three paragraphs, with filler between
    cut = len(body) // 2
    paragraphs = [
        [p.format(**v) for p in intro],
        body[:cut] + fillers[:2],
        body[cut:] + fillers[2:],
        [p.format(**v) for p in outro],
    ]
    return title.format(**v), paragraphs


# ---------------------------------------------------------------- boilerplate
NAV = ["Home", "News", "People", "Culture", "Business", "Opinion", "About", "Contact"]
SIDEBAR = ["Ten quiet towns worth a weekend", "How to read a timetable", "Letters to the editor",
           "The week in pictures", "Subscribe to our newsletter", "Most read this month"]


def wrap_html(rng: random.Random, site: str, title: str, paragraphs: list[list[str]], date: str,
              lang: str = "en", extra_html: str = "") -> str:
    # The date shows twice, in the byline and in an "updated" line inside the article, so a
    # near-duplicate that differs only by date differs in extracted text too.
    """A full page: head, cookie banner, navigation, article, sidebar, footer."""
    esc = html.escape
    nav = "".join(f'<li><a href="/{_slug(n)}">{n}</a></li>' for n in NAV)
    side = "".join(f'<li><a href="/read/{_slug(s)}">{s}</a></li>' for s in rng.sample(SIDEBAR, 4))
    body = "\n".join("<p>" + esc(" ".join(p)) + "</p>" for p in paragraphs if p)
    author = rng.choice(["Staff writer", "Editorial team", "Guest contributor", "Newsroom"])
    return f"""<!DOCTYPE html>
<html lang="{lang}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)} | {esc(site)}</title>
<meta name="description" content="{esc(title)}">
<link rel="stylesheet" href="/static/site.css">
<script>window.dataLayer = window.dataLayer || []; function gtag(){{dataLayer.push(arguments);}}</script>
</head>
<body>
<div id="cookie-banner" class="cookie-consent">We use cookies to improve your experience. <button>Accept all</button> <button>Manage preferences</button></div>
<header class="site-header"><a class="logo" href="/">{esc(site)}</a><nav><ul>{nav}</ul></nav></header>
<main>
<article>
<h1>{esc(title)}</h1>
<p class="byline">{esc(author)} &middot; <time>{esc(date)}</time></p>
{body}
{extra_html}
<p class="updated">Last updated on {esc(date)}.</p>
</article>
</main>
<aside class="sidebar"><h3>Read next</h3><ul>{side}</ul><form class="newsletter"><input type="email" placeholder="Your email"><button>Sign up</button></form></aside>
<footer><p>&copy; 2024 {esc(site)}. All rights reserved.</p><ul><li><a href="/privacy">Privacy</a></li><li><a href="/terms">Terms of use</a></li><li><a href="/cookies">Cookie settings</a></li></ul></footer>
</body>
</html>
"""


def text_of(title: str, paragraphs: list[list[str]]) -> str:
    return "\n\n".join([title, *(" ".join(p) for p in paragraphs if p)])
