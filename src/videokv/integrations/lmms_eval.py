"""videokv as an lmms-eval model: `lmms-eval --model videokv --model_args pretrained=...,memory=...`.

Each video a task gives (through its `doc_to_visual`) is streamed once through a videokv `Session` at
`fps`, into the memory configuration `memory`; every question about that video is then asked over that
memory (requests are grouped by video, so one session serves all of a video's questions, and the answers
come back in lmms-eval's order). `generate_until` answers with `Session.ask` (greedy) and cuts the text at
the task's stop strings; `loglikelihood` scores with `Session.loglikelihood`, over the memory exactly as an
answer would be, and gives lmms-eval -log P(continuation) (its multiple-choice scoring takes the lowest, as
its own models return a loss). Only the public API (videokv.api) is used.

Model args (comma separated, as lmms-eval passes them):
  pretrained    a checkpoint folder, a hub id where a hub is reachable, "offline", or "tiny-qwen2_vl"
  memory        a preset name (`videokv presets`); default "full"
  memory_set    overrides of the preset, `key=value` pairs separated by ";" (e.g. retrieve.k=8;...)
  fps           frames per second sampled from each video (default 1)
  frame_tokens  Qwen2-VL / Qwen2.5-VL / Qwen3-VL: cap on visual tokens per temporal patch
  max_frames    at most this many frames per video: the fps is lowered for longer videos (default: none)
  dtype         float32 | bfloat16 | float16 (default: the checkpoint's own)
  system        a system prompt (default: the chat template's own)
  max_new_tokens  default answer length when the task's generation_kwargs give none (default 64)

Visual inputs: a video path (str); a subtitle file (.srt / .vtt) right after a video is streamed
interleaved with it by time (timed text is memory); PIL images are streamed as frames at `fps`. Greedy
decoding only: a task's sampling settings (temperature, top_p, ...) are ignored, with a warning.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lmms_eval.api.instance import GenerationResult, Instance
from lmms_eval.api.model import lmms
from loguru import logger
from tqdm import tqdm

from videokv.api import Session, VideoQA
from videokv.errors import InputError
from videokv.video.decode import probe

SUBTITLE_SUFFIXES = (".srt", ".vtt")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SAMPLING_KEYS = ("temperature", "top_p", "top_k", "do_sample", "num_beams")


class VideoKV(lmms):
    """lmms-eval model: a videokv `VideoQA`, one streamed `Session` per video (see the module docstring)."""

    is_simple = True

    def __init__(
        self,
        pretrained: str = "offline",
        memory: str = "full",
        memory_set: str | None = None,
        fps: float = 1.0,
        frame_tokens: int | None = None,
        max_frames: int | None = None,
        dtype: str | None = None,
        system: str | None = None,
        max_new_tokens: int = 64,
        device: str | None = None,
        batch_size: int | str | None = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        unknown = {k: v for k, v in kwargs.items() if v is not None and k not in ("max_batch_size",)}
        if unknown:
            raise ValueError(
                f"videokv: unknown model args {sorted(unknown)}; known: pretrained, memory, memory_set, fps, "
                "frame_tokens, max_frames, dtype, system, max_new_tokens"
            )
        if dtype is not None and dtype not in DTYPES:
            raise ValueError(f"videokv: dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
        if not float(fps) > 0:
            raise ValueError(f"videokv: fps must be > 0; got {fps}")
        if max_frames is not None and int(max_frames) < 1:
            raise ValueError(f"videokv: max_frames must be >= 1; got {max_frames}")
        self.memory_set = [s for s in (memory_set or "").split(";") if s.strip()]
        extra = {} if system is None else {"system": system}
        self.qa = VideoQA.from_pretrained(
            str(pretrained),
            dtype=DTYPES.get(dtype) if dtype else None,
            device=device if device and device != "auto" else None,
            memory=str(memory),
            memory_set=self.memory_set or None,
            frame_tokens=None if frame_tokens is None else int(frame_tokens),
            **extra,
        )
        self.fps = float(fps)
        self.max_frames = None if max_frames is None else int(max_frames)
        self.max_new_tokens = int(max_new_tokens)
        self._warned_sampling = False

    # ---- one session per video -------------------------------------------------------------------------
    def visuals(self, request: Instance) -> list:
        """The visual inputs of a request's document (its task's `doc_to_visual`); [] when it has none."""
        args = request.args
        if len(args) < 6:  # an unconditional loglikelihood request: ("", continuation)
            return []
        doc_to_visual, doc_id, task, split = args[2], args[3], args[4], args[5]
        if doc_to_visual is None:
            return []
        visual = doc_to_visual(self.task_dict[task][split][doc_id])
        if visual is None:
            return []
        return list(visual) if isinstance(visual, list | tuple) else [visual]

    @staticmethod
    def video_key(visuals: list, request: Instance) -> tuple:
        """Requests with the same key share one session: the same video files (paths), or the same doc."""
        if all(isinstance(v, str | Path) for v in visuals):
            return tuple(str(v) for v in visuals)
        return ("doc", request.task_name, request.doc_id)

    def open_session(self, visuals: list) -> Session:
        """A new session with every visual input streamed into it, in order."""
        session = self.qa.session(fps=self.fps)
        frames: list = []
        i = 0
        while i < len(visuals):
            v = visuals[i]
            if isinstance(v, str | Path) and str(v).lower().endswith(SUBTITLE_SUFFIXES):
                raise InputError(f"videokv: the subtitle file {v} does not follow a video in the visual list")
            if isinstance(v, str | Path):
                subs = None
                if i + 1 < len(visuals) and str(visuals[i + 1]).lower().endswith(SUBTITLE_SUFFIXES):
                    subs = visuals[i + 1]
                    i += 1
                session.add_video(v, fps=self.video_fps(v), subtitles=subs)
            elif hasattr(v, "convert"):  # a PIL image: a frame
                frames.append(v.convert("RGB"))
            else:
                raise InputError(f"videokv: unsupported visual input of type {type(v).__name__}")
            i += 1
        if frames:
            session.add_frames(frames, fps=self.fps)
        return session

    def video_fps(self, path: str | Path) -> float:
        """`fps`, lowered so that a video gives at most `max_frames` frames."""
        if self.max_frames is None:
            return self.fps
        duration = probe(path).duration
        if duration * self.fps <= self.max_frames:
            return self.fps
        return self.max_frames / math.ceil(duration)

    def by_video(
        self, requests: list[Instance], answer: Callable[[Session, Instance], Any], desc: str
    ) -> list:
        """Run `answer(session, request)` for every request, one session per video, in request order."""
        groups: dict[tuple, list[int]] = {}
        visuals: dict[tuple, list] = {}
        for i, req in enumerate(requests):
            v = self.visuals(req)
            key = self.video_key(v, req)
            groups.setdefault(key, []).append(i)
            visuals.setdefault(key, v)
        results: list = [None] * len(requests)
        with tqdm(total=len(requests), disable=self.rank != 0, desc=desc) as bar:
            for key, indices in groups.items():
                session = self.open_session(visuals[key])
                for i in indices:
                    results[i] = answer(session, requests[i])
                    bar.update(1)
                del session
        return results

    # ---- lmms-eval's request types ---------------------------------------------------------------------
    def generate_until(self, requests: list[Instance]) -> list[str]:
        return self.by_video(requests, self._generate, "videokv answering")

    def _generate(self, session: Session, request: Instance) -> str:
        context, gen_kwargs = request.args[0], dict(request.args[1] or {})
        until = gen_kwargs.pop("until", None)
        until = [until] if isinstance(until, str) else list(until or [])
        max_new = int(gen_kwargs.pop("max_new_tokens", None) or self.max_new_tokens)
        sampling = {k: gen_kwargs[k] for k in SAMPLING_KEYS if gen_kwargs.get(k) not in (None, 0, 1, False)}
        if sampling and not self._warned_sampling:
            logger.warning(f"videokv decodes greedily; ignoring the task's sampling settings {sampling}")
            self._warned_sampling = True
        text = session.ask(context, max_new_tokens=max_new).text
        return cut_at_stops(text, until)

    def loglikelihood(self, requests: list[Instance]) -> list[GenerationResult]:
        # lmms-eval 0.7.3's evaluator turns every response that is not a string or a GenerationResult into
        # its str() (`unwrap_generation_output`), which breaks the (logprob, is_greedy) pairs its own
        # multiple_choice scoring unpacks; a GenerationResult carries the pair through untouched.
        pairs = self.by_video(requests, self._loglikelihood, "videokv scoring")
        return [GenerationResult(text=pair) for pair in pairs]

    def _loglikelihood(self, session: Session, request: Instance) -> tuple[float, bool]:
        """(-log P(continuation | context), is_greedy). lmms-eval 0.7.3's multiple_choice scoring takes the
        argmin of the first element ("we return the actual loss"; its own models return a loss), so the
        negated log-probability is given: the most likely option wins, and acc_norm divides it by the
        option's length as lm-eval's does."""
        context, target = request.args[0], request.args[1]
        if callable(target):  # a `loglikelihood` task passes its doc_to_target
            doc_id, task, split = request.args[3], request.args[4], request.args[5]
            target = target(self.task_dict[task][split][doc_id])
        logprob, greedy = session.loglikelihood(context, str(target))
        return -logprob, greedy

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError(
            "videokv: multi-round generation is not supported; use generate_until tasks"
        )


def cut_at_stops(text: str, until: list[str]) -> str:
    """`text` up to the first of the stop strings (lmms-eval's `until`)."""
    for stop in until:
        if stop:
            text = text.split(stop, 1)[0]
    return text
