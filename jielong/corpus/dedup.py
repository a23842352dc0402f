"""Deduplication glue around datatrove's exact and MinHash dedup: which copy is kept, per-rank shards.

Which copy survives. datatrove keeps, of exact duplicates, the one with the highest
`document_priority` (ties: the first in its task), and of a MinHash cluster the root of its
union-find (in effect the first pair member it read). With `keep: canonical` both keep the copy
whose URL looks most like the original's:
  1. not a page that declares itself a copy: its <link rel="canonical"> names another URL, or
     the site it names (og:site_name, or a domain at the end of its <title>) is another domain
     than its host, as on a mirror or scraper that copied the original's HTML whole;
  2. the fewest query parameters (tracking, session and version parameters mark re-published URLs);
  3. the shortest URL.
`keep: first` leaves datatrove's choice as it is.

Both dedups count documents by their position in a task's stream, so the stream a filter step
reads must be the one its signature step read: `RankShard` reads back exactly the file that task
wrote, never a neighbour's when a task wrote nothing.
"""

from __future__ import annotations

import re
import struct
from urllib.parse import parse_qsl, urlsplit

import numpy as np
from datatrove.data import Document, DocumentsPipeline
from datatrove.io import DataFolderLike, get_datafolder
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.readers import JsonlReader
from datatrove.utils.binaryio import read_tuples_from_file

MAX_PRIORITY = 65535  # datatrove stores exact-dedup priorities as uint16, 0 reserved
DOMAIN = re.compile(r"(?:[a-z0-9-]+\.)+[a-z]{2,}")  # a site name that is a domain (most are brand names)


def doc_text(doc: Document) -> str:
    """What exact dedup hashes (the return annotation tells datatrove to hash a str)."""
    return doc.text


def declares_copy(url: str, canonical: str | None, site: str | None) -> bool:
    """Does the page say it is a copy of a page elsewhere (see the module docstring)?"""
    if canonical and canonical.rstrip("/") != url.rstrip("/"):
        return True
    if site and DOMAIN.fullmatch(site.lower()):
        host = (urlsplit(url).hostname or "").removeprefix("www.")
        site = site.lower().removeprefix("www.")
        return host != site and not host.endswith("." + site)
    return False


def url_priority(doc: Document) -> int:
    """Higher for the more canonical-looking URL; in [1, 65535] as datatrove's exact dedup wants."""
    url = doc.metadata.get("url") or ""
    try:
        penalty = 30000 if declares_copy(url, doc.metadata.get("canonical_url"), doc.metadata.get("site_name")) else 0
        penalty += 1000 * min(len(parse_qsl(urlsplit(url).query, keep_blank_values=True)), 20)
    except ValueError:  # not a parsable URL
        penalty = 50000
    return max(1, MAX_PRIORITY - penalty - min(len(url), 999))


class RankShard(JsonlReader):
    """Read back `<rank>.jsonl` of an intermediate folder: the documents this very task wrote."""

    name = "🗂 Rank shard"

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        name = f"{rank:05d}.jsonl"
        if self.data_folder.isfile(name):
            for doc in self.read_files_shard([name]):
                self.update_doc_stats(doc)
                yield doc


class RecordPriority(PipelineStep):
    """Pass documents on unchanged, saving each one's `url_priority` by stream position (read by KeepCanonical)."""

    type = "🫂 - DEDUP"
    name = "🔖 Record priorities"

    def __init__(self, output_folder: DataFolderLike):
        super().__init__()
        self.output_folder = get_datafolder(output_folder)

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        priorities = []
        for doc in data:
            priorities.append(url_priority(doc))
            yield doc
        with self.output_folder.open(f"{rank:05d}.u16", "wb") as f:
            f.write(np.asarray(priorities, dtype="<u2").tobytes())


class KeepCanonical(PipelineStep):
    """After MinhashDedupCluster(save_cluster_id=True): keep the most canonical member of each cluster.

    Rewrites the `<file>.remove` lists MinhashDedupFilter reads, from the `<file>.clusters`
    (document, cluster) pairs and the priorities RecordPriority saved.
    """

    type = "🫂 - DEDUP"
    name = "🔖 Keep canonical"

    def __init__(self, clusters_folder: DataFolderLike, priority_folder: DataFolderLike, tasks: int):
        super().__init__()
        self.clusters = get_datafolder(clusters_folder)
        self.priorities = get_datafolder(priority_folder)
        self.tasks = tasks

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1):
        members: dict[int, list[tuple[int, int, int]]] = {}  # cluster -> [(-priority, file, doc)]
        for file in range(self.tasks):
            if not self.clusters.isfile(f"{file:06d}.clusters"):
                continue
            with self.priorities.open(f"{file:05d}.u16", "rb") as f:
                priority = np.frombuffer(f.read(), dtype="<u2")
            with self.clusters.open(f"{file:06d}.clusters", "rb") as f:
                for doc, cluster in read_tuples_from_file(f, "2I"):
                    members.setdefault(cluster, []).append((-int(priority[doc]), file, doc))
        remove: dict[int, list[int]] = {file: [] for file in range(self.tasks)}
        for group in members.values():
            group.sort()
            for _, file, doc in group[1:]:
                remove[file].append(doc)
        for file, docs in remove.items():
            self.stat_update("to_remove", value=len(docs))
            with self.clusters.open(f"{file:06d}.remove", "wb") as f:
                f.write(b"".join(struct.pack("<I", doc) for doc in sorted(docs)))
