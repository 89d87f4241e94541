"""lmms-eval tasks over a videokv dataset (docs/DATASET.md): `videokv bench lmms-task DATASET --out DIR`.

`write_lmms_tasks(dataset, out, name)` writes into `out`:
  <name>.jsonl     one row per question: the video and subtitle paths (absolute), question, options, answer
  <name>.yaml      task `<name>`: the open questions, `generate_until`, metric `accuracy` (the answer
                   matches the reference as videokv's benchmarks judge it: `videokv.bench.metrics.is_correct`,
                   by the question's task family)
  <name>_mc.yaml   task `<name>_mc`: the multiple-choice questions, lmms-eval's `multiple_choice` (each
                   option scored by `loglikelihood`), metrics `acc` / `acc_norm`
  utils.py         the tasks' functions (this module's `doc_to_*` / `process_results`)
so that `lmms-eval --model videokv --include_path out --tasks <name>,<name>_mc` runs them on local files
(the needle streams of `videokv bench make-needles`, or any converted benchmark). Each question is asked
after the whole video (lmms-eval has no notion of a question's time in the stream). A video's subtitles go
with it to the model (`doc_to_visual` gives [video, subtitles]), where they are timed text in memory.
"""

from __future__ import annotations

import json
from pathlib import Path

from videokv.api import question_text
from videokv.bench.dataset import load_dataset
from videokv.bench.metrics import is_correct
from videokv.errors import InputError

_TASK = """\
task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
process_docs: !function utils.{docs}
output_type: {output_type}
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.{doc_to_text}
doc_to_target: {doc_to_target}
{extra}metric_list:
{metrics}metadata:
  version: 1
"""


def write_lmms_tasks(dataset: str | Path, out: str | Path, name: str = "videokv_needles") -> list[Path]:
    """Write the two lmms-eval tasks of `dataset` (see the module docstring); returns the YAML paths."""
    if not name.isidentifier():
        raise InputError(f"the task name must be a Python identifier (letters, digits, _); got {name!r}")
    entries = load_dataset(dataset)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for entry in entries:
        for k, conv in enumerate(entry.conversations):
            rows.append(
                {
                    "id": f"{entry.video_id}/{k}",
                    "video_id": entry.video_id,
                    "video": str(entry.video_path.resolve()),
                    "subtitles": str(entry.subtitles.resolve()) if entry.subtitles else "",
                    "question": conv.question,
                    "choices": list(conv.choices or []),
                    "answer": conv.answer,
                    "answer_index": -1 if conv.answer_index is None else conv.answer_index,
                    "question_type": conv.question_type or "",
                    "task": conv.task,
                }
            )
    if not rows:
        raise InputError(f"{dataset}: the dataset has no questions")
    data = out / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out / "utils.py").write_text(
        '"""Written by `videokv bench lmms-task`: the task functions live in videokv."""\n\n'
        "from videokv.integrations.lmms_tasks import (  # noqa: F401\n"
        "    doc_to_choice,\n    doc_to_mc_text,\n    doc_to_text,\n    doc_to_visual,\n"
        "    multiple_choice_docs,\n    open_docs,\n    process_results,\n)\n"
    )
    open_yaml = out / f"{name}.yaml"
    open_yaml.write_text(
        _TASK.format(
            task=name,
            data=json.dumps(str(data.resolve())),
            docs="open_docs",
            output_type="generate_until",
            doc_to_text="doc_to_text",
            doc_to_target="answer",
            extra="generation_kwargs:\n  max_new_tokens: 32\n  until: []\n"
            "process_results: !function utils.process_results\n",
            metrics="  - metric: accuracy\n    aggregation: mean\n    higher_is_better: true\n",
        )
    )
    mc_yaml = out / f"{name}_mc.yaml"
    mc_yaml.write_text(
        _TASK.format(
            task=f"{name}_mc",
            data=json.dumps(str(data.resolve())),
            docs="multiple_choice_docs",
            output_type="multiple_choice",
            doc_to_text="doc_to_mc_text",
            doc_to_target="answer_index",
            extra='doc_to_choice: !function utils.doc_to_choice\ntarget_delimiter: ""\n',
            metrics="  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
            "  - metric: acc_norm\n    aggregation: mean\n    higher_is_better: true\n",
        )
    )
    return [open_yaml, mc_yaml]


# ---- the tasks' functions (lmms-eval calls them with one dataset row, a dict) --------------------------
def open_docs(dataset):
    """The open questions (a `datasets.Dataset` in, the filtered one out)."""
    return dataset.filter(lambda doc: not doc["choices"])


def multiple_choice_docs(dataset):
    return dataset.filter(lambda doc: bool(doc["choices"]))


def doc_to_visual(doc: dict) -> list[str]:
    """[video] or [video, subtitles]: the videokv lmms-eval model streams the subtitles with the video."""
    return [doc["video"], doc["subtitles"]] if doc["subtitles"] else [doc["video"]]


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    return question_text(doc["question"])


def doc_to_mc_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    """The question with its options listed, as videokv scores options."""
    return question_text(doc["question"], doc["choices"])


def doc_to_choice(doc: dict) -> list[str]:
    return list(doc["choices"])


def process_results(doc: dict, results: list[str]) -> dict:
    """accuracy 1.0 when the answer matches the reference as `videokv bench` judges an open answer of the
    question's task family (`videokv.bench.metrics.is_correct`), else 0.0."""
    task = doc.get("task") or "retrieval"
    return {"accuracy": float(is_correct(results[0], doc["answer"], None, None, None, task))}
