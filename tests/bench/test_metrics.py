"""Answer scoring: normalised matching, choice letters, evidence recall."""

from __future__ import annotations

import pytest

from videokv.bench.metrics import choice_from_text, evidence_recall, is_correct, matches, normalize


def test_normalize_and_match_whole_words():
    assert normalize("The  Train-Station!") == "train station"
    assert matches("He wants to go to the train station.", "the train station")
    assert matches("42", "42") and matches("The number is 42.", "42")
    assert not matches("The number is 142.", "42")
    assert not matches("reddish", "red")
    assert not matches("anything", "")


@pytest.mark.parametrize(
    "text, want",
    [("B", 1), ("(C)", 2), ("A.", 0), ("D) green", 3), ("A jogger waits", None), ("E", None), ("blue", 1)],
)
def test_choice_from_text(text, want):
    assert choice_from_text(text, ["red", "blue", "pink", "green"]) == want


def test_is_correct_uses_the_chosen_option_for_multiple_choice():
    choices = ("red", "blue")
    assert is_correct("blue", "blue", choices, 1, 1)
    assert not is_correct("blue", "blue", choices, 0, 1)
    assert is_correct("(B)", "blue", choices, None, 1)
    assert is_correct("It is Marco.", "Marco", None, None, None)


def test_evidence_recall_counts_overlapping_spans():
    assert evidence_recall([], [(0, 1)]) is None
    assert evidence_recall([[10, 12]], [(0, 2), (11.5, 13)]) == 1.0
    assert evidence_recall([[10, 12], [20, 21]], [(11, 11.5)]) == 0.5
    assert evidence_recall([[10, 12]], [(12.5, 14)]) == 0.0
