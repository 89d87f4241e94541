"""SRT / WebVTT parsing, writing and timed-text events."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from videokv.errors import InputError, SubtitleError
from videokv.video import (
    TextEvent,
    events_from_pairs,
    format_srt,
    load_subtitles,
    parse_srt,
    parse_vtt,
    write_srt,
)

SRT = """1
00:00:01,000 --> 00:00:02,500
Hello <i>there</i>,
general Kenobi.

2
00:00:03,250 --> 00:00:04,000 X1:100 X2:200 Y1:10 Y2:20
{\\an8}<font color="red">Second</font> cue

3
01:02:03,004 --> 01:02:05,000
Late
"""

VTT = """WEBVTT - a test file
Kind: captions
Language: en

NOTE this is a comment
spanning two lines --- not a cue

STYLE
::cue { color: lime }

intro
00:01.000 --> 00:02.500 align:start position:10%
<v Roger>Hi <c.yellow>there</c> &amp; welcome</v>
second <b>line</b>

00:00:03.000 --> 00:00:05.000
<00:00:03.000>Karaoke <00:00:04.000>words

3
01:00:00.000 --> 01:00:01.500 line:0
Hour mark
"""


def test_parse_srt() -> None:
    events = parse_srt(SRT)
    assert events == [
        TextEvent(1.0, 2.5, "Hello there, general Kenobi."),
        TextEvent(3.25, 4.0, "Second cue"),
        TextEvent(3723.004, 3725.0, "Late"),
    ]


def test_parse_srt_tolerates_bom_crlf_missing_numbers_and_dots() -> None:
    text = "\ufeff1\r\n00:00:01,000 --> 00:00:02,000\r\nOne\r\n\r\n\r\n00:00:02.5 --> 00:00:03.000\r\nTwo\r\n"
    assert parse_srt(text) == [TextEvent(1.0, 2.0, "One"), TextEvent(2.5, 3.0, "Two")]


def test_parse_srt_skips_empty_cues() -> None:
    text = "1\n00:00:01,000 --> 00:00:02,000\n<i></i>\n\n2\n00:00:03,000 --> 00:00:04,000\nKept\n"
    assert parse_srt(text) == [TextEvent(3.0, 4.0, "Kept")]
    assert parse_srt("") == []


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("1\n00:00:01,000 -> 00:00:02,000\nText\n", 2),  # not a timing line
        ("1\n00:00:01,000 --> 00:00:0x,000\nText\n", 2),
        ("1\n00:00:01,000 --> 00:00:02,000\nOk\n\n2\n00:61:00,000 --> 00:62:00,000\nBad minutes\n", 6),
        ("1\n00:00:05,000 --> 00:00:02,000\nBackwards\n", 2),
        ("\n\n1\n00:00:01,000 --> 00:00:02,000\nOk\n\njust text\n", 7),
    ],
)
def test_parse_srt_errors_name_the_line(text: str, line: int) -> None:
    with pytest.raises(SubtitleError, match=rf"line {line}\b"):
        parse_srt(text)


def test_parse_vtt() -> None:
    events = parse_vtt(VTT)
    assert events == [
        TextEvent(1.0, 2.5, "Hi there & welcome second line"),
        TextEvent(3.0, 5.0, "Karaoke words"),
        TextEvent(3600.0, 3601.5, "Hour mark"),
    ]


def test_parse_vtt_bom_crlf() -> None:
    text = "\ufeffWEBVTT\r\n\r\n00:01.000 --> 00:02.000\r\nA\r\nB\r\n"
    assert parse_vtt(text) == [TextEvent(1.0, 2.0, "A B")]


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("00:01.000 --> 00:02.000\nNo header\n", 1),
        ("WEBVTT\n\n00:01.000 --> 00:02.000\nOk\n\n00:03.000 -> 00:04.000\nBad\n", 6),
        ("WEBVTT\n\nid\n00:0a.000 --> 00:02.000\nBad\n", 4),
        ("WEBVTT\n\n00:01.000 --> 00:02.000\nOk\n\nstray\ntext\n", 7),
    ],
)
def test_parse_vtt_errors_name_the_line(text: str, line: int) -> None:
    with pytest.raises(SubtitleError, match=rf"line {line}\b"):
        parse_vtt(text)


def test_load_subtitles_by_extension_and_sniffing(tmp_path: Path) -> None:
    srt = tmp_path / "a.srt"
    srt.write_text("2\n00:00:05,000 --> 00:00:06,000\nLater\n\n1\n00:00:01,000 --> 00:00:02,000\nEarlier\n")
    assert [e.text for e in load_subtitles(srt)] == ["Earlier", "Later"]  # sorted by start
    vtt = tmp_path / "b.vtt"
    vtt.write_text(VTT, encoding="utf-8")
    assert len(load_subtitles(vtt)) == 3
    sniffed = tmp_path / "captions.txt"
    sniffed.write_text(VTT, encoding="utf-8-sig")
    assert load_subtitles(sniffed) == parse_vtt(VTT)
    legacy = tmp_path / "legacy.srt"
    legacy.write_bytes("1\n00:00:01,000 --> 00:00:02,000\nCaf\xe9\n".encode("cp1252"))
    assert load_subtitles(legacy)[0].text == "Caf\xe9"


def test_load_subtitles_errors(tmp_path: Path) -> None:
    with pytest.raises(SubtitleError, match="not found"):
        load_subtitles(tmp_path / "missing.srt")
    notes = tmp_path / "notes.txt"
    notes.write_text("just some text\n")
    with pytest.raises(SubtitleError, match="not an SRT or WebVTT"):
        load_subtitles(notes)
    bad = tmp_path / "bad.srt"
    bad.write_text("1\n00:00:01 --> soon\nText\n")
    with pytest.raises(SubtitleError, match=r"bad\.srt.*line 2"):
        load_subtitles(bad)


def test_text_event_validation() -> None:
    assert TextEvent(1, 2, "  hi  ") == TextEvent(1.0, 2.0, "hi")
    for args in [(-1.0, 2.0, "x"), (3.0, 2.0, "x"), (0.0, 1.0, "   "), (float("nan"), 1.0, "x"), (0, 1, 5)]:
        with pytest.raises(InputError):
            TextEvent(*args)


def test_events_from_pairs() -> None:
    events = events_from_pairs([(1.5, "flash"), (2.0, 4.0, "span"), [5, "list ok"]])
    assert events == [
        TextEvent(1.5, 1.5, "flash"),
        TextEvent(2.0, 4.0, "span"),
        TextEvent(5.0, 5.0, "list ok"),
    ]
    with pytest.raises(InputError, match="item 0"):
        events_from_pairs([(1.0,)])
    with pytest.raises(InputError, match="item 1"):
        events_from_pairs([(1.0, "ok"), (-2.0, "negative")])


def test_format_and_write_srt_round_trip(tmp_path: Path) -> None:
    events = parse_srt(SRT)
    text = format_srt(events)
    assert text.startswith("1\n00:00:01,000 --> 00:00:02,500\nHello there, general Kenobi.\n\n2\n")
    assert "01:02:03,004 --> 01:02:05,000" in text
    assert parse_srt(text) == events
    path = tmp_path / "out.srt"
    write_srt(events, path)
    assert load_subtitles(path) == events
    assert format_srt([]) == ""


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 10_000_000),
            st.integers(0, 100_000),
            st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), min_size=1).filter(
                lambda s: s.strip() and "<" not in s and "{" not in s and "-->" not in s
            ),
        ),
        max_size=5,
    )
)
def test_srt_round_trip_property(items: list[tuple[int, int, str]]) -> None:
    events = [TextEvent(s / 1000, (s + d) / 1000, " ".join(t.split())) for s, d, t in items]
    assert parse_srt(format_srt(events)) == events
