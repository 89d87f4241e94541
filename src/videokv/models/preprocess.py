"""The official video preprocessing of Qwen2-VL / Qwen2.5-VL and LLaVA-OneVision (whose fixed-size resize and
normalisation InternVL's video processor shares), without torchvision. Qwen3-VL's variant (a whole-video pixel
budget) lives beside its adapter, in `videokv.models.qwen3_vl`.

transformers 5.24 preprocesses videos with torchvision-backed processors (`Qwen2VLVideoProcessor`, also
used by
Qwen2.5-VL, and `LlavaOnevisionVideoProcessor`). torchvision cannot be installed next to the CPU build of
torch
this project uses, so this module replicates exactly what those processors do to a uint8 RGB video on the CPU:

1. frames [T, H, W, 3] uint8 -> [T, 3, H, W] (their `_prepare_input_videos`; RGB input needs no conversion);
2. resize with torchvision's `resize(uint8, size, BICUBIC, antialias=True)`. On the CPU torchvision 0.29 feeds
   uint8 straight to `torch.nn.functional.interpolate(mode="bicubic", align_corners=False, antialias=True)`
   (`_do_native_uint8_resize_on_cpu` is true for BICUBIC; `transforms/v2/functional/_geometry.py`), so the
   result is the integer-weighted uint8 kernel of torch, not a float resize rounded afterwards. (On a CUDA
   device torchvision casts to float32, resizes, clamps and rounds instead: the official processor run with
   `device="cuda"` can differ from its CPU result by one uint8 step. The CPU result is the reference.)
   A resize to the frame's own size is skipped, as torchvision does;
3. the fused rescale + normalise of `TorchvisionBackend.rescale_and_normalize`: float32
   `(x - mean / rescale_factor) / (std / rescale_factor)` with mean and std as float32 tensors;
4. Qwen only: `smart_resize` to multiples of patch_size * merge_size within [min_pixels, max_pixels], and the
   patchify of `Qwen2VLVideoProcessor.patchify` (an odd frame count is padded by repeating the last frame).

`cap_pixels_per_frame` is left False (the processor's current default): with it, the per-frame pixel budget
depends on the video's total frame count, which a stream does not know while it is arriving.

Because every step before the patchify acts frame by frame and a temporal patch holds consecutive frames, the
official output for a whole video equals the concatenation of the outputs for consecutive even-length chunks
of it (the last chunk may be odd): a stream can be preprocessed chunk by chunk.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from videokv.errors import ConfigError, InputError

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "LlavaVideoPreprocessor",
    "QwenVideoPreprocessor",
    "VIDEO_CONFIG_FILES",
    "load_video_preprocessor",
    "smart_resize",
]

# transformers.image_utils.OPENAI_CLIP_MEAN / OPENAI_CLIP_STD (the processors' class defaults)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Qwen2VLVideoProcessor.size: used only where a config gives neither `size` nor min_pixels / max_pixels
_QWEN_DEFAULT_MIN_PIXELS = 128 * 28 * 28
_QWEN_DEFAULT_MAX_PIXELS = 28 * 28 * 768

# PIL resampling codes -> torch interpolate modes (transformers' pil_torch_interpolation_mapping,
# restricted to
# the modes whose uint8 CPU path in torchvision is torch's native uint8 kernel, so the result is reproducible)
_PIL_NEAREST, _PIL_BILINEAR, _PIL_BICUBIC = 0, 2, 3
_RESAMPLE_MODES = {_PIL_NEAREST: "nearest-exact", _PIL_BILINEAR: "bilinear", _PIL_BICUBIC: "bicubic"}

# where AutoVideoProcessor.from_pretrained (transformers 5.24, BaseVideoProcessor.get_video_processor_dict)
# looks,
# in its order of priority: the "video_processor" entry of processor_config.json, then
# video_preprocessor_config.json, then preprocessor_config.json (the image processor's file of older
# checkpoints)
VIDEO_CONFIG_FILES = ("processor_config.json", "video_preprocessor_config.json", "preprocessor_config.json")


def smart_resize(
    height: int, width: int, factor: int = 28, min_pixels: int = 56 * 56, max_pixels: int = 14 * 14 * 4 * 1280
) -> tuple[int, int]:
    """transformers' Qwen2-VL `smart_resize`: the size, multiples of `factor`, within [min_pixels, max_pixe"
    "ls]."""
    if min(height, width) <= 0:
        raise InputError(f"frame size must be positive, got {height}x{width}")
    if max(height, width) / min(height, width) > 200:
        raise InputError(
            f"absolute aspect ratio must be smaller than 200, got {max(height, width) / min(height, width)}"
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def _as_frames(frames: np.ndarray) -> torch.Tensor:
    """uint8 [T, H, W, 3] (numpy or torch) -> contiguous uint8 [T, 3, H, W]."""
    if isinstance(frames, torch.Tensor):
        frames = frames.cpu().numpy()
    if not isinstance(frames, np.ndarray):
        raise InputError(f"frames must be a numpy array, got {type(frames).__name__}")
    if frames.dtype != np.uint8:
        raise InputError(f"frames must be uint8, got {frames.dtype}")
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise InputError(f"frames must have shape [T, H, W, 3] with T >= 1, got {tuple(frames.shape)}")
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).contiguous()


