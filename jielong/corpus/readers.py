"""Inputs: paths or globs (local or any fsspec URL, hf:// included) -> datatrove readers, format by extension.

| extension           | datatrove reader | document text                                        |
|---------------------|------------------|------------------------------------------------------|
| .warc, .warc.gz     | WarcReader       | the HTML of each response record (extraction follows) |
| .jsonl, .jsonl.gz   | JsonlReader      | the `text_key` field                                 |
| .parquet            | ParquetReader    | the `text_key` column (FineWeb shards as they come)  |

datatrove's readers drop a record they cannot read without a trace (an undecodable WARC payload)
or give up on the rest of a file at its first bad line (a JSONL line with invalid UTF-8). These
subclasses count every record that does not become a document under a reason in the reader's
stats (`skipped_<reason>`), so the funnel accounts for every record:

    too_large        longer than corpus.max_doc_bytes (read no further than its header)
    undecodable      bytes that are neither UTF-8 nor an encoding cchardet can decode
    not_html         a WARC response whose payload is not HTML (images, PDFs, ...): as its
                     WARC-Identified-Payload-Type says, else its HTTP Content-Type, else libmagic
    malformed        a JSONL line that is not a JSON object; a WARC record warcio cannot parse
    no_text          no (or empty) `text_key`
    truncated_file   a gzip that ends early: what came before is kept, the rest cannot be read
    unreadable_file  a Parquet file pyarrow cannot open or read
"""

from __future__ import annotations

import re
import zlib
from collections import defaultdict
from dataclasses import dataclass
from glob import has_magic
from pathlib import PurePosixPath

from datatrove.pipeline.readers import JsonlReader, ParquetReader, WarcReader
from datatrove.utils.logging import logger
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from jielong.corpus import CorpusError

FORMATS = {".warc.gz": "warc", ".warc": "warc", ".jsonl.gz": "jsonl", ".jsonl": "jsonl", ".parquet": "parquet"}
HTML_TYPES = ("text/html", "application/xhtml+xml")
CANONICAL = re.compile(r"""<link\b[^>]*\brel=["']?canonical["']?[^>]*>""", re.IGNORECASE)
HREF = re.compile(r"""\bhref=["']?([^"'\s>]+)""", re.IGNORECASE)
SITE_NAME = re.compile(r"""<meta\b[^>]*\bproperty=["']?og:site_name["']?[^>]*\bcontent=["']([^"']+)""", re.IGNORECASE)
TITLE = re.compile(r"<title[^>]*>([^<]*)</title>", re.IGNORECASE)


def input_format(path: str) -> str | None:
    name = path.lower()
    return next((fmt for ext, fmt in FORMATS.items() if name.endswith(ext)), None)


# ---------------------------------------------------------------- resolving params
@dataclass(frozen=True)
class InputFiles:
    """Files of one format matched by one entry of corpus.inputs, relative to `folder`."""

    spec: str
    folder: str  # a local path or an fsspec URL
    files: tuple[str, ...]
    format: str


def resolve_inputs(specs: list[str], param: str = "corpus.inputs") -> list[InputFiles]:
    """Expand every path/glob now, so a typo fails at start-up naming the param, not deep in a task."""
    if not specs:
        raise CorpusError(f"{param}: empty; give at least one path or glob")
    resolved = []
    for i, spec in enumerate(specs):
        where = f"{param}[{i}] = {spec!r}"
        try:
            fs, path = url_to_fs(spec)
        except (ValueError, ImportError) as err:
            raise CorpusError(f"{where}: cannot open this location: {err}") from None
        if has_magic(path):
            parts = path.split("/")
            first = next(j for j, part in enumerate(parts) if has_magic(part))
            base = "/".join(parts[:first]) or ("/" if path.startswith("/") else "")
            matches = [m for m in fs.glob(path) if fs.isfile(m)]
            if not matches:
                raise CorpusError(f"{where}: the glob matches no file")
        elif fs.isdir(path):
            base, matches = path, [m for m in fs.find(path) if input_format(m)]
            if not matches:
                raise CorpusError(f"{where}: the directory holds no {'/'.join(FORMATS)} file")
        elif fs.isfile(path):
            base, matches = str(PurePosixPath(path).parent), [path]
        else:
            raise CorpusError(f"{where}: no such file or directory")

        by_format: dict[str, list[str]] = defaultdict(list)
        for match in sorted(matches):
            fmt = input_format(match)
            if fmt is None:
                if len(matches) == 1:
                    raise CorpusError(f"{where}: unknown format; the format is chosen by extension: "
                                      f"{', '.join(FORMATS)}")
                logger.warning(f"{where}: skipping {match}: not one of {', '.join(FORMATS)}")
                continue
            by_format[fmt].append(match[len(base):].lstrip("/"))
        if not by_format:
            raise CorpusError(f"{where}: no file with a known extension ({', '.join(FORMATS)})")
        folder = base if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(base)
        resolved += [InputFiles(spec, folder, tuple(files), fmt) for fmt, files in by_format.items()]
    return resolved


