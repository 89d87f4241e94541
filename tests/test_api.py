"""The public API on real files: ingest from video + subtitles, and bad input that must lose nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import get_tiny, random_frames
from videokv import VideoQA
from videokv.errors import ConfigError, InputError, SubtitleError, VideoError
from videokv.video.decode import find_sample_clip, write_video
from videokv.video.subtitles import TextEvent, write_srt


@pytest.fixture
def session():
    return VideoQA.from_model(*get_tiny("llava_onevision")).session()


def state(s) -> tuple:
    e = s.engine
    return (e.cache.lengths(), e.cursor, [b for b in e.blocks], e.clock, e.frames_ingested)


def test_add_video_interleaves_subtitles_by_time(session, tmp_path):
    srt = tmp_path / "s.srt"
    write_srt([TextEvent(2.5, 3.0, "a red umbrella"), TextEvent(0.0, 1.0, "hello")], srt)
    added = session.add_video(find_sample_clip(), fps=0.5, subtitles=srt)
    kinds = [(b.kind, round(b.t0, 1)) for b in session.engine.blocks]
    assert added == 7
    assert kinds == [
        ("text", 0.0),
        ("frame", 0.0),
        ("frame", 2.0),
        ("text", 2.5),
        ("frame", 4.0),
        ("frame", 6.0),
        ("frame", 8.0),
    ]
    assert session.clock == pytest.approx(10.0)
    # a second video continues the stream clock
    session.add_video(find_sample_clip(), fps=0.5, end=4.0)
    assert [round(b.t0, 1) for b in session.engine.blocks[-2:]] == [10.0, 12.0]


def test_text_events(session):
    session.add_text("first line", t=1.0)
    session.add_text([(2.0, "second"), (3.0, 4.0, "third"), TextEvent(5.0, 6.0, "fourth")])
    assert [b.text.strip() for b in session.engine.blocks] == [
        "[1.0s] first line",
        "[2.0s] second",
        "[3.0s] third",
        "[5.0s] fourth",
    ]
    with pytest.raises(InputError):
        session.add_text([(1.0, "  ")])


@pytest.fixture
def broken_videos(tmp_path):
    """A missing path, a text file named .mp4, and an mp4 that breaks off in the middle of decoding."""
    not_video = tmp_path / "notes.mp4"
    not_video.write_text("not a video\n" * 50)
    good = tmp_path / "good.mp4"
    write_video(good, random_frames(50, 64, 96, seed=1), fps=5.0)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(data[: int(len(data) * 0.6)])
    return {"missing": tmp_path / "missing.mp4", "not_video": not_video, "truncated": truncated}


@pytest.mark.parametrize("which", ["missing", "not_video", "truncated"])
def test_bad_video_leaves_memory_unchanged(session, broken_videos, which):
    session.add_frames(random_frames(2))
    session.add_text("kept", t=2.0)
    before = state(session)
    with pytest.raises(VideoError) as info:
        session.add_video(broken_videos[which], fps=2.0, chunk_frames=2)
    assert str(broken_videos[which]) in str(info.value)
    assert state(session) == before
    assert session.ask("what is kept?", max_new_tokens=2).stats["blocks"] == 3


def test_bad_frames_and_subtitles_leave_memory_unchanged(session, tmp_path):
    session.add_frames(random_frames(2))
    before = state(session)
    with pytest.raises(InputError, match="shape"):
        session.add_frames(np.zeros((3, 56, 56, 4), dtype=np.uint8))
    with pytest.raises(InputError):
        session.add_frames([random_frames(1)[0], random_frames(1, 28, 28)[0]])
    bad_srt = tmp_path / "bad.srt"
    bad_srt.write_text("1\n00:00:01,000 --> nonsense\nhello\n")
    with pytest.raises(SubtitleError, match="line 2"):
        session.add_video(find_sample_clip(), subtitles=bad_srt)
    with pytest.raises(ConfigError, match="unknown memory preset"):
        VideoQA.from_model(*get_tiny("qwen2_vl"), memory="nope")
    assert state(session) == before


@pytest.mark.parametrize("fam", ["qwen2_vl", "qwen2_5_vl", "llava_onevision"])
def test_loglikelihood_equals_a_direct_forward_with_full(fam):
    """`Session.loglikelihood` with `full`: the summed log-probabilities of the continuation's tokens after
    the question equal those of one HF forward over header + stream + question + continuation."""
    from tests.test_engine import QUESTION, reference_forward, stream_items

    model, tok = get_tiny(fam)
    qa = VideoQA.from_model(model, tok, memory="full")
    items = stream_items(4, (0,))
    session = qa.session()
    session.engine.trace = []
    session.engine.ingest(items, chunk_frames=2)
    before = session.stats
    continuation = "the umbrella is red"
    cont_ids = qa.adapter.tokenize(continuation)
    logprob, greedy = session.loglikelihood(QUESTION, continuation)
    logits, _ = reference_forward(session, items, QUESTION, cont_ids)
    before_cont = logits[-len(cont_ids) - 1 : -1]
    ref = before_cont.log_softmax(-1)[torch.arange(len(cont_ids)), torch.tensor(cont_ids)].sum()
    assert logprob == pytest.approx(float(ref), abs=1e-3)
    assert greedy == bool((before_cont.argmax(-1) == torch.tensor(cont_ids)).all())
    assert session.stats == before  # scoring never enters the memory


@pytest.mark.parametrize("memory", ["full", "rekv"])
def test_loglikelihood_of_the_greedy_answer_is_what_ask_generated(memory):
    """Over the memory `ask` answers from (retrieval included), the greedy answer scores as greedy, with
    the sum of the log-probabilities `ask` reported for its tokens; another continuation is not greedy."""
    session = VideoQA.from_model(*get_tiny("qwen2_vl"), memory=memory).session()
    session.add_frames(random_frames(8), fps=1.0)
    session.add_text("a red umbrella", t=3.0)
    session.add_frames(random_frames(4, seed=1), fps=1.0)
    answer = session.ask("what colour?", max_new_tokens=3, logprobs=1)
    ids = [s["token_id"] for s in answer.logprobs[:3]]
    eos = set(session.engine.adapter.eos_token_ids)
    ids = ids[: next((i for i, t in enumerate(ids) if t in eos), len(ids))]
    assert ids, "the tiny model ended at once; pick another seed"
    text = session.engine.adapter.tokenizer.decode(ids)
    assert session.engine.adapter.tokenize(text) == ids
    logprob, greedy = session.loglikelihood("what colour?", text)
    assert greedy
    assert logprob == pytest.approx(sum(s["logprob"] for s in answer.logprobs[: len(ids)]), abs=1e-4)
    other = next(t for t in range(300, 400) if t != ids[0])
    _, greedy = session.loglikelihood("what colour?", session.engine.adapter.tokenizer.decode([other]))
    assert not greedy


def test_loglikelihood_bad_input_and_empty_context(session):
    with pytest.raises(InputError, match="continuation is empty"):
        session.loglikelihood("what?", "")
    logprob, _ = session.loglikelihood("", "red")  # lmms-eval asks unconditional scores with no context
    assert logprob < 0


# ---- checks that need no stream (issue 35, items 2 and 3) -----------------------------------------------
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"question": ""}, "empty"),
        ({"choices": ["yes"]}, "at least two"),
        ({"choices": ["yes", ""]}, "non-empty"),
        ({"choices": "yes no"}, "list"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"logprobs": 21}, "logprobs"),
    ],
)
def test_check_question_refuses_what_ask_refuses(session, kwargs, message):
    """`check_question` (run before ingest by the CLI and the service) refuses exactly what `ask` would."""
    from videokv.api import check_question

    kwargs = {"question": "q?", **kwargs}
    with pytest.raises(InputError, match=message):
        check_question(**kwargs)
    session.add_text("a line", t=0.0)
    with pytest.raises(InputError):
        session.ask(**kwargs)
    check_question("q?", ["yes", "no"], 8, 2)  # a good one passes


def test_from_pretrained_checks_the_memory_before_loading(monkeypatch):
    import videokv.api as api

    monkeypatch.setattr(api, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(ConfigError, match="unknown memory preset"):
        VideoQA.from_pretrained("tiny-qwen2_vl", memory="nope")
    with pytest.raises(ConfigError, match="unknown memory parameter"):
        VideoQA.from_pretrained("tiny-qwen2_vl", memory="rekv", memory_set=["colour=red"])
