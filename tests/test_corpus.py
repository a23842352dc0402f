"""The corpus stage: readers by extension, bad input, PII, offline LID and URL filter, and whole runs
on the tiny world (funnel, recall, resume after a kill, Ray = local, the Slurm launch scripts)."""

from __future__ import annotations

import gzip
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import polars as pl
import pytest
import yaml

from jielong.corpus import CorpusError
from jielong.corpus.readers import make_readers, resolve_inputs
from tests.conftest import REPO, params_section, write_params

TARGETS = {"recall": 0.95, "good_removed_rate": 0.02, "pii_recall": 0.99}


# ---------------------------------------------------------------- helpers
def warc_bytes(records: list[tuple[str, bytes, str | None]]) -> bytes:
    """An uncompressed WARC of response records (url, payload, WARC-Identified-Payload-Type)."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    out = io.BytesIO()
    writer = WARCWriter(out, gzip=False)
    for i, (url, payload, mime) in enumerate(records):
        http = StatusAndHeaders("200 OK", [("Content-Type", mime or "text/html")], protocol="HTTP/1.1")
        headers = {"WARC-Record-ID": f"<urn:test:{i}>"} | ({"WARC-Identified-Payload-Type": mime} if mime else {})
        writer.write_record(writer.create_warc_record(url, "response", payload=io.BytesIO(payload), http_headers=http,
                                                      warc_headers_dict=headers))
    return out.getvalue()


PAGE = b"<html><head><title>A page | example.org</title></head><body><p>Hello there.</p></body></html>"


def read_all(spec: str, max_doc_bytes: int = 2_000_000):
    readers = make_readers(resolve_inputs([spec]), max_doc_bytes, "text", "id", -1)
    docs = [d for r in readers for d in r.run(None, 0, 1)]
    skipped = {k.removeprefix("skipped_"): int(v.total) for r in readers for k, v in r.stats.stats.items()
               if k.startswith("skipped_")}
    return docs, skipped


# ---------------------------------------------------------------- inputs
def test_readers_by_extension(tmp_path):
    rows = [{"id": f"d{i}", "text": f"document {i}", "url": f"https://example.org/{i}"} for i in range(3)]
    (tmp_path / "a.jsonl").write_bytes(b"\n".join(orjson.dumps(r) for r in rows) + b"\n")
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(b"\n".join(orjson.dumps(r) for r in rows)))
    pl.DataFrame(rows).write_parquet(tmp_path / "c.parquet")
    (tmp_path / "d.warc.gz").write_bytes(gzip.compress(warc_bytes([("https://example.org/p", PAGE, None)])))
    (tmp_path / "e.warc").write_bytes(warc_bytes([("https://example.org/q", PAGE, "text/html")]))

    inputs = resolve_inputs([str(tmp_path)])
    assert {i.format: len(i.files) for i in inputs} == {"jsonl": 2, "parquet": 1, "warc": 2}
    docs, skipped = read_all(str(tmp_path))
    assert len(docs) == 3 + 3 + 3 + 1 + 1 and not skipped
    warc = [d for d in docs if d.metadata.get("format") == "html"]
    assert {d.metadata["url"] for d in warc} == {"https://example.org/p", "https://example.org/q"}
    assert warc[0].metadata["site_name"] == "example.org" and warc[0].text.startswith("<html>")
    parquet = [d for d in docs if d.metadata["file_path"].endswith("c.parquet")]
    assert [d.id for d in parquet] == ["d0", "d1", "d2"] and parquet[0].metadata["url"] == "https://example.org/0"


def test_missing_path_and_empty_glob_name_the_param(tmp_path):
    with pytest.raises(CorpusError, match=r"corpus.inputs\[0\] = .*no such file"):
        resolve_inputs([str(tmp_path / "nope.warc.gz")])
    with pytest.raises(CorpusError, match=r"corpus.inputs\[1\] = .*matches no file"):
        (tmp_path / "x.jsonl").write_text('{"text": "hi"}\n')
        resolve_inputs([str(tmp_path / "x.jsonl"), str(tmp_path / "*.parquet")])
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(CorpusError, match="unknown format"):
        resolve_inputs([str(tmp_path / "notes.txt")])


def test_bad_records_are_counted_and_skipped(tmp_path):
    big = b"<html><body><p>" + b"word " * 700_000 + b"</p></body></html>"  # 3.5 MB
    good = [("https://example.org/ok", PAGE, None)]
    records = good + [("https://example.org/img", b"\x89PNG\r\n\x1a\n" + bytes(200), "image/png"),
                      ("https://example.org/bytes", bytes(range(128, 256)) * 4, "text/html"),
                      ("https://example.org/big", big, None)] + good
    (tmp_path / "mixed.warc.gz").write_bytes(gzip.compress(warc_bytes(records)))
    docs, skipped = read_all(str(tmp_path / "mixed.warc.gz"))
    assert len(docs) == 2 and skipped == {"not_html": 1, "undecodable": 1, "too_large": 1}

    pages = [(f"https://example.org/{i}", PAGE.replace(b"Hello", os.urandom(2000).hex().encode()), None)
             for i in range(20)]
    whole = gzip.compress(warc_bytes(pages))
    (tmp_path / "cut.warc.gz").write_bytes(whole[: len(whole) // 2])
    docs, skipped = read_all(str(tmp_path / "cut.warc.gz"))
    assert 1 <= len(docs) < 20 and skipped == {"truncated_file": 1}

    raw = warc_bytes(good * 3)
    cut = raw.index(b"WARC/1", 10)
    (tmp_path / "bad.warc").write_bytes(raw[:cut] + b"NOT A WARC HEADER\r\n\r\n" + raw[cut:])
    docs, skipped = read_all(str(tmp_path / "bad.warc"))
    assert len(docs) == 1 and skipped == {"malformed": 1}

    lines = [b'{"id": "a", "text": "fine"}', b'{"id": "b", "text": "caf\xe9 \xff"}', b'{"id": "c", "text": ',
             b'["not", "an", "object"]', b'{"id": "d"}', b'{"id": "e", "text": "' + b"x" * 3_000_000 + b'"}',
             b'{"id": "f", "text": "also fine"}']
    (tmp_path / "bad.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    docs, skipped = read_all(str(tmp_path / "bad.jsonl"))
    assert [d.id for d in docs] == ["a", "f"]
    assert skipped == {"undecodable": 1, "malformed": 2, "no_text": 1, "too_large": 1}

    gz = gzip.compress(b"\n".join([b'{"id": "%d", "text": "line %d"}' % (i, i) for i in range(2000)]))
    (tmp_path / "cut.jsonl.gz").write_bytes(gz[: len(gz) // 2])
    docs, skipped = read_all(str(tmp_path / "cut.jsonl.gz"))
    assert 0 < len(docs) < 2000 and skipped == {"truncated_file": 1}

    (tmp_path / "broken.parquet").write_bytes(b"PAR1 this is not parquet")
    docs, skipped = read_all(str(tmp_path / "broken.parquet"))
    assert docs == [] and skipped == {"unreadable_file": 1}


# ---------------------------------------------------------------- steps
def test_pii_scrub_catches_what_datatrove_misses():
    from datatrove.pipeline.formatters import PIIFormatter

    from jielong.corpus.steps import PIIScrubber

    text = ("Write to ada.lovelace12@inbox.example.net or call +1 (913) 935-4773 or 020 7946 0958; "
            "the server at 10.1.2.3 mirrors 78.123.182.152. Born 2024-05-01, she owns 3 cats.")
    plain = PIIFormatter().format(text)
    assert "ada.lovelace12" not in plain and "78.123.182.152" not in plain
    assert "935-4773" in plain and "10.1.2.3" in plain  # what datatrove leaves

    scrub = PIIScrubber(emails=True, phones=True, ips=True, only_public_ips=False,
                        email_placeholder="<EMAIL>", phone_placeholder="<PHONE>", ip_placeholder="<IP>")
    out = scrub.format(text)
    assert out == ("Write to <EMAIL> or call <PHONE> or <PHONE>; the server at <IP> mirrors <IP>. "
                   "Born 2024-05-01, she owns 3 cats.")
    assert {k: int(v.total) for k, v in scrub.stats.stats.items()} == {"replaced_email": 1, "replaced_ip": 2,
                                                                      "replaced_phone": 2}


def test_language_id_runs_offline(monkeypatch):
    import datatrove.utils.lid as lid
    from datatrove.data import Document

    from jielong.corpus.lid import OfflineLanguageFilter

    def no_download(*args, **kwargs):
        raise AssertionError("tried to download a model")

    monkeypatch.setattr(lid, "cached_asset_path_or_download", no_download)
    f = OfflineLanguageFilter(["en"], 0.65)
    en = Document(text="The library extends its opening hours and now offers readings for children.", id="en")
    de = Document(text="Die Bibliothek verlängert ihre Öffnungszeiten und bietet nun Lesungen für Kinder an.", id="de")
    assert f.filter(en) is True and en.metadata["language"] == "en" and en.metadata["language_score"] > 0.65
    assert f.filter(de) == (False, "de")


def test_url_filter_offline_with_shipped_and_extra_lists():
    from datatrove.data import Document

    from jielong.corpus.steps import OfflineURLFilter

    f = OfflineURLFilter(extra_domains=["my-spam-site.com"], banned_words=["forbiddenword"])
    assert f.tldextractor.suffix_list_urls == ()

    def check(url):
        return f.filter(Document(text="x", id=url, metadata={"url": url} if url else {}))

    assert check("https://adultphonepal.com/guides/x") == (False, "domain")  # from datatrove's shipped list
    assert check("https://my-spam-site.com/a") == (False, "domain")
    assert check("https://example.org/forbiddenword/page") == (False, "hard_blacklisted")
    assert check("https://peoplepedia.org/alumni-story/x") is True
    assert check(None) is True and f.stats["no_url"].total == 1


def test_dedup_keeps_the_canonical_url():
    from datatrove.data import Document

    from jielong.corpus.dedup import url_priority

    def p(url, **meta):
        return url_priority(Document(text="x", id=url, metadata={"url": url, **meta}))

    original = "https://news.example.org/profile/ada-lovelace-3"
    assert p(original) > p(original + "?utm_source=newsletter&utm_medium=email")
    assert p(original) > p(original + "-updated")
    assert p(original, site_name="news.example.org") > p("https://mirror.example.com/story/1",
                                                         site_name="news.example.org")
    assert p(original) > p("https://a.example/1", canonical_url=original)


def test_shared_word_tokenizer_gives_datatroves_words_and_lets_its_vocabulary_go(tiny_world):
    """The corpus stage splits words with spaCy's tokenizer outside a memory zone: the words of every
    page are datatrove's, and the vocabulary is let go once it passes its cap."""
    from datatrove.utils.word_tokenizers import load_word_tokenizer

    from jielong.corpus.steps import SharedWordTokenizer

    _, _, records, _ = tiny_world
    texts = [r.page.text for r in records if r.page.language == "en"][:150]
    assert len(texts) == 150
    ours, theirs = SharedWordTokenizer("en", remember=0), load_word_tokenizer("en")
    ours.MAX_STRINGS = 2_000
    grew, reset = 0, False
    for text in texts:
        assert ours.word_tokenize(text) == theirs.word_tokenize(text)
        held = len(ours.inner.tokenizer.vocab.strings)
        reset |= held < grew
        grew = held
    assert reset and grew <= 2_000 + max(len(t.split()) for t in texts) * 3


