"""datatrove steps made to run offline, faster, or to do a little more than they ship with.

Each class subclasses the datatrove step it stands for and changes only what the comment says;
the stats, drop reasons and behaviour are otherwise datatrove's own.
"""

from __future__ import annotations

import os
import re
import tarfile
from collections import OrderedDict
from functools import partial

import numpy as np
from datatrove.data import Document, DocumentsPipeline
from datatrove.io import safely_create_file
from datatrove.pipeline.extractors import Trafilatura
from datatrove.pipeline.extractors.base import ExtractorSandbox
from datatrove.pipeline.filters import URLFilter
from datatrove.pipeline.formatters import PIIFormatter
from datatrove.pipeline.formatters.pii import public_ip_validator
from datatrove.utils._import_utils import ASSETS_PATH
from datatrove.utils.logging import logger
from datatrove.utils.typeshelper import StatHints
from datatrove.utils.word_tokenizers import SpaCyTokenizer, WordTokenizer, load_word_tokenizer, strip_strings


# ---------------------------------------------------------------- URL filter
class HashedDomains:
    """A set of domains held as a sorted array of 64-bit xxhashes, a small part of the memory the same domains
    take as a set of Python strings."""

    def __init__(self, hashes: np.ndarray, extra: set[str]):
        self.hashes, self.extra = hashes, extra

    def __contains__(self, domain: str) -> bool:
        import xxhash

        if domain in self.extra:
            return True
        h = np.uint64(xxhash.xxh64_intdigest(domain))
        i = np.searchsorted(self.hashes, h)
        return bool(i < len(self.hashes) and self.hashes[i] == h)

    def __len__(self) -> int:
        return len(self.hashes) + len(self.extra)


def _hash_domains(source: str, target: str) -> None:
    import xxhash

    with open(source) as f:
        hashes = np.fromiter((xxhash.xxh64_intdigest(line.strip()) for line in f if line[:1] != "#" and line.strip()),
                             dtype=np.uint64)
    tmp = f"{target}.tmp.npy"
    np.save(tmp, np.unique(hashes))
    os.replace(tmp, target)


class OfflineURLFilter(URLFilter):
    """datatrove's URLFilter (its shipped block lists plus our extra domains and words), offline and light.

    - URLFilter builds `tldextract.TLDExtract()`, whose first call fetches the public suffix list
      from the internet; offline that blocks on connection retries before it falls back to the
      snapshot bundled with tldextract. `suffix_list_urls=()` goes to the snapshot at once, and
      `cache_dir=None` keeps it from writing a cache file.
    - URLFilter loads its 4.5 M block-listed domains into a Python set in every task: ~7 s and
      ~800 MB each. The same list is kept here as sorted 64-bit hashes, built once per machine
      next to datatrove's extracted copy and loaded in milliseconds (a false match needs a 64-bit
      collision among 4.5 M entries).
    - A document without a URL (a JSONL line without one) is kept and counted as `no_url`, where
      URLFilter would fail an assertion.
    """

    def __init__(self, **kwargs):
        from tldextract import TLDExtract

        super().__init__(**kwargs)
        self.tldextractor = TLDExtract(suffix_list_urls=(), cache_dir=None)

    def download_data(self):
        if self._downloaded or not self.use_integrated_lists:
            return
        from huggingface_hub import cached_assets_path

        folder = cached_assets_path(library_name="datatrove", namespace="filters", subfolder="url_filter")
        archive = os.path.join(ASSETS_PATH, "url_filterblacklistsv0_3_0.tar.gz")

        def extract():
            with tarfile.open(archive, "r:gz") as tar:
                tar.extractall(folder, filter="data")

        safely_create_file(os.path.join(folder, "url_filterblacklistsv0_3_0.tar.gz"), extract)
        hashed = os.path.join(folder, "domains.xxh64.npy")
        safely_create_file(hashed, partial(_hash_domains, os.path.join(folder, "domains"), hashed))
        self.block_listed_domains = HashedDomains(np.load(hashed), set(self.block_listed_domains))
        super_lists = [("block_listed_url", folder, "urls", False), ("banned_words", ASSETS_PATH, "banned_words.txt", True),
                       ("banned_subwords", ASSETS_PATH, "banned_subwords.txt", True),
                       ("soft_banned_words", ASSETS_PATH, "soft_banned_words.txt", True)]
        from datatrove.pipeline.filters.url_filter import get_list

        for attribute, where, name, normalize in super_lists:
            setattr(self, attribute, get_list(where, name, getattr(self, attribute), do_normalize=normalize))
        for word in self.banned_subwords:
            self.banned_subwords_automaton.add_word(word, len(self.banned_subwords_automaton))
        self.banned_subwords_automaton.make_automaton()
        self._downloaded = True

    def filter(self, document: Document) -> bool | tuple[bool, str]:
        if not document.metadata.get("url"):
            self.stat_update("no_url")
            return True
        return super().filter(document)


