"""An upgrade loses no session: a save of version 2 loads, and a server migrates a journal of version 3
(both written by videokv before storage backends: tests/fixtures/legacy) to the current format."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.conftest import random_frames
from tests.server.test_durability import same_memory
from videokv.api import VideoQA

LEGACY = Path(__file__).resolve().parent / "fixtures" / "legacy"
SID = "0123456789ab"


def fed(qa: VideoQA, more: bool):
    """What the fixtures' session was fed, fed again by the current code."""
    s = qa.session(memory="rekv")
    s.add_frames(random_frames(3, seed=11))
    s.add_text("a red umbrella by the door")
    s.flush()
    if more:
        s.add_frames(random_frames(2, seed=12))
        s.flush()
    return s


def test_a_version_2_save_still_loads():
    qa = VideoQA.from_pretrained("tiny-llava_onevision")
    loaded = qa.load_session(LEGACY / "save_v2")
    assert loaded.saved["name"] == "legacy"
    same_memory(loaded, fed(qa, more=False))


def test_a_version_3_journal_is_migrated_when_the_server_restores_it(tmp_path: Path):
    from videokv.server.sessions import SessionManager

    qa = VideoQA.from_pretrained("tiny-llava_onevision")
    data = tmp_path / "data"
    shutil.copytree(LEGACY / "data", data)
    journal = data / "sessions" / SID / "journal"
    manager = SessionManager(qa, data)
    assert manager.restore_all() == [SID] and manager.quarantined == {}
    m = manager.get(SID)
    assert m.name == "legacy" and m.memory == "rekv"
    same_memory(m.session, fed(qa, more=True))
    assert (journal / "state").exists() and not list(journal.rglob("*.safetensors"))  # migrated, old gone
    manager.scheduler.close(timeout=5)
    again = SessionManager(qa, data)  # and it is an ordinary journal from now on
    assert again.restore_all() == [SID]
    same_memory(again.get(SID).session, fed(qa, more=True))
    again.scheduler.close(timeout=5)