def test_funnel_names_the_step_that_removed_the_last_documents():
    from jielong.corpus.funnel import check

    f = {"docs_in": 10, "removed": {"read": 1, "url_filter": 2, "language": 7, "exact_dedup": 0},
         "reasons": {"language": {"de": 7}}}
    with pytest.raises(CorpusError, match=r"'language' \(corpus.language\) removed the last 7 of 7.*'de': 7"):
        check(f, 0)
    with pytest.raises(CorpusError, match="does not add up"):
        check(f, 3)
    check({**f, "removed": {**f["removed"], "language": 5}}, 2)


def test_output_expectations_catch_pii_duplicates_and_languages():
    from jielong.checks import ExpectationFailed
    from stages.corpus import validate

    p = params_section("corpus")
    validate(pl.DataFrame({"id": ["a", "b"], "text": ["Call <PHONE> on 2024-05-01.", "Fine."], "language": ["en", "en"]}),
             p, "ok")
    bad = pl.DataFrame({"id": ["a", "a"], "text": ["call +1 (913) 935-4773", "x.y@example.org, 10.0.0.1"],
                        "language": ["en", "de"]})
    with pytest.raises(ExpectationFailed, match=r"(?s)3 expectation\(s\) failed.*unique.*not_match_regex_list.*in_set"):
        validate(bad, p, "bad")


