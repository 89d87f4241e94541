"""videokv: long-term KV-cache memory for streaming long-video question answering."""

from videokv.api import Session, VideoQA
from videokv.bench.dataset import load_dataset
from videokv.config import MemoryConfig
from videokv.engine import Frame
from videokv.generation import GenerationOptions
from videokv.presets import PRESETS, get_preset
from videokv.qa import Answer, Evidence
from videokv.video.subtitles import TextEvent

__all__ = [
    "VideoQA",
    "Session",
    "Answer",
    "Evidence",
    "MemoryConfig",
    "PRESETS",
    "get_preset",
    "Frame",
    "GenerationOptions",
    "TextEvent",
    "load_dataset",
]
__version__ = "0.1.0"
