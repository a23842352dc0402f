"""WARC shards of HTTP response records, byte-identical for the same input.

warcio fills WARC-Record-ID with uuid4 and WARC-Date with the wall clock; both
are passed explicitly here so that the same seed gives the same bytes.
"""

from __future__ import annotations

import datetime as dt
import random
import uuid
from io import BytesIO
from pathlib import Path

from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from jielong.io import atomic_file

SERVERS = ["nginx/1.24.0", "Apache/2.4.58 (Ubuntu)", "cloudflare", "openresty"]


def record_id(rng: random.Random) -> str:
    return f"<urn:uuid:{uuid.UUID(int=rng.getrandbits(128), version=4)}>"


def _http_date(when: dt.datetime) -> str:
    return when.strftime("%a, %d %b %Y %H:%M:%S GMT")


def write_shard(path: Path, pages: list, rng: random.Random, crawl_date: dt.date, software: str) -> list[str]:
    """Write one gzipped WARC (warcinfo + one response per page); returns the response record ids."""
    ids = []
    start = dt.datetime(crawl_date.year, crawl_date.month, crawl_date.day)
    with atomic_file(path) as tmp, open(tmp, "wb") as out:
        writer = WARCWriter(out, gzip=True)
        info = writer.create_warcinfo_record(path.name, {
            "software": software, "format": "WARC File Format 1.0", "isPartOf": "jielong-world-crawl",
            "robots": "obey",
        })
        info.rec_headers.replace_header("WARC-Record-ID", record_id(rng))
        info.rec_headers.replace_header("WARC-Date", start.strftime("%Y-%m-%dT%H:%M:%SZ"))
        writer.write_record(info)
        for i, page in enumerate(pages):
            when = start + dt.timedelta(seconds=7 * i + rng.randint(0, 6))
            body = page.html.encode("utf-8")
            http = StatusAndHeaders("200 OK", [
                ("Date", _http_date(when)),
                ("Server", rng.choice(SERVERS)),
                ("Content-Type", "text/html; charset=utf-8"),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "max-age=600"),
                ("Connection", "close"),
            ], protocol="HTTP/1.1")
            rid = record_id(rng)
            record = writer.create_warc_record(page.url, "response", payload=BytesIO(body), http_headers=http,
                                               warc_headers_dict={
                                                   "WARC-Record-ID": rid,
                                                   "WARC-Date": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
                                               })
            writer.write_record(record)
            ids.append(rid)
    return ids
