"""TextMatch: the timed-text blocks (subtitles, transcripts) whose words best match the question."""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import ClassVar

from videokv.errors import ConfigError
from videokv.policies.retrieve.base import Catalog, LayerwiseForward, Query, Retriever
from videokv.policies.retrieve.topk import TopK

_WORD = re.compile(r"[^\W_]+")
# question and function words that say nothing about where the answer is
STOPWORDS = frozenset(
    """a an the and or but of to in on at by for with from as is are was were be been being am do does did
    what which who whom whose when where why how that this these those there here it its it's he she they
    them his her their we you your i me my our us not no yes can could would should will shall may might
    must have has had into onto over under about than then so if any some all each every one ones
    s t""".split()
)


def words(text: str) -> set[str]:
    """The distinct content words of `text`: lower-cased letters/digits runs, stopwords and the
    `[12.0s]` time stamps the engine writes before each event dropped."""
    text = re.sub(r"\[\d+(\.\d+)?s\]", " ", text.lower())
    return {w for w in _WORD.findall(text) if w not in STOPWORDS}


@dataclass(frozen=True)
class TextMatch:
    """Adds to every layer's selection the `k` text blocks whose words best match the question.

    The retrievers of the papers score a block by its *mean key*; for a subtitle line that mean is
    dominated by the time stamp and the function words shared by every line, and on videokv's needle
    streams (docs/RESULTS.md) the line holding the answer ranks low among hundreds. Video-LLM practice
    with subtitles is to retrieve them by their words (Video-RAG, Luo et al. 2024, arXiv 2411.13093,
    retrieves ASR/OCR text for the question); this does the same, training-free and on the CPU: a text
    block's score is the sum of the inverse document frequencies ``log((N + 1) / (df + 0.5))`` (N text
    blocks in memory, df those containing the word) of the question's content words it contains. Blocks
    scoring 0 are never added; ties go to the newer block. Added on top of any retriever by the `WithText`
    combinator (``--memory-set text_k=N``), off in the paper presets.

    Parameters
    ----------
    k : int
        Text blocks added (>= 0; 0 turns matching off).
    """

    name: ClassVar[str] = "text_match"
    k: int = 4

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 0:
            raise ConfigError(f"TextMatch: k must be an int >= 0; got {self.k!r}")

    def select(self, question: str, texts: list[str | None]) -> list[int]:
        """Indices into `texts` (None: not a text block) of the best `k` matches, best first."""
        wanted = words(question)
        if self.k == 0 or not wanted:
            return []
        rows = [(r, words(t)) for r, t in enumerate(texts) if t is not None]
        df = Counter(w for _, ws in rows for w in ws & wanted)
        n = len(rows)
        idf = {w: math.log((n + 1) / (c + 0.5)) for w, c in df.items()}
        scored = [(sum(idf[w] for w in ws & wanted), r) for r, ws in rows]
        scored = [(s, r) for s, r in scored if s > 0]
        scored.sort(key=lambda x: (-x[0], -x[1]))
        return [r for _, r in scored[: self.k]]


def _default_base() -> Retriever:
    return TopK()


@dataclass(frozen=True)
class WithText(Retriever):
    """A retriever combinator: `base`'s blocks on every layer, plus the `k` text blocks whose words best
    match the question (`TextMatch`), merged in stream order without duplicates.

    Lexical matching of timed text is videokv's addition to the papers' dense retrieval (named, off in their
    presets, on in `videokv`); ``--memory-set text_k=N`` wraps a preset's retriever in it.

    Parameters
    ----------
    base : Retriever
        The dense retriever whose choice is extended (default: ReKV's `TopK`).
    k : int
        Text blocks added (>= 0; 0 adds nothing).
    """

    name: ClassVar[str] = "with_text"
    base: Retriever = field(default_factory=_default_base)
    k: int = 4

    def __post_init__(self) -> None:
        if not isinstance(self.base, Retriever):
            raise ConfigError(f"WithText: base must be a retriever; got {self.base!r}")
        TextMatch(self.k)  # validates k

    def _matched(self, catalog: Catalog) -> list[int]:
        return TextMatch(self.k).select(catalog.question, catalog.texts or [])

    def _extend(self, catalog: Catalog, selection: list[list[int]]) -> list[list[int]]:
        matched = self._matched(catalog)
        if not matched:
            return selection
        return [catalog.in_stream_order(set(layer) | set(matched)) for layer in selection]

    def layerwise_query(self) -> bool:
        return self.base.layerwise_query()

    def select(self, catalog: Catalog, query: Query) -> list[list[int]]:
        return self._extend(catalog, self.base.select(catalog, query))

    def select_layerwise(self, catalog: Catalog, forward: LayerwiseForward) -> list[list[int]]:
        return self._extend(catalog, self.base.select_layerwise(catalog, forward))