# ---------------------------------------------------------------- extraction
class HtmlExtractor(Trafilatura):
    """datatrove's Trafilatura on HTML documents; text documents (JSONL, Parquet, WET) pass through.

    The loop is BaseExtractor.run's, plus the pass-through: same sandbox, timeout and stats
    (`extracted`, `timeout`, `clean_error`, `broken_process`, `dropped` for an empty result).
    """

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        # The sandbox forks a process that must answer its warm-up within `timeout`; importing
        # trafilatura there (1-2 s on a busy machine) made the first pages of a task time out and be
        # dropped. Imported here, the fork inherits it.
        import trafilatura  # noqa: F401

        with ExtractorSandbox(timeout=self.timeout, warmup_text="") as extractor:
            for doc in data:
                self.stat_update(StatHints.total)
                if doc.metadata.get("format") != "html":
                    self.stat_update("passed_through", StatHints.forwarded)
                    yield doc
                    continue
                with self.track_time():
                    try:
                        doc.text = extractor.process_document(doc.text, self.extract)
                        self.stat_update("extracted")
                    except TimeoutError:
                        self.stat_update("timeout")
                        continue
                    except EOFError:
                        self.stat_update("broken_process")
                        continue
                    except Exception as e:  # what trafilatura raises on a page is not ours to list
                        self.stat_update("clean_error")
                        logger.warning(f"extraction error on {doc.id}: {e}")
                        continue
                if doc.text:
                    doc.metadata["format"] = "text"
                    self.stat_update(StatHints.forwarded)
                    self.update_doc_stats(doc)
                    yield doc
                else:
                    self.stat_update(StatHints.dropped, "dropped_empty")


# ---------------------------------------------------------------- PII
# datatrove's PIIFormatter replaces emails and public IPv4 addresses only. Added: phone numbers
# (international and North American forms, with or without a country code) and, by default, every
# IPv4 address, since a private address in a page still names someone's network.
PHONE = re.compile(
    r"(?<![\w+])"  # not inside a longer token
    r"(?:\+\d{1,3}[\s.-]?)?"  # country code
    r"(?:\(\d{2,4}\)[\s.-]?|\d{2,4}[\s.-])"  # area code, bracketed or followed by a separator
    r"\d{3,4}[\s.-]\d{3,4}"  # subscriber number in two groups
    r"(?![\w])"
)


class PIIScrubber(PIIFormatter):
    """datatrove's PIIFormatter with placeholders, phone numbers and a count of what was replaced."""

    def __init__(self, emails: bool, phones: bool, ips: bool, only_public_ips: bool,
                 email_placeholder: str, phone_placeholder: str, ip_placeholder: str):
        super().__init__(remove_emails=emails, remove_ips=ips, only_remove_public_ips=only_public_ips,
                         email_replacement=email_placeholder, ip_replacement=ip_placeholder)
        ip_ok = partial(public_ip_validator, public_only=only_public_ips)
        self.rules = [(kind, regex, valid, placeholder) for kind, on, regex, valid, placeholder in [
            ("email", emails, self.emails_replacer.regex, None, email_placeholder),
            ("ip", ips, self.ip_replacer.regex, ip_ok, ip_placeholder),
            ("phone", phones, PHONE, None, phone_placeholder),
        ] if on]

    def format(self, text: str) -> str:
        for kind, regex, valid, placeholder in self.rules:
            count = 0

            def replace(match, valid=valid, placeholder=placeholder):
                nonlocal count
                if valid and not valid(match.group(0)):
                    return match.group(0)
                count += 1
                return placeholder

            text = regex.sub(replace, text)
            if count:
                self.stat_update(f"replaced_{kind}", value=count)
        return text


# ---------------------------------------------------------------- shared tokenization
class SharedWordTokenizer(WordTokenizer):
    """datatrove's word tokenizer for a language, remembering the last few texts it split into words.

    Gopher repetition, Gopher quality and FineWeb each split the same page into words with spaCy
    (the largest cost after extraction). datatrove's filters accept a WordTokenizer in place of a
    language code, so one shared instance tokenizes each page once, not three times.

    Words come from spaCy's tokenizer alone, outside a memory zone. datatrove's SpaCyTokenizer runs
    the whole blank pipeline (tokenizer, then a sentencizer that does not change the tokens) inside
    `memory_zone()`, which frees every lexeme the page created, so each page's words are looked up
    from scratch; kept, they are found the next time (docs/findings.md "Benchmarks"). So that the
    vocabulary cannot grow without bound on a long crawl, the pipeline is loaded afresh once it holds
    MAX_STRINGS strings. The words are datatrove's own: a test compares them on the tiny world.
    """

    MAX_STRINGS = 500_000

    def __init__(self, language: str = "en", remember: int = 4):
        super().__init__(language)
        self.remember = remember
        self._inner = None
        self._words: OrderedDict[str, list[str]] = OrderedDict()

    @property
    def inner(self) -> WordTokenizer:
        if self._inner is None:
            self._inner = load_word_tokenizer(self.language)
        return self._inner

    def word_tokenize(self, text: str) -> list[str]:
        words = self._words.get(text)
        if words is None:
            words = self._words[text] = self._split(text)
            if len(self._words) > self.remember:
                self._words.popitem(last=False)
        return words

    def _split(self, text: str) -> list[str]:
        inner = self.inner
        # Japanese is split in byte-bounded chunks, and "IS_ALPHA" breaks spaCy: datatrove's own path
        if not isinstance(inner, SpaCyTokenizer) or inner.language == "ja" or "IS_ALPHA" in text:
            return inner.word_tokenize(text)
        if len(inner.tokenizer.vocab.strings) > self.MAX_STRINGS:
            # datatrove hands every caller one cached instance per language, so its pipeline, not the
            # instance, is dropped: the next access builds a fresh blank one, the lexemes kept so far go
            inner._tokenizer = None
        return strip_strings([token.text for token in inner.tokenizer.tokenizer(text)])

    def sent_tokenize(self, text: str) -> list[str]:
        return self.inner.sent_tokenize(text)

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return self.inner.span_tokenize(text)

    def __getstate__(self):
        return {**self.__dict__, "_inner": None, "_words": OrderedDict()}
