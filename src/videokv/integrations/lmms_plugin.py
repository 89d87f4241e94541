"""The `lmms_eval.models` entry point: tells lmms-eval (>= 0.7) where the `videokv` model class lives.

Registered in pyproject.toml, so `lmms-eval --model videokv` works wherever videokv and lmms-eval are
installed together (`make lmms`). Kept apart from `lmms_eval.py` so that listing models stays cheap.
"""

from __future__ import annotations


def manifest():
    """The ModelManifest of the `videokv` model (a simple, non-chat model in lmms-eval's terms)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="videokv", simple_class_path="videokv.integrations.lmms_eval.VideoKV")
