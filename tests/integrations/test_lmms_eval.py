"""The real `lmms-eval` command with `--model videokv` on a local task over needle streams (make lmms).

lmms-eval runs in its own environment (`.lmmsenv`, or $VIDEOKV_LMMSENV): it needs torchvision and av<16.
Its scores and every logged answer / option score must equal what videokv's public API gives for the same
prompts (computed there without lmms-eval, a fresh session per question), so the plugin's plumbing (the
entry point, one session per video, prompts, subtitles, stop strings, the loglikelihood pairs) is checked
exactly, and the scores are recomputed from them.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from videokv.bench.needles import make_needles
from videokv.integrations.lmms_tasks import write_lmms_tasks
from videokv.qa import matches

ROOT = Path(__file__).resolve().parents[2]
LMMSENV = Path(os.environ.get("VIDEOKV_LMMSENV", ROOT / ".lmmsenv"))
REFERENCE = Path(__file__).with_name("lmms_reference.py")

pytestmark = pytest.mark.skipif(
    not (LMMSENV / "bin" / "lmms-eval").exists(), reason=f"no lmms-eval environment at {LMMSENV}: make lmms"
)


def offline_env(tmp: Path) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp / "hf"))
    env.pop("PYTHONPATH", None)  # the lmms environment has videokv installed (editable) itself
    return env


def run_lmms_eval(tmp: Path, tasks: Path, model_args: str, timeout: int) -> tuple[dict, dict]:
    """Run the command; return (results["results"], {task: [samples in doc order]})."""
    out = tmp / "out"
    cmd = [
        str(LMMSENV / "bin" / "lmms-eval"),
        "--model", "videokv",
        "--model_args", model_args,
        "--tasks", "needles_open,needles_open_mc",
        "--include_path", str(tasks),
        "--output_path", str(out),
        "--log_samples",
        "--batch_size", "1",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=offline_env(tmp), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (results_file,) = out.rglob("*_results.json")
    samples = {}
    for task in ("needles_open", "needles_open_mc"):
        (f,) = out.rglob(f"*_samples_{task}.jsonl")
        rows = [json.loads(line) for line in f.read_text().splitlines()]
        samples[task] = sorted(rows, key=lambda r: r["doc_id"])
    return json.loads(results_file.read_text())["results"], samples


def reference(
    tmp: Path, data: Path, pretrained: str, memory: str, fps: float, frame_tokens: int | None, max_new: int
) -> dict:
    """The public API's answers and option scores, in the lmms environment (lmms_reference.py)."""
    args = [pretrained, memory, str(fps), "" if frame_tokens is None else str(frame_tokens), str(max_new)]
    cmd = [str(LMMSENV / "bin" / "python"), str(REFERENCE), str(data), *args]
    proc = subprocess.run(cmd, env=offline_env(tmp), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {r["id"]: r for r in json.loads(proc.stdout)}


def check_against_reference(data: Path, results: dict, samples: dict, ref: dict) -> tuple[float, float]:
    """Every logged answer and option score equals the public API's; the scores are recomputed from the
    reference. Returns (open accuracy, multiple-choice accuracy)."""
    docs = [json.loads(line) for line in data.read_text().splitlines()]
    open_docs = [d for d in docs if not d["choices"]]
    mc_docs = [d for d in docs if d["choices"]]
    assert open_docs and mc_docs
    assert [s["doc_id"] for s in samples["needles_open"]] == list(range(len(open_docs)))
    assert [s["doc_id"] for s in samples["needles_open_mc"]] == list(range(len(mc_docs)))
    hits = []
    for doc, sample in zip(open_docs, samples["needles_open"]):
        answer = ref[doc["id"]]["answer"]
        assert sample["filtered_resps"] == answer and sample["target"] == doc["answer"]
        hits.append(float(matches(answer, doc["answer"])))
        assert sample["accuracy"] == hits[-1]
    accuracy = sum(hits) / len(hits)
    assert results["needles_open"]["accuracy,none"] == pytest.approx(accuracy)
    right = []
    for doc, sample in zip(mc_docs, samples["needles_open_mc"]):
        pairs = ref[doc["id"]]["loglikelihoods"]
        logged = [(float(loss), greedy == "True") for loss, greedy in sample["filtered_resps"]]
        assert [g for _, g in logged] == [g for _, g in pairs]
        # lmms-eval takes the lowest first element: the plugin gives it -log P(option)
        assert [-loss for loss, _ in logged] == pytest.approx([ll for ll, _ in pairs], abs=1e-4)
        best = max(range(len(pairs)), key=lambda i: pairs[i][0])
        right.append(float(best == doc["answer_index"]))
        assert sample["acc"] == right[-1]
    acc = sum(right) / len(right)
    assert results["needles_open_mc"]["acc,none"] == pytest.approx(acc)
    return accuracy, acc


def test_lmms_eval_command_scores_what_the_public_api_answers(tmp_path):
    """Tiny random model, `rekv` memory, two needle streams with subtitles: lmms-eval's results JSON and
    logged samples equal the public API's answers and option scores."""
    dataset = make_needles(tmp_path / "needles", minutes=[0.4, 0.5], questions=4, seed=3)
    yamls = write_lmms_tasks(dataset, tmp_path / "tasks", name="needles_open")
    assert [p.name for p in yamls] == ["needles_open.yaml", "needles_open_mc.yaml"]
    data = tmp_path / "tasks" / "needles_open.jsonl"
    args = "pretrained=tiny-qwen2_vl,memory=rekv,fps=1"
    results, samples = run_lmms_eval(tmp_path, tmp_path / "tasks", args, timeout=600)
    ref = reference(tmp_path, data, "tiny-qwen2_vl", "rekv", 1.0, None, 32)
    check_against_reference(data, results, samples, ref)


@pytest.mark.realmodel
def test_lmms_eval_with_the_offline_model_answers_from_the_subtitles(tmp_path):
    """Real weights (the offline model, which reads the subtitles): lmms-eval's scores equal the public
    API's, and the planted facts are found."""
    from videokv.models.offline import ensure_offline_model

    ensure_offline_model(progress=False)  # converted once, in this environment; the lmms one loads it
    dataset = make_needles(tmp_path / "needles", minutes=[0.5], questions=4, seed=0)
    write_lmms_tasks(dataset, tmp_path / "tasks", name="needles_open")
    data = tmp_path / "tasks" / "needles_open.jsonl"
    args = "pretrained=offline,memory=rekv,fps=0.5,frame_tokens=16"
    results, samples = run_lmms_eval(tmp_path, tmp_path / "tasks", args, timeout=900)
    ref = reference(tmp_path, data, "offline", "rekv", 0.5, 16, 32)
    accuracy, acc = check_against_reference(data, results, samples, ref)
    assert accuracy + acc > 0, (results, samples)
