"""Scoring an answer: correctness (normalised match, choice letter) and evidence recall."""

from __future__ import annotations

import re
from collections.abc import Sequence

from videokv.qa import matches, normalize

__all__ = ["choice_from_text", "evidence_recall", "is_correct", "matches", "normalize"]

_LETTER = re.compile(r"^(?:\(([A-Z])\)|([A-Z])[).:]|([A-Z])$)")


def choice_from_text(prediction: str, choices: Sequence[str]) -> int | None:
    """The option a generated text picks: a leading letter ("B", "(B)", "B." ...) or exactly one option's
    text; None when it picks none or several."""
    m = _LETTER.match(prediction.strip())
    letter = m and (m.group(1) or m.group(2) or m.group(3))
    if letter and ord(letter) - 65 < len(choices):
        return ord(letter) - 65
    hits = [i for i, c in enumerate(choices) if matches(prediction, c)]
    return hits[0] if len(hits) == 1 else None


def is_correct(
    prediction: str, answer: str, choices: Sequence[str] | None, chosen: int | None, answer_index: int | None
) -> bool:
    """Multiple choice: the chosen option (or the one the text names) is the right one. Open: `matches`."""
    if choices:
        if chosen is None:
            chosen = choice_from_text(prediction, choices)
        return chosen is not None and chosen == answer_index
    return matches(prediction, answer)


def evidence_recall(
    evidence: Sequence[Sequence[float]], attended: Sequence[tuple[float, float]], tol: float = 1e-3
) -> float | None:
    """The share of the question's evidence spans that overlap a span the answer attended to (None when the
    question has no evidence)."""
    if not evidence:
        return None
    hit = 0
    for t0, t1 in evidence:
        hit += any(a0 <= t1 + tol and t0 <= a1 + tol for a0, a1 in attended)
    return hit / len(evidence)
