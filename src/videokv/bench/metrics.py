"""Scoring an answer: correctness (normalised match, choice letter, per task family) and evidence recall.

Open answers are read by the question's task family (docs/DATASET.md): a count may be given as a digit or a
word ("3", "three"); an order as the items in sequence ("the tram, then the bus and the ferry"); a time
("at about what time ...?") as seconds, m:ss or "2 minutes 5 seconds", right within `TIME_TOLERANCE_S`.
Every other open answer is right when the reference appears in it as whole words (`matches`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from videokv.api import matches, normalize

__all__ = [
    "TIME_TOLERANCE_S",
    "choice_from_text",
    "count_matches",
    "evidence_recall",
    "is_correct",
    "matches",
    "normalize",
    "numbers_in",
    "parse_time",
    "sequence_matches",
    "time_matches",
    "times_in",
]

#: An open answer to a time question is right within this many seconds of the reference.
TIME_TOLERANCE_S = 10.0

_LETTER = re.compile(r"^(?:\(([A-Z])\)|([A-Z])[).:]|([A-Z])$)")

_UNITS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen"
).split()
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80}
_WORDS = {w: i for i, w in enumerate(_UNITS)} | _TENS | {"once": 1, "twice": 2, "thrice": 3, "ninety": 90}

_NUM = r"\d+(?:\.\d+)?"
_TIME = re.compile(
    rf"(?P<h>\d+):(?P<hm>\d{{2}}):(?P<hs>\d{{2}}(?:\.\d+)?)"  # h:mm:ss
    rf"|(?P<m>\d+):(?P<s>\d{{2}}(?:\.\d+)?)"  # m:ss
    rf"|(?P<mins>{_NUM})\s*(?:minutes?|mins?)\b(?:\s*(?:and\s*)?(?P<secs>{_NUM})\s*(?:seconds?|secs?|s)\b)?"
    rf"|(?P<sec>{_NUM})\s*(?:seconds?|secs?|s\b)?"
)


def choice_from_text(prediction: str, choices: Sequence[str]) -> int | None:
    """The option a generated text picks: a leading letter ("B", "(B)", "B." ...) or exactly one option's
    text; None when it picks none or several."""
    m = _LETTER.match(prediction.strip())
    letter = m and (m.group(1) or m.group(2) or m.group(3))
    if letter and ord(letter) - 65 < len(choices):
        return ord(letter) - 65
    hits = [i for i, c in enumerate(choices) if matches(prediction, c)]
    return hits[0] if len(hits) == 1 else None


def numbers_in(text: str) -> list[int]:
    """The whole numbers a text mentions, as digits or English words, in order: "3 or four" -> [3, 4];
    "twenty one" -> [21]; "once" -> [1]."""
    out: list[int] = []
    tens = False  # the last number was a bare tens word, which a unit word may complete
    for word in normalize(text).split():
        if word.isdigit():
            out.append(int(word))
            tens = False
        elif word in _WORDS:
            value = _WORDS[word]
            if tens and 0 < value < 10:
                out[-1] += value
                tens = False
            else:
                out.append(value)
                tens = word in _TENS
        else:
            tens = False
    return out


def count_matches(prediction: str, answer: str) -> bool:
    """A count: the numbers the prediction mentions (digits or words) are exactly the reference's one
    number ("three times" and "3" are right for "3"; "3 or 4" is not). A reference that holds no single
    number falls back to `matches`."""
    gold = set(numbers_in(answer))
    if len(gold) != 1:
        return matches(prediction, answer)
    return set(numbers_in(prediction)) == gold


def sequence_matches(prediction: str, answer: str) -> bool:
    """An order: the reference is comma-separated items ("the tram, the bus, the ferry"); the prediction
    is right when it names every item (as whole words, normalised) and their first mentions come in that
    order. A reference of one item falls back to `matches`."""
    items = [normalize(x) for x in answer.split(",")]
    items = [x for x in items if x]
    if len(items) < 2:
        return matches(prediction, answer)
    pred = normalize(prediction)
    last = -1
    for item in items:
        m = re.search(rf"(?<!\S){re.escape(item)}(?!\S)", pred)
        if m is None or m.start() <= last:
            return False
        last = m.start()
    return True


def _seconds(m: re.Match) -> float:
    g = m.groupdict()
    if g["h"] is not None:
        return int(g["h"]) * 3600 + int(g["hm"]) * 60 + float(g["hs"])
    if g["m"] is not None:
        return int(g["m"]) * 60 + float(g["s"])
    if g["mins"] is not None:
        return float(g["mins"]) * 60 + float(g["secs"] or 0)
    return float(g["sec"])


def times_in(text: str) -> list[float]:
    """The times a text mentions, in seconds, in order: "1:05", "0:01:05", "65 s", "65.0 seconds",
    "1 minute 5 seconds" and a bare "65" are all 65.0."""
    return [_seconds(m) for m in _TIME.finditer(text.lower())]


def parse_time(answer: str) -> float | None:
    """The time a reference answer is, in seconds, when the whole answer is one time ("155 seconds",
    "2:35"); else None."""
    m = _TIME.fullmatch(answer.strip().lower())
    return _seconds(m) if m else None


def time_matches(prediction: str, answer: str, tolerance: float = TIME_TOLERANCE_S) -> bool:
    """A time: the first time the prediction mentions is within `tolerance` seconds of the reference's.
    A reference that is not a time falls back to `matches`."""
    gold = parse_time(answer)
    if gold is None:
        return matches(prediction, answer)
    found = times_in(prediction)
    return bool(found) and abs(found[0] - gold) <= tolerance


def is_correct(
    prediction: str,
    answer: str,
    choices: Sequence[str] | None,
    chosen: int | None,
    answer_index: int | None,
    task: str = "retrieval",
) -> bool:
    """Multiple choice: the chosen option (or the one the text names) is the right one. Open: by the task
    family, `count_matches` (counting), `sequence_matches` (ordering), `time_matches` (temporal questions
    whose answer is a time), else `matches`."""
    if choices:
        if chosen is None:
            chosen = choice_from_text(prediction, choices)
        return chosen is not None and chosen == answer_index
    if task == "counting":
        return count_matches(prediction, answer)
    if task == "ordering":
        return sequence_matches(prediction, answer)
    if task == "temporal":
        return time_matches(prediction, answer)
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
