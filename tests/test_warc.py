"""Reading WARCs other tools write (wget, warcio, Heritrix): no WARC-Identified-Payload-Type, so the
HTTP Content-Type header says which responses are HTML, and libmagic only guesses for the rest."""

from __future__ import annotations

import io

from jielong.corpus.readers import make_readers, resolve_inputs

HTML = "text/html; charset=utf-8"
HEAD = "<head><meta charset='utf-8'><title>Tide tables | harbour.example</title></head>"
BODY = "<body><p>High water at 06:12 and 18:40; the ferry runs on the half hour.</p></body>"
JS = "var _paq = window._paq = window._paq || [];\n_paq.push(['trackPageView']);\n" * 40
LICENSE = "  Copyright (c) 2024 Harbour Media. All rights reserved. Do not copy this template.\n" * 60
XHTML = ('<?xml version="1.0" encoding="UTF-8"?>\n<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Strict//EN" '
         '"http://www.w3.org/TR/xhtml1/DTD/xhtml1-strict.dtd">\n<html xmlns="http://www.w3.org/1999/xhtml">')

# (path, Content-Type header, body): every one is a page a browser shows, labelled HTML by its server
PAGES = [
    ("fragment", HTML, "<div class='comment'><h3>Ola</h3><p>The 18:40 ferry was late again.</p></div>"),
    ("heading-first", HTML, "<h1>Tide tables</h1>\n<p>High water at 06:12.</p>\n<p>Low water at 12:30.</p>"),
    ("whitespace-first", HTML, "\r\n" * 2500 + f"<!DOCTYPE html>\n<html>{HEAD}{BODY}</html>"),
    ("comment-first", HTML, f"<!--\n{LICENSE}-->\n<!DOCTYPE html>\n<html lang='en'>{HEAD}{BODY}</html>"),
    ("script-first", HTML, f"<script>\n{JS}</script>\n<html>{HEAD}{BODY}</html>"),
    ("iframe-first", HTML, "<iframe src='https://www.googletagmanager.com/ns.html?id=GTM-X' height='0' width='0'>"
                           f"</iframe>\n<div id='app'>{BODY}</div>"),
    ("svg-sprite-first", HTML, "<svg xmlns='http://www.w3.org/2000/svg' style='display:none'><symbol id='i'/></svg>"
                               f"\n<header><nav>Home</nav></header><main>{BODY}</main>"),
    ("xhtml", "application/xhtml+xml; charset=utf-8", f"{XHTML}{HEAD}{BODY}</html>"),
    ("xhtml-as-html", HTML, f"{XHTML}{HEAD}{BODY}</html>"),
    ("latin-1", "text/html; charset=ISO-8859-1", "<html><head><title>Café du port</title></head>"
                                                 "<body><p>Crème brûlée à emporter, ouvert dès 7 h.</p></body></html>"),
    ("shouting", "Text/HTML;Charset=UTF-8", "<p>Closed on Sundays.</p>"),
]
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(64)
PDF = b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n" + b"0" * 200 + b"\n%%EOF\n"


def write_warc(path, records: list[tuple[str, str | None, bytes, str | None]]) -> None:
    """A gzipped WARC as wget or warcio write it: one response per (url, Content-Type header, body,
    WARC-Identified-Payload-Type), the payload type left out where None."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    out = io.BytesIO()
    writer = WARCWriter(out, gzip=True)
    for i, (url, content_type, body, identified) in enumerate(records):
        headers = [("Date", "Sat, 01 Jun 2024 10:00:00 GMT"), ("Server", "nginx/1.24.0")]
        headers += [("Content-Type", content_type)] if content_type else []
        headers += [("Content-Length", str(len(body))), ("Connection", "close")]
        http = StatusAndHeaders("200 OK", headers, protocol="HTTP/1.1")
        warc = {"WARC-Record-ID": f"<urn:uuid:00000000-0000-4000-8000-{i:012d}>", "WARC-Date": "2024-06-01T10:00:00Z"}
        warc |= {"WARC-Identified-Payload-Type": identified} if identified else {}
        writer.write_record(writer.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=http,
                                                      warc_headers_dict=warc))
    path.write_bytes(out.getvalue())


def read(path):
    readers = make_readers(resolve_inputs([str(path)]), 2_000_000, "text", "id", -1)
    docs = [d for r in readers for d in r.run(None, 0, 1)]
    skipped = {k.removeprefix("skipped_"): int(v.total) for r in readers for k, v in r.stats.stats.items()
               if k.startswith("skipped_")}
    return docs, skipped


# ---------------------------------------------------------------- tests
def test_every_page_the_server_labelled_html_is_read(tmp_path):
    site = "https://harbour.example/"
    records = [(site + name, ctype, body.encode("latin-1" if "ISO-8859-1" in ctype else "utf-8"), None)
               for name, ctype, body in PAGES]
    records += [(site + "logo.png", "image/png", PNG, None),
                (site + "timetable.pdf", "application/pdf", PDF, None)]
    write_warc(tmp_path / "wget.warc.gz", records)

    docs, skipped = read(tmp_path / "wget.warc.gz")
    assert sorted(d.metadata["url"].removeprefix(site) for d in docs) == sorted(name for name, _, _ in PAGES)
    assert skipped == {"not_html": 2}
    by_name = {d.metadata["url"].removeprefix(site): d for d in docs}
    assert "Crème brûlée" in by_name["latin-1"].text
    assert by_name["fragment"].text == PAGES[0][2] and by_name["xhtml"].metadata["format"] == "html"


def test_payload_type_then_content_type_then_the_bytes(tmp_path):
    """WARC-Identified-Payload-Type (Common Crawl's own sniffing) wins over the server's header; with
    neither, or a header that names no media type, libmagic decides as before."""
    page = f"<!DOCTYPE html>\n<html>{HEAD}{BODY}</html>".encode()
    site = "https://harbour.example/"
    write_warc(tmp_path / "mixed.warc.gz", [
        (site + "mislabelled.pdf", "text/html", PDF, "application/pdf"),   # skipped: the payload type wins
        (site + "served-as-binary", "application/octet-stream", page, "text/html"),  # read
        (site + "no-header", None, page, None),                            # read: sniffed
        (site + "no-header.png", None, PNG, None),                         # skipped: sniffed
        (site + "charset-only", "; charset=utf-8", page, None),            # read: sniffed
        (site + "junk-header", "html", PNG, None),                         # skipped: sniffed
    ])
    docs, skipped = read(tmp_path / "mixed.warc.gz")
    assert sorted(d.metadata["url"].removeprefix(site) for d in docs) == ["charset-only", "no-header",
                                                                          "served-as-binary"]
    assert skipped == {"not_html": 3}

