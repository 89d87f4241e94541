"""TextMatch: the timed-text blocks (subtitles, transcripts) whose words best match the question."""

from __future__ import annotations

import functools
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


def stem(word: str) -> str:
    """A light suffix stripper, so that a question's "ring", "fly" or "work" meets a line's "rings", "flies"
    or "works": first a plural or third-person ending ("ies" -> "y"; "es" after ss, x, z, ch, sh; "s" but not
    "ss"), then "ing" or "ed", keeping at least three letters. Not a linguist's stemmer: both sides go
    through it, and the two steps in this order make "strings" and "string" meet."""
    if len(word) <= 3 or not word.isalpha():
        return word
    if word.endswith("ies") and len(word) > 4:
        word = word[:-3] + "y"
    elif word.endswith(("sses", "xes", "zes", "ches", "shes")) and len(word) > 4:
        word = word[:-2]
    elif word.endswith("s") and not word.endswith("ss"):
        word = word[:-1]
    if word.endswith("ing") and len(word) >= 6:
        word = word[:-3]
    elif word.endswith("ed") and len(word) >= 5:
        word = word[:-2]
    return word


def words(text: str) -> frozenset[str]:
    """The distinct content words of `text`, stemmed (`stem`): lower-cased letters/digits runs, stopwords
    and the `[12.0s]` time stamps the engine writes before each event dropped. Memoised: a stream's lines
    are matched again at every question, and splitting them again each time grew with the stream."""
    return _words(text)


@functools.lru_cache(maxsize=1 << 17)
def _words(text: str) -> frozenset[str]:
    text = re.sub(r"\[\d+(\.\d+)?s\]", " ", text.lower())
    return frozenset(stem(w) for w in _WORD.findall(text) if w not in STOPWORDS)


#: words that make a question about a line's neighbours ("what happened just before ...?")
NEIGHBOUR_WORDS = frozenset(stem(w) for w in "before after previous next earlier later".split())