def _resize(video: torch.Tensor, size: tuple[int, int], resample: int) -> torch.Tensor:
    """torchvision v2 `resize_image(uint8, size, interpolation, antialias=True)` on the CPU, for [T, 3, H, "
    "W]."""
    if tuple(video.shape[-2:]) == tuple(size):
        return video  # torchvision returns the input unchanged
    mode = _RESAMPLE_MODES[resample]
    if mode == "nearest-exact":
        return F.interpolate(video, size=list(size), mode=mode)
    native = mode == "bicubic" or torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
    if not native:  # torchvision's bilinear float path on CPUs without AVX2
        out = F.interpolate(video.float(), size=list(size), mode=mode, align_corners=False, antialias=True)
        return out.round_().to(torch.uint8)
    return F.interpolate(video, size=list(size), mode=mode, align_corners=False, antialias=True)


def _rescale_and_normalize(
    video: torch.Tensor,
    do_rescale: bool,
    rescale_factor: float,
    do_normalize: bool,
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> torch.Tensor:
    """TorchvisionBackend.rescale_and_normalize (fused when both are on), float32 out."""
    if do_rescale and do_normalize:
        mean_t = torch.tensor(mean) * (1.0 / rescale_factor)
        std_t = torch.tensor(std) * (1.0 / rescale_factor)
    else:
        mean_t, std_t = torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
    if do_normalize:
        out = video.to(torch.float32)
        return out.sub_(mean_t.view(-1, 1, 1)).div_(std_t.view(-1, 1, 1))
    if do_rescale:
        return video * rescale_factor
    return video.to(torch.float32)  # the official processor would leave uint8 here


def _check_resample(resample: object) -> int:
    if resample not in _RESAMPLE_MODES:
        raise ConfigError(
            f"resample={resample!r} is not supported; use 3 (bicubic, what the checkpoints use), 2 (bilinear)"
            " or 0 (nearest)"
        )
    return int(resample)


def _triple(value: object, name: str) -> tuple[float, float, float]:
    if isinstance(value, (int, float)):
        value = [value] * 3
    try:
        out = tuple(float(v) for v in value)  # type: ignore[union-attr]
    except TypeError as exc:
        raise ConfigError(f"{name} must be a number or three numbers, got {value!r}") from exc
    if len(out) != 3:
        raise ConfigError(f"{name} must have three values (R, G, B), got {value!r}")
    return out  # type: ignore[return-value]


def _flags(d: dict) -> dict:
    return {k: bool(d[k]) for k in ("do_resize", "do_rescale", "do_normalize") if d.get(k) is not None}


@dataclass(frozen=True)
class QwenVideoPreprocessor:
    """transformers' `Qwen2VLVideoProcessor` (Qwen2-VL and Qwen2.5-VL) applied to one video or one chunk."""

    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    min_pixels: int = _QWEN_DEFAULT_MIN_PIXELS  # the processor's size["shortest_edge"]
    max_pixels: int = _QWEN_DEFAULT_MAX_PIXELS  # the processor's size["longest_edge"]
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD
    rescale_factor: float = 1 / 255
    resample: int = _PIL_BICUBIC
    do_resize: bool = True
    do_rescale: bool = True
    do_normalize: bool = True

    def __post_init__(self) -> None:
        for name in ("patch_size", "temporal_patch_size", "merge_size", "min_pixels", "max_pixels"):
            if int(getattr(self, name)) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        _check_resample(self.resample)

    @classmethod
    def from_dict(cls, d: dict) -> QwenVideoPreprocessor:
        """From a video (or image) processor config dict, read as `Qwen2VLVideoProcessor.__init__` reads it:
        `size` = {shortest_edge, longest_edge}, overridden by top-level min_pixels / max_pixels."""
        size = d.get("size")
        size = (
            dict(size)
            if size is not None
            else {"shortest_edge": _QWEN_DEFAULT_MIN_PIXELS, "longest_edge": _QWEN_DEFAULT_MAX_PIXELS}
        )
        if d.get("min_pixels") is not None:
            size["shortest_edge"] = d["min_pixels"]
        if d.get("max_pixels") is not None:
            size["longest_edge"] = d["max_pixels"]
        if not size.get("shortest_edge") or not size.get("longest_edge"):
            raise ConfigError(f"`size` must contain 'shortest_edge' and 'longest_edge' keys but got {size}")
        kwargs = dict(
            min_pixels=int(size["shortest_edge"]), max_pixels=int(size["longest_edge"]), **_flags(d)
        )
        for key in ("patch_size", "temporal_patch_size", "merge_size"):
            if d.get(key) is not None:
                kwargs[key] = int(d[key])
        if d.get("image_mean") is not None:
            kwargs["image_mean"] = _triple(d["image_mean"], "image_mean")
        if d.get("image_std") is not None:
            kwargs["image_std"] = _triple(d["image_std"], "image_std")
        if d.get("rescale_factor") is not None:
            kwargs["rescale_factor"] = float(d["rescale_factor"])
        if d.get("resample") is not None:
            kwargs["resample"] = _check_resample(d["resample"])
        return cls(**kwargs)

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size

    def with_max_tokens(self, tokens: int) -> QwenVideoPreprocessor:
        """The same preprocessing with at most `tokens` merged tokens per temporal patch (--frame-tokens)."""
        if tokens <= 0:
            raise ConfigError(f"frame tokens must be positive, got {tokens}")
        return dataclasses.replace(self, max_pixels=int(tokens) * self.factor**2)

    def target_size(self, height: int, width: int) -> tuple[int, int]:
        """The (height, width) a frame of this size is resized to."""
        if not self.do_resize:
            return height, width
        return smart_resize(height, width, self.factor, self.min_pixels, self.max_pixels)

    def tokens_per_temporal_patch(self, height: int, width: int) -> int:
        th, tw = self.target_size(height, width)
        return (th // self.patch_size) * (tw // self.patch_size) // self.merge_size**2

    def __call__(self, frames: np.ndarray) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """uint8 [T, H, W, 3] -> (pixel_values_videos [gt*gh*gw, 3*tp*p*p] float32, (gt, gh, gw))."""
        video = _as_frames(frames)
        height, width = video.shape[-2:]
        th, tw = self.target_size(height, width)
        if th % self.factor or tw % self.factor:
            raise InputError(
                f"frames of {height}x{width} are not multiples of {self.factor} and do_resize is off"
            )
        if self.do_resize:
            video = _resize(video, (th, tw), self.resample)
        video = _rescale_and_normalize(
            video, self.do_rescale, self.rescale_factor, self.do_normalize, self.image_mean, self.image_std
        )
        tp, p, m = self.temporal_patch_size, self.patch_size, self.merge_size
        if pad := -video.shape[0] % tp:
            video = torch.cat((video, video[-1:].expand(pad, -1, -1, -1)), dim=0)
        channels = video.shape[1]
        gt, gh, gw = video.shape[0] // tp, th // p, tw // p
        patches = video.reshape(1, gt, tp, channels, gh // m, m, p, gw // m, m, p)
        patches = patches.permute(0, 1, 4, 7, 5, 8, 3, 2, 6, 9)
        return patches.reshape(gt * gh * gw, channels * tp * p * p), (gt, gh, gw)


@dataclass(frozen=True)
class LlavaVideoPreprocessor:
    """transformers' `LlavaOnevisionVideoProcessor`: each frame resized to (height, width) and normalised."""

    height: int = 384
    width: int = 384
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD
    rescale_factor: float = 1 / 255
    resample: int = _PIL_BICUBIC
    do_resize: bool = True
    do_rescale: bool = True
    do_normalize: bool = True

    def __post_init__(self) -> None:
        if self.height <= 0 or self.width <= 0:
            raise ConfigError(f"size must be positive, got {self.height}x{self.width}")
        _check_resample(self.resample)

    @classmethod
    def from_dict(cls, d: dict) -> LlavaVideoPreprocessor:
        """From a video (or image) processor config dict; `size` must be {height, width} (the checkpoints')"
        "."""
        size = d.get("size") or {"height": 384, "width": 384}
        if not isinstance(size, dict) or not size.get("height") or not size.get("width"):
            raise ConfigError(f"LLaVA-OneVision video size must be {{'height': H, 'width': W}}, got {size!r}")
        if d.get("do_center_crop"):
            raise ConfigError("do_center_crop is not supported (no LLaVA-OneVision checkpoint uses it)")
        kwargs = dict(height=int(size["height"]), width=int(size["width"]), **_flags(d))
        if d.get("image_mean") is not None:
            kwargs["image_mean"] = _triple(d["image_mean"], "image_mean")
        if d.get("image_std") is not None:
            kwargs["image_std"] = _triple(d["image_std"], "image_std")
        if d.get("rescale_factor") is not None:
            kwargs["rescale_factor"] = float(d["rescale_factor"])
        if d.get("resample") is not None:
            kwargs["resample"] = _check_resample(d["resample"])
        return cls(**kwargs)

    def check_tower(self, height: int, width: int) -> None:
        """A ConfigError unless frames are resized to what the vision tower takes (height x width)."""
        if (self.height, self.width) != (height, width):
            raise ConfigError(
                f"the video processor resizes frames to {self.height}x{self.width} but the model's vision "
                f"tower takes {height}x{width}: the processor config does not belong to this checkpoint"
            )

    def __call__(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 [T, H, W, 3] -> [T, 3, height, width] float32 (the official pixel_values_videos[0])."""
        video = _as_frames(frames)
        if self.do_resize:
            video = _resize(video, (self.height, self.width), self.resample)
        return _rescale_and_normalize(
            video, self.do_rescale, self.rescale_factor, self.do_normalize, self.image_mean, self.image_std
        )


def read_video_processor_dict(folder: str | Path) -> tuple[dict, Path]:
    """The video processor settings of a checkpoint folder, found where transformers 5.24 finds them."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"checkpoint folder {folder} does not exist or is not a folder")

    def load(path: Path) -> dict:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path} does not hold a JSON object")
        return data

    nested = folder / VIDEO_CONFIG_FILES[0]
    if nested.is_file():
        entry = load(nested).get("video_processor")
        if isinstance(entry, dict):
            return entry, nested
    for name in VIDEO_CONFIG_FILES[1:]:
        path = folder / name
        if path.is_file():
            return load(path), path
    raise ConfigError(
        f"no video processor settings in {folder}: looked for processor_config.json with a 'video_processor'"
        f" entry, then video_preprocessor_config.json, then preprocessor_config.json"
    )


def load_video_preprocessor(folder: str | Path, family: str | type):
    """The preprocessor `AutoVideoProcessor.from_pretrained(folder)` would build, for `family`: a model_type
    videokv supports (its adapter's `preprocessor_class`) or a preprocessor class."""
    if isinstance(family, str):
        from videokv.models.registry import ADAPTERS

        if family not in ADAPTERS:
            raise ConfigError(f"unknown model family {family!r}; choose one of {', '.join(ADAPTERS)}")
        family = ADAPTERS[family].preprocessor_class
    settings, _ = read_video_processor_dict(folder)
    return family.from_dict(settings)
