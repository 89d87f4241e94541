"""`videokv models`: the supported model types, as a table and as JSON lines (in a real subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys

from videokv.models.registry import FAMILIES


def _run(*args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "videokv.cli", "models", *args], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_models_lists_every_supported_model_type():
    rows = [json.loads(line) for line in _run("--json").splitlines()]
    assert [r["model_type"] for r in rows] == list(FAMILIES)
    by_type = {r["model_type"]: r for r in rows}
    assert by_type["qwen3_vl_moe"]["class"] == "Qwen3VLMoeForConditionalGeneration"
    assert by_type["internvl"]["positions"] == "1-D" and by_type["qwen3_vl"]["positions"] == "M-RoPE"
    assert all(r["verified"] for r in rows)
    table = _run()
    assert all(t in table for t in FAMILIES) and "docs/ADAPTERS.md" in table