def make_readers(inputs: list[InputFiles], max_doc_bytes: int, text_key: str, id_key: str, limit: int) -> list:
    """One datatrove reader per (input, format); each reads its own share of files in every task."""
    classes = {"warc": WarcInput, "jsonl": JsonlInput, "parquet": ParquetInput}
    return [classes[i.format](i.folder, i.files, max_doc_bytes=max_doc_bytes, text_key=text_key, id_key=id_key,
                              limit=limit)
            for i in inputs]


# ---------------------------------------------------------------- readers
class _ResolvedFiles:
    """Read exactly the files resolved at start-up (shard = files[rank::world_size]); count what is skipped."""

    def __init__(self, folder: str, files: tuple[str, ...], max_doc_bytes: int, **kwargs):
        super().__init__(folder, **kwargs)
        self.files = list(files)
        self.max_doc_bytes = max_doc_bytes

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        if data:
            yield from data
        for doc in self.read_files_shard(self.files[rank::world_size]):
            self.update_doc_stats(doc)
            yield doc

    def count_skip(self, reason: str, filepath: str, detail: str = "", loud: bool = False) -> None:
        self.stat_update("skipped", f"skipped_{reason}")
        message = f"skipped ({reason}) in {filepath}{': ' + detail if detail else ''}"
        if loud:
            logger.warning(message)
        else:
            logger.debug(message)


class WarcInput(_ResolvedFiles, WarcReader):
    """WARC response (and WET conversion) records; the document text is the HTML, decoded."""

    def read_file(self, filepath: str):
        from warcio.archiveiterator import ArchiveIterator
        from warcio.exceptions import ArchiveLoadFailed

        index = -1
        try:
            # compression="infer" decompresses the whole stream with Python's gzip, which raises on a
            # truncated file; warcio's own per-member decompression stops there without a word.
            with self.data_folder.open(filepath, "rb", compression=self.compression) as f:
                for index, record in enumerate(ArchiveIterator(f)):
                    with self.track_time():
                        data = self.record(record, filepath)
                        document = self.get_document_from_dict(data, filepath, index) if data else None
                    if data and document is None:
                        self.count_skip("no_text", filepath, f"record {index}")
                    if document:
                        yield document
        except (EOFError, zlib.error) as err:
            self.count_skip("truncated_file", filepath, f"after record {index}: {err}", loud=True)
        except (ArchiveLoadFailed, ValueError, OSError) as err:
            self.count_skip("malformed", filepath, f"after record {index}, rest of file unreadable: {err}", loud=True)

    def record(self, record, filepath: str) -> dict | None:
        """datatrove's process_record, with every skip counted."""
        if record.rec_type not in ("response", "conversion"):
            return None  # warcinfo, request, metadata: not documents
        length = int(record.rec_headers.get_header("Content-Length") or 0)
        if length > self.max_doc_bytes:
            self.count_skip("too_large", filepath, f"{length} bytes")
            return None
        mime, said_by = payload_type(record)
        content = record.content_stream().read()
        if mime is None:  # neither the crawler nor the server named a type: sniff the bytes
            import magic

            mime, said_by = magic.from_buffer(content[:8192], mime=True), "libmagic"
        is_text = record.rec_type == "conversion" and mime == "text/plain"
        if mime not in HTML_TYPES and not is_text:
            self.count_skip("not_html", filepath, f"{mime} (by {said_by})")
            return None
        text = decode(content)
        if text is None:
            self.count_skip("undecodable", filepath, record.rec_headers.get_header("WARC-Target-URI") or "")
            return None
        headers = record.rec_headers
        data = {"text": text, "id": headers.get_header("WARC-Record-ID"), "url": headers.get_header("WARC-Target-URI"),
                "date": headers.get_header("WARC-Date"), "format": "text" if is_text else "html"}
        if not is_text:
            data["canonical_url"], data["site_name"] = canonical_url(text), site_name(text)
        return data


