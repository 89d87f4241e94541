"""Invariant 1 against the outside: a checkpoint folder saved by the real `save_pretrained` of the model and
of its official processor, loaded with `VideoQA.from_pretrained`, streamed with the `full` memory in chunks of
1, 2 or 3 frames, is fed exactly the token ids and position ids the official processor + chat template +
`get_rope_index` give for one user turn [video, question], and answers with the first-token logits of HF's
forward on the processor's output (fixtures written by tools/parity_fixtures.py in the reference
environment, with torchvision and the official processors)."""

from __future__ import annotations

import pytest
import torch

from tests.models.test_preprocess import CASES, FIXTURES, _case
from videokv import PRESETS, VideoQA
from videokv.engine import Frame
from videokv.errors import ConfigError
from videokv.video.subtitles import TextEvent

_QA: dict = {}


def qa_for(family: str) -> VideoQA:
    if family not in _QA:
        _QA[family] = VideoQA.from_pretrained(str(FIXTURES / family / "checkpoint"), memory="full")
    return _QA[family]


def stream_of(meta: dict, videos: list) -> list:
    """The case's content as a stream: each video's frames at their times, the text parts between videos as
    timed text at the next video's first frame time (videokv writes an event as `[12.0s] text`)."""
    items: list = []
    texts = [part["text"] for part in meta["messages"][-1]["content"] if part["type"] == "text"]
    for i, (video, frames) in enumerate(zip(meta["videos"], videos)):
        if i:
            t = video["frame_times"][0]
            assert texts[i - 1].startswith(f"[{t:.1f}s] ")  # the fixture's text is videokv's event format
            items.append(TextEvent(t, t, texts[i - 1][len(f"[{t:.1f}s] ") :].rstrip("\n")))
        items += [Frame(t, f) for t, f in zip(video["frame_times"], frames)]
    return items, texts[-1]


def streamed(family: str, case: str, chunk_frames: int):
    """Stream a fixture case through `full` in chunks: (session, question, ids fed, positions fed)."""
    meta, _, videos, _ = _case(family, case)
    session = qa_for(family).session(fps=meta["fps"])
    eng = session.engine
    eng.trace = []
    items, question = stream_of(meta, videos)
    session.add_items(items, chunk_frames=chunk_frames)
    pieces = eng.trace + eng.question_pieces(question)
    ids = eng.header_ids + [i for p in pieces for i in p.token_ids]
    header = torch.arange(len(eng.header_ids)).expand(eng.adapter.rope_rows, -1)
    positions = torch.cat([header, *(p.positions for p in pieces)], dim=1)
    return session, question, ids, positions


@pytest.mark.parametrize("chunk_frames", [1, 2, 3])
@pytest.mark.parametrize("family,case", CASES)
def test_stream_equals_official_processor(family, case, chunk_frames):
    _, tensors, _, _ = _case(family, case)
    session, question, ids, positions = streamed(family, case, chunk_frames)
    eng = session.engine
    assert ids == tensors["input_ids"][0].tolist()
    if "position_ids" in tensors:  # Qwen families: M-RoPE positions as get_rope_index gives them
        assert torch.equal(positions, tensors["position_ids"][:, 0])
    else:  # 1-D RoPE: HF's forward numbers the processor's tokens 0, 1, 2, ...
        assert torch.equal(positions, torch.arange(len(ids)).unsqueeze(0))
    answer = session.ask(question, max_new_tokens=1, logprobs=5)
    ref = tensors["last_logits"].log_softmax(-1)
    top = ref.topk(5)
    got = answer.logprobs[0]["top"]
    assert [t["token_id"] for t in got] == top.indices.tolist()
    diff = max(abs(t["logprob"] - float(v)) for t, v in zip(got, top.values))
    assert diff < 1e-4
    # the question never entered memory, and the stream continues exactly from where it was
    assert session.engine.cache.lengths()[0] == len(eng.header_ids) + sum(p.n_tokens for p in eng.trace)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl", "qwen3_vl_moe", "llava_onevision", "internvl"])
def test_first_token_logits_equal_hf_forward(family):
    """The whole first-token logit vector, not only its top 5 (fp32, < 1e-4)."""
    meta, tensors, videos, _ = _case(family, "odd5")
    session = qa_for(family).session(fps=meta["fps"])
    items, question = stream_of(meta, videos)
    session.add_items(items, chunk_frames=2)
    eng = session.engine
    pieces = eng.question_pieces(question)
    with torch.no_grad():
        logits = eng.adapter.forward(
            torch.cat([p.embeds for p in pieces]),
            torch.cat([p.positions for p in pieces], dim=1),
            eng.cache.fork(),
        )[-1]
    assert (logits - tensors["last_logits"]).abs().max().item() < 1e-4