def test_slurm_executors_from_params(tmp_path, monkeypatch):
    """No Slurm here: a fake sbatch records the launch scripts datatrove writes from params."""
    from jielong.corpus.executors import Stage, slurm_executors

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text("#!/bin/sh\necho Submitted batch job 4242\n")
    (bin_dir / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    p = params_section("corpus", executor="slurm", tasks=3,
                       slurm={"partition": "big", "time": "01:00:00", "sbatch_args": {"account": "proj"}})
    from datatrove.pipeline.filters import LambdaFilter

    stages = [Stage("filter", [("", LambdaFilter(lambda d: True))], 3), Stage("write", [], 1)]
    for i, s in enumerate(stages):
        s.logging_dir = tmp_path / "logs" / f"{i:02d}-{s.name}"
    executors = slurm_executors(stages, p)
    executors[-1].run()
    script = (stages[0].logging_dir / "launch_script.slurm").read_text()
    assert "#SBATCH --partition=big" in script and "#SBATCH --account=proj" in script
    assert "#SBATCH --array=0-2%2" in script and "source .venv/bin/activate" in script
    assert executors[-1].depends_job_id == "4242"


def test_ray_without_an_address_starts_its_own_cluster(monkeypatch):
    """corpus.ray.address null must not join whatever cluster this machine started last (ray.init's
    default for address=None): a stale one from a killed run hung the stage."""
    import ray

    from jielong.corpus import executors

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    for address, expected in ((None, "local"), ("10.0.0.5:6379", "10.0.0.5:6379")):
        executors._ray([], params_section("corpus", executor="ray", ray={"address": address}))
        assert calls[-1]["address"] == expected


# ---------------------------------------------------------------- whole runs on the tiny world
def corpus_params(world_root: Path, out: Path, **corpus) -> Path:
    params = yaml.safe_load((world_root / "params.yaml").read_text())
    params["corpus"] = {**params["corpus"], "inputs": [str(world_root / "world" / "crawl" / "*.warc.gz")], **corpus}
    params["data_roots"] = [str(world_root), "data"]  # "data": where the other sections' defaults point
    path = out / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def run_stage(out: Path, params: Path, work: Path, truth: Path | None = None, wait: bool = True):
    cmd = [sys.executable, "-m", "stages.corpus", "--out", str(out / "corpus"), "--work", str(work),
           "--metrics", str(out / "corpus.json"), "--params", str(params)] + (["--truth", str(truth)] if truth else [])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "JIELONG_PROGRESS": "0"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    if not wait:
        return proc
    log = proc.communicate(timeout=600)[0].decode(errors="replace")
    assert proc.returncode == 0, log[-3000:]
    return log


def read_corpus(folder: Path) -> pl.DataFrame:
    return pl.read_parquet(sorted(folder.glob("*.parquet"))).sort("id")


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, tiny_world_dir):
    out = tmp_path_factory.mktemp("corpus_local")
    params = corpus_params(tiny_world_dir, out)
    run_stage(out, params, out / "work", truth=tiny_world_dir / "world" / "truth.parquet")
    return out