class JsonlInput(_ResolvedFiles, JsonlReader):
    """One JSON object per line; a bad line is counted and skipped, the rest of the file still read."""

    def read_file(self, filepath: str):
        index = -1
        try:
            with self.data_folder.open(filepath, "rb", compression=self.compression) as f:
                for index, raw in enumerate(f):
                    if not raw.strip():
                        continue
                    with self.track_time():
                        document = self.line(raw, filepath, index)
                    if document:
                        yield document
        except (EOFError, zlib.error, OSError) as err:
            self.count_skip("truncated_file", filepath, f"after line {index}: {err}", loud=True)

    def line(self, raw: bytes, filepath: str, index: int):
        import orjson

        where = f"line {index}"
        if len(raw) > self.max_doc_bytes:
            self.count_skip("too_large", filepath, f"{where}: {len(raw)} bytes")
            return None
        try:
            data = orjson.loads(raw)  # orjson rejects invalid UTF-8 with its own error
        except orjson.JSONDecodeError as err:
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                self.count_skip("undecodable", filepath, where)
                return None
            self.count_skip("malformed", filepath, f"{where}: {err}")
            return None
        if not isinstance(data, dict):
            self.count_skip("malformed", filepath, f"{where}: not a JSON object")
            return None
        document = self.get_document_from_dict(data, filepath, index)
        if document is None:
            self.count_skip("no_text", filepath, where)
        return document


class ParquetInput(_ResolvedFiles, ParquetReader):
    """Rows of a Parquet file; every column but text and id goes into the document's metadata."""

    def read_file(self, filepath: str):
        import pyarrow as pa
        import pyarrow.parquet as pq

        index = 0
        try:
            with self.data_folder.open(filepath, "rb") as f, pq.ParquetFile(f) as pqf:
                for batch in pqf.iter_batches(batch_size=self.batch_size):
                    for row in batch.to_pylist():
                        with self.track_time():
                            document = self.row(row, filepath, index)
                        index += 1
                        if document:
                            yield document
        except (pa.ArrowException, OSError, EOFError) as err:
            self.count_skip("unreadable_file", filepath, f"after row {index}: {err}", loud=True)

    def row(self, row: dict, filepath: str, index: int):
        text = row.get(self.text_key)
        if isinstance(text, str) and len(text.encode("utf-8", "replace")) > self.max_doc_bytes:
            self.count_skip("too_large", filepath, f"row {index}")
            return None
        document = self.get_document_from_dict(row, filepath, index)
        if document is None:
            self.count_skip("no_text", filepath, f"row {index}")
        return document


# ---------------------------------------------------------------- helpers
def payload_type(record) -> tuple[str | None, str]:
    """The media type a WARC record declares for its payload, and who declared it: the crawler's
    WARC-Identified-Payload-Type (Common Crawl sniffs every payload), else the server's HTTP
    Content-Type (wget, warcio, Heritrix write no payload type); (None, "") when neither names one.

    datatrove's process_record goes from the payload type straight to libmagic, which calls an HTML
    fragment, a page behind 5 kB of whitespace or a comment banner "text/plain" and XHTML "text/xml",
    so pages their server labelled text/html were lost as not_html.
    """
    identified = media_type(record.rec_headers.get_header("WARC-Identified-Payload-Type"))
    if identified:
        return identified, "WARC-Identified-Payload-Type"
    served = media_type(record.http_headers.get_header("Content-Type")) if record.http_headers else None
    return (served, "Content-Type") if served else (None, "")


def media_type(value: str | None) -> str | None:
    """`Text/HTML; charset=UTF-8` -> `text/html`; None for a missing, empty or malformed value.

    Written out because warcio hands back the raw header and the standard library's parser
    (email.message.Message.get_content_type) turns a malformed value into "text/plain", where the
    bytes should be sniffed instead.
    """
    mime = re.split(r"[;,]", value or "", maxsplit=1)[0].strip().lower()  # "," : a header sent twice
    kind, _, sub = mime.partition("/")
    return mime if kind and sub and " " not in mime else None


def decode(content: bytes) -> str | None:
    """UTF-8, else what cchardet detects (as datatrove does); None when neither decodes."""
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError:
        pass
    import cchardet

    encoding = cchardet.detect(content).get("encoding")
    if not encoding or encoding.lower().replace("-", "") == "utf8":
        return None
    try:
        return content.decode(encoding)
    except (UnicodeDecodeError, LookupError):
        return None


def canonical_url(html: str) -> str | None:
    """The page's <link rel="canonical" href=...>, which a syndicated or tracking-URL copy points at its original."""
    tag = CANONICAL.search(html[:65536])
    href = HREF.search(tag.group(0)) if tag else None
    return href.group(1) if href else None


def site_name(html: str) -> str | None:
    """The site a page says it belongs to: og:site_name, else the part of <title> after its last " | "."""
    head = html[:65536]
    meta = SITE_NAME.search(head)
    if meta:
        return meta.group(1).strip()
    title = TITLE.search(head)
    if title and " | " in title.group(1):
        return title.group(1).rsplit(" | ", 1)[1].strip()
    return None
