"""`videokv bench lmms-task`: lmms-eval task files over a videokv dataset (no lmms-eval needed here)."""

from __future__ import annotations

import json

import pytest

from videokv.bench.dataset import load_dataset
from videokv.bench.needles import make_needles
from videokv.cli import main
from videokv.errors import InputError
from videokv.integrations import lmms_tasks
from videokv.qa import question_text


@pytest.fixture(scope="module")
def needles(tmp_path_factory):
    return make_needles(tmp_path_factory.mktemp("needles"), minutes=[0.4], questions=4, seed=3)


def test_rows_are_the_datasets_questions_with_absolute_paths(needles, tmp_path, capsys):
    assert main(["bench", "lmms-task", str(needles), "--out", str(tmp_path), "--name", "nd"]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(tmp_path / "nd.yaml"), str(tmp_path / "nd_mc.yaml")]
    rows = [json.loads(line) for line in (tmp_path / "nd.jsonl").read_text().splitlines()]
    (entry,) = load_dataset(needles)
    assert [r["question"] for r in rows] == [c.question for c in entry.conversations]
    for row, conv in zip(rows, entry.conversations):
        assert row["video"] == str(entry.video_path.resolve()) and row["subtitles"] == str(entry.subtitles)
        assert row["choices"] == list(conv.choices or [])
        assert row["answer_index"] == (-1 if conv.answer_index is None else conv.answer_index)
        if row["choices"]:
            assert row["choices"][row["answer_index"]] == conv.choices[conv.answer_index]
    text = (tmp_path / "nd.yaml").read_text()
    assert "task: nd\n" in text and json.dumps(str(tmp_path / "nd.jsonl")) in text
    assert "output_type: generate_until" in text
    mc = (tmp_path / "nd_mc.yaml").read_text()
    assert "task: nd_mc\n" in mc and "output_type: multiple_choice" in mc
    assert "from videokv.integrations.lmms_tasks import" in (tmp_path / "utils.py").read_text()


def test_doc_functions_give_the_prompt_and_the_visuals(needles, tmp_path):
    lmms_tasks.write_lmms_tasks(needles, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "videokv_needles.jsonl").read_text().splitlines()]
    mc = next(r for r in rows if r["choices"])
    assert lmms_tasks.doc_to_visual(mc) == [mc["video"], mc["subtitles"]]
    assert lmms_tasks.doc_to_visual({**mc, "subtitles": ""}) == [mc["video"]]
    assert lmms_tasks.doc_to_mc_text(mc) == question_text(mc["question"], mc["choices"])
    assert lmms_tasks.doc_to_choice(mc) == mc["choices"]
    open_row = next(r for r in rows if not r["choices"])
    assert lmms_tasks.process_results(open_row, [f"It is {open_row['answer']}."]) == {"accuracy": 1.0}
    assert lmms_tasks.process_results(open_row, ["no idea"]) == {"accuracy": 0.0}


def test_bad_name(needles, tmp_path):
    with pytest.raises(InputError, match="identifier"):
        lmms_tasks.write_lmms_tasks(needles, tmp_path, name="bad-name")