def test_stage_on_the_tiny_world(local_run, tiny_world_dir):
    metrics = json.loads((local_run / "corpus.json").read_text())
    removed = {k: v for k, v in metrics.items() if k.startswith("removed.")}
    assert metrics["docs_in"] == pl.read_parquet(tiny_world_dir / "world" / "truth.parquet").height
    assert metrics["docs_in"] - sum(removed.values()) == metrics["docs_out"]
    assert set(removed) == {f"removed.{s}" for s in ["read", "url_filter", "extract", "language", "gopher_repetition",
                                                     "gopher_quality", "c4", "fineweb", "exact_dedup", "near_dedup"]}
    assert metrics["removed.url_filter"] > 0 and metrics["reasons.url_filter.domain"] > 0
    assert metrics["removed.exact_dedup"] > 0 and metrics["removed.near_dedup"] > 0
    for kind in ["low_quality", "foreign", "blocklisted", "exact_duplicate", "near_duplicate"]:
        assert metrics[f"recall.{kind}"] >= TARGETS["recall"], kind
    assert metrics["good_removed_rate"] < TARGETS["good_removed_rate"]
    assert metrics["pii_recall"] >= TARGETS["pii_recall"] and metrics["pii.phone"] > 0
    assert metrics["docs_per_s_per_core"] > 0 and metrics["mb_per_s_per_core"] > 0

    docs = read_corpus(local_run / "corpus")
    assert docs.columns == ["id", "text", "url", "language", "language_score", "metadata"]
    assert docs.height == metrics["docs_out"] and docs["id"].is_unique().all()
    assert set(docs["language"]) == {"en"} and "<EMAIL>" in "".join(docs["text"])
    meta = json.loads(docs["metadata"][0])
    assert meta["file_path"].endswith(".warc.gz") and "date" in meta