def test_template_that_drops_the_video_is_an_error(tmp_path):
    import shutil

    folder = tmp_path / "ckpt"
    shutil.copytree(FIXTURES / "qwen2_vl" / "checkpoint", folder)
    # a text-only ChatML template: list content is not rendered as a video
    (folder / "chat_template.jinja").write_text(
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    with pytest.raises(ConfigError, match="drop or misplace the stream"):
        VideoQA.from_pretrained(str(folder)).session()


def test_checkpoint_without_processor_config_names_the_files(tmp_path):
    import shutil

    folder = tmp_path / "ckpt"
    shutil.copytree(FIXTURES / "llava_onevision" / "checkpoint", folder)
    for name in ("processor_config.json", "preprocessor_config.json", "video_preprocessor_config.json"):
        (folder / name).unlink(missing_ok=True)
    with pytest.raises(ConfigError, match="preprocessor_config.json"):
        VideoQA.from_pretrained(str(folder))


@pytest.mark.parametrize("family,case", CASES)
def test_stream_equals_the_live_official_processor(family, case):
    """Where torchvision is importable (every GPU user's setup; the reference environment here), the same
    comparison against the official processor itself, loaded from the checkpoint folder."""
    pytest.importorskip("torchvision")
    from transformers import AutoProcessor

    meta, _, videos, _ = _case(family, case)
    folder = FIXTURES / family / "checkpoint"
    processor = AutoProcessor.from_pretrained(str(folder))
    prompt = processor.apply_chat_template(meta["messages"], tokenize=False, add_generation_prompt=True)
    official = processor(
        text=[prompt], videos=list(videos), return_tensors="pt", **meta["processor_call_kwargs"]
    )
    _, _, ids, _ = streamed(family, case, 2)
    assert ids == official["input_ids"][0].tolist()


NEW_FAMILIES = ("qwen3_vl", "qwen3_vl_moe", "internvl")


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_every_preset_streams_and_answers_on_the_new_families(family, preset):
    """A checkpoint folder of each new family, loaded with `VideoQA.from_pretrained`, streams a real clip
    with interleaved subtitles under every preset and answers; the question leaves the memory as it was (a
    second ask gives the same log-probabilities), and the evidence lies within the stream."""
    meta, _, videos, _ = _case(family, "interleaved3" if family == "internvl" else "interleaved")
    session = qa_for(family).session(fps=meta["fps"], memory=preset)
    items, question = stream_of(meta, videos)
    session.add_items(items, chunk_frames=2)
    first = session.ask(question, max_new_tokens=2, logprobs=3)
    again = session.ask(question, max_new_tokens=2, logprobs=3)
    assert first.text == again.text
    assert [t["logprob"] for t in first.logprobs[0]["top"]] == [
        t["logprob"] for t in again.logprobs[0]["top"]
    ]
    assert first.evidence, f"{preset} on {family} attended to nothing"
    end = max(t for video in meta["videos"] for t in video["frame_times"]) + 1.0
    assert all(0.0 <= e.t0 <= e.t1 <= end + 1e-6 for e in first.evidence)


def test_an_unsupported_model_type_names_the_supported_ones(tmp_path):
    """A checkpoint of a family videokv has no adapter for (Qwen3.5, hybrid linear attention) is refused
    before any weight is read, naming every supported model_type and where adding one is described."""
    import json
    import shutil

    folder = tmp_path / "ckpt"
    shutil.copytree(FIXTURES / "qwen3_vl" / "checkpoint", folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(dict(config, model_type="qwen3_5")))
    with pytest.raises(ConfigError) as err:
        VideoQA.from_pretrained(str(folder))
    message = str(err.value)
    assert "'qwen3_5' is not supported" in message and "docs/ADAPTERS.md" in message
    for model_type in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "llava_onevision", "internvl"):
        assert model_type in message
    assert [r["model_type"] for r in VideoQA.supported_models()] == [
        "qwen2_vl",
        "qwen2_5_vl",
        "qwen3_vl",
        "qwen3_vl_moe",
        "llava_onevision",
        "internvl",
    ]
