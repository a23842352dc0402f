"""Logging and progress bars, configured the same way for every stage."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def get_logger(name: str) -> logging.Logger:
    """A logger writing `time level stage: message` to stderr (DVC shows it live)."""
    root = logging.getLogger("jielong")
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%H:%M:%S"))
        root.addHandler(handler)
        root.setLevel(os.environ.get("JIELONG_LOG_LEVEL", "INFO"))
        root.propagate = False
    return root.getChild(name)


def progress(items: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """tqdm over `items`; silent when JIELONG_PROGRESS=0 (tests, CI logs)."""
    disable = os.environ.get("JIELONG_PROGRESS", "1") == "0"
    yield from tqdm(items, desc=desc, total=total, unit=unit, disable=disable, dynamic_ncols=True)