def test_resume_after_kill_gives_the_same_output(local_run, tiny_world_dir, tmp_path):
    params = corpus_params(tiny_world_dir, tmp_path, workers=1)  # one task at a time: a clean kill point
    work = tmp_path / "work"
    proc = run_stage(tmp_path, params, work, wait=False)
    deadline = time.monotonic() + 300
    while not list(work.glob("*/logs/00-filter/completions/00000")):
        assert proc.poll() is None and time.monotonic() < deadline, "stage ended before it could be killed"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "corpus").exists()
    marker = next(work.glob("*/logs/00-filter/completions/00000"))
    stamp = marker.stat().st_mtime_ns

    log = run_stage(tmp_path, params, work)
    assert "resuming" in log and marker.stat().st_mtime_ns == stamp  # task 0 was not run again
    assert read_corpus(tmp_path / "corpus").equals(read_corpus(local_run / "corpus"))


def test_changed_params_start_a_fresh_work_dir(local_run, tiny_world_dir, tmp_path):
    from stages.corpus import work_key

    inputs = resolve_inputs([str(tiny_world_dir / "world" / "crawl" / "*.warc.gz")])
    base = params_section("corpus")
    same = params_section("corpus", executor="ray", workers=1)
    other = params_section("corpus", language={"threshold": 0.5})
    assert work_key(base, inputs)[0] == work_key(same, inputs)[0] != work_key(other, inputs)[0]


@pytest.mark.ray
def test_ray_gives_the_same_output_as_local(local_run, tiny_world_dir, tmp_path):
    params = corpus_params(tiny_world_dir, tmp_path, executor="ray")
    log = run_stage(tmp_path, params, tmp_path / "work")
    assert "on ray" in log
    assert read_corpus(tmp_path / "corpus").equals(read_corpus(local_run / "corpus"))


@pytest.mark.parametrize("records, named", [
    ([], r"no document read from corpus.inputs"),
    ([{"id": f"d{i}", "text": "Das ist ein ganz gewöhnlicher deutscher Satz über das Wetter in Berlin. " * 12}
      for i in range(6)], r"'language' \(corpus.language\) removed the last 6 of 6"),
])
def test_an_empty_or_all_filtered_corpus_fails_the_stage_naming_why(tmp_path, records, named):
    crawl = tmp_path / "crawl.jsonl"
    crawl.write_text("".join(json.dumps(r) + "\n" for r in records))
    params = write_params(tmp_path / "params.yaml", {"data_roots": [str(tmp_path), "data"],
                                                      "corpus": {"inputs": [str(crawl)], "tasks": 1, "workers": 1}})
    proc = run_stage(tmp_path, params, tmp_path / "work", wait=False)
    log = proc.communicate(timeout=600)[0].decode(errors="replace")
    assert proc.returncode != 0
    assert __import__("re").search(named, log), log[-2000:]
    assert not (tmp_path / "corpus").exists() and not (tmp_path / "corpus.json").exists()