@dataclass(frozen=True)
class TextMatch:
    """Up to `k` text blocks whose words best match the question, for every layer's selection.

    The retrievers of the papers score a block by its *mean key*; for a subtitle line that mean is
    dominated by the time stamp and the function words shared by every line, and on videokv's needle
    streams (docs/RESULTS.md) the line holding the answer ranks low among hundreds. Video-LLM practice
    with subtitles is to retrieve them by their words (Video-RAG, Luo et al. 2024, arXiv 2411.13093,
    retrieves ASR/OCR text for the question); this does the same, training-free and on the CPU.

    1. **Score.** A text block's score is the sum of the inverse document frequencies
       ``log((N + 1) / (df + 0.5))`` (N text blocks in memory, df those containing the word) of the
       question's content words (`words`: stemmed, stopwords dropped) it contains. Blocks scoring 0 are
       never added; ties go to the newer block.
    2. **Adaptive count** (`ratio`). Going down the ranking, a block is kept only if the question words it
       adds to those of the blocks already kept weigh at least ``ratio`` times the best block's score, or if
       it repeats a kept block's words exactly. A question matched by one line gets that line and not the
       lines that share its commonest words ("the number painted on the taxi" against the fire engine's
       number, "the cyclist in the helmet" against the mail carrier's helmet); a question naming several
       events ("which came first: the fireworks, the crane or the parrot?") gets each event's line; one
       whose answer is a repeated line ("A church bell rings.", every time) gets all of them; up to `k`.
    3. **Bridges** (`bridges`). A question the best line does not cover ("Where does the florist work?"
       against "The florist is called Aisha.") also gets the lines that share a rare word with the best
       line (in at most ``bridges + 1`` lines: "Aisha") and contain a question word it lacks ("Aisha works
       at the harbour."): query expansion over the stream's own text, for two-hop questions.
    4. **Neighbours** (`neighbours`). A question with a word of time order (`NEIGHBOUR_WORDS`: "before",
       "after", ...) also gets the `neighbours` text blocks right before and after the best line, in the
       order the blocks were stored (stream order), for "what happened just before ...?".

    Off in the paper presets; on in `videokv` through the `WithText` combinator (``--memory-set
    text_k=N`` sets `k` on any preset).

    Parameters
    ----------
    k : int
        At most this many text blocks are added (>= 0; 0 turns matching off).
    ratio : float
        The new words' weight, relative to the best block's score, a block needs (0 <= ratio <= 1; 0: the
        `k` best).
    bridges : int
        A bridge word may be in at most ``bridges + 1`` text blocks (0: no bridges).
    neighbours : int
        Text blocks taken on each side of the best one for time-order questions (0: none).
    """

    name: ClassVar[str] = "text_match"
    k: int = 4
    ratio: float = 0.0
    bridges: int = 0
    neighbours: int = 0

    def __post_init__(self) -> None:
        for what in ("k", "bridges", "neighbours"):
            v = getattr(self, what)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigError(f"TextMatch: {what} must be an int >= 0; got {v!r}")
        r = self.ratio
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 <= r <= 1.0:
            raise ConfigError(f"TextMatch: ratio must be a number in [0, 1]; got {r!r}")

    def select(self, question: str, texts: list[str | None]) -> list[int]:
        """Indices into `texts` (None: not a text block; the others in stream order) of the chosen blocks:
        the scored ones best first, then bridges, then neighbours."""
        wanted = words(question)
        if self.k == 0 or not wanted:
            return []
        rows = [(r, words(t)) for r, t in enumerate(texts) if t is not None]
        n = len(rows)
        df = Counter(w for _, ws in rows for w in ws)
        idf = {w: math.log((n + 1) / (c + 0.5)) for w, c in df.items()}
        scored = [(sum(idf[w] for w in ws & wanted), i) for i, (_, ws) in enumerate(rows)]
        scored = sorted(((s, i) for s, i in scored if s > 0), key=lambda x: (-x[0], -x[1]))
        if not scored:
            return []
        best_score, best = scored[0]
        chosen, covered = [best], set(rows[best][1] & wanted)
        for _, i in scored[1:]:
            if len(chosen) >= self.k:
                break
            matched = rows[i][1] & wanted
            repeat = any(rows[i][1] == rows[c][1] for c in chosen)
            gain = sum(idf[w] for w in matched - covered)
            if repeat or gain >= self.ratio * best_score - 1e-9:
                chosen.append(i)
                covered |= matched
        extra: list[int] = []
        if self.bridges:
            best_words = rows[best][1]
            missing = wanted - best_words
            rare = {w for w in best_words - wanted if df[w] <= self.bridges + 1}
            if missing and rare:
                extra += [i for i, (_, ws) in enumerate(rows) if i != best and ws & rare and ws & missing]
        if self.neighbours and wanted & NEIGHBOUR_WORDS:
            extra += [i for d in range(1, self.neighbours + 1) for i in (best - d, best + d) if 0 <= i < n]
        for i in extra:
            if len(chosen) >= self.k:
                break
            if i not in chosen:
                chosen.append(i)
        return [rows[i][0] for i in chosen]


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
    k, ratio, bridges, neighbours
        `TextMatch`'s parameters (defaults: the `k` best lines, no bridges, no neighbours).
    """

    name: ClassVar[str] = "with_text"
    base: Retriever = field(default_factory=_default_base)
    k: int = 4
    ratio: float = 0.0
    bridges: int = 0
    neighbours: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.base, Retriever):
            raise ConfigError(f"WithText: base must be a retriever; got {self.base!r}")
        _ = self.matcher  # validates the matching parameters

    @property
    def matcher(self) -> TextMatch:
        return TextMatch(self.k, self.ratio, self.bridges, self.neighbours)

    def _matched(self, catalog: Catalog) -> list[int]:
        return self.matcher.select(catalog.question, catalog.texts or [])

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
