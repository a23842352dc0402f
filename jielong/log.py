"""Logging and progress bars, configured the same way for every stage, and how a stage's process ends."""

from __future__ import annotations

import atexit
import importlib
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def quiet_libraries() -> None:
    """With JIELONG_PROGRESS=0, the Hugging Face libraries' bars (transformers' "Loading weights",
    datasets' map and load bars) go quiet too. Their own switches are read when they are imported, and
    a stage imports them before this module, so the bars are turned off here directly; lm-eval's
    plain tqdm bars have no such switch and still show."""
    if os.environ.get("JIELONG_PROGRESS", "1") != "0":
        return
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # for libraries imported after this
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    # by module path: these packages load submodules lazily, so an attribute chain may not exist yet
    switches = {"huggingface_hub": ("huggingface_hub.utils", "disable_progress_bars"),
                "transformers": ("transformers.utils.logging", "disable_progress_bar"),
                "datasets": ("datasets.utils.tqdm", "disable_progress_bars")}
    for package, (module, off) in switches.items():
        if package in sys.modules:
            getattr(importlib.import_module(module), off)()


def get_logger(name: str) -> logging.Logger:
    """A logger writing `time level stage: message` to stderr (DVC shows it live)."""
    quiet_libraries()
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


def run(main: Callable[[], object]) -> None:
    """A command's entry point (`python -m stages.<name>`): main(), then end the process without
    Python's teardown.

    A stage imports torch, transformers, datasets and great-expectations, thousands of modules,
    and a normal exit frees them one object at a time: a good part of a short stage's wall time
    (docs/findings.md, "Stage start-up and exit"). Once main() returns, every output is written,
    closed and checked, so what teardown would still do is flush the standard streams and run the
    atexit handlers (logging's, multiprocessing's, Ray's); this does those two and leaves with
    os._exit. An exception or sys.exit from main() takes the normal path, as does a return while a
    non-daemon thread still runs (a normal exit waits for it).
    """
    main()
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        return
    # atexit has no public way to run its handlers early; _run_exitfuncs is what interpreter
    # shutdown itself calls, and it empties the list, so nothing runs twice
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(0)
