"""The tiered block store (invariant 4): resident bytes stay within the budgets, blocks spill oldest-first,
spilled blocks come back bit-identical, byte counts are exact, and a failed add or a rollback leaves the
store exactly as it was."""

from __future__ import annotations

import functools
import gc
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import get_tiny, random_frames
from videokv import MemoryConfig, TextEvent, VideoQA
from videokv.engine import Frame
from videokv.errors import ConfigError
from videokv.memory.block import KVBlock
from videokv.memory.store import Store
from videokv.policies.retrieve import TopK

LAYERS, HEADS, DIM = 3, 2, 4


# ---- synthetic blocks ------------------------------------------------------------------------------------
def make_block(index: int, tokens: int | list[int], dtype: torch.dtype = torch.float32) -> KVBlock:
    """Random K/V [HEADS, n_l, DIM] per layer (n_l from `tokens`: one count, or one per layer)."""
    per_layer = [tokens] * LAYERS if isinstance(tokens, int) else list(tokens)
    g = torch.Generator().manual_seed(1000 + index)
    keys = [torch.randn(HEADS, n, DIM, generator=g).to(dtype) for n in per_layer]
    values = [torch.randn(HEADS, n, DIM, generator=g).to(dtype) for n in per_layer]
    positions = [torch.arange(n).expand(3, n) + 10 * index for n in per_layer]
    rkey = torch.randn(len(per_layer), HEADS * DIM, generator=g)
    return KVBlock(
        index, index, "frame", float(index), index + 1.0, keys, values, positions, rkey, meta={"tag": index}
    )


def kv_bytes(block: KVBlock) -> int:
    return sum(t.numel() * t.element_size() for t in (*block.keys, *block.values))


def raw(t: torch.Tensor) -> bytes:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def assert_same_block(got: KVBlock, want: KVBlock, device: str = "cpu") -> None:
    """Bit-identical K/V (same dtypes and shapes) and the same metadata."""
    assert got.num_layers == want.num_layers
    for g, w in zip((*got.keys, *got.values), (*want.keys, *want.values)):
        assert g.device.type == device
        assert g.dtype == w.dtype and g.shape == w.shape
        assert raw(g) == raw(w)
    assert (got.index, got.unit, got.kind, got.t0, got.t1) == (
        want.index,
        want.unit,
        want.kind,
        want.t0,
        want.t1,
    )
    assert (got.level, got.text, got.pinned, got.meta) == (want.level, want.text, want.pinned, want.meta)
    assert all(torch.equal(a, b) for a, b in zip(got.positions, want.positions))
    assert torch.equal(got.rkey, want.rkey)


def spill_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.safetensors"))


def check_store(store: Store, added: list[KVBlock], host_bytes: int | None, root: Path | None = None) -> None:
    """The store's contract on a CPU machine (host tier resident, disk below it)."""
    used = store.bytes_by_tier()
    assert len(store) == len(added)
    assert store.nbytes_of == [kv_bytes(b) for b in added]
    assert used["device"] == 0
    assert sum(used.values()) == sum(kv_bytes(b) for b in added)
    for tier in ("host", "disk"):
        assert used[tier] == sum(kv_bytes(b) for b, t in zip(added, store.tier) if t == tier)
    assert store.resident_bytes == used["host"]
    if host_bytes is not None:
        assert used["host"] <= host_bytes
    # oldest-first: the disk blocks are a prefix, the resident ones the newest suffix ...
    n_disk = store.tier.count("disk")
    assert store.tier == ["disk"] * n_disk + ["host"] * (len(store) - n_disk)
    # ... and nothing spilled that still fits beside the newer ones
    if n_disk:
        assert host_bytes is not None and used["host"] + store.nbytes_of[n_disk - 1] > host_bytes
    if root is not None:
        assert len(spill_files(root)) == n_disk


def fresh_store(blocks: list[KVBlock], host_bytes: int | None, root: Path) -> Store:
    store = Store("cpu", host_bytes=host_bytes, spill_dir=root)
    for b in blocks:
        store.add(b)
    return store


# ---- 1. budgets, spilling, lossless round trips -----------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_spills_oldest_first_within_budget_and_round_trips(tmp_path, dtype):
    sizes = [4, 1, 7, 0, 3, 5, [2, 6, 1], 8, 2, [0, 3, 5], 6, 1]
    blocks = [make_block(i, n, dtype) for i, n in enumerate(sizes)]
    host_bytes = 3 * kv_bytes(make_block(0, 5, dtype))
    store = Store("cpu", host_bytes=host_bytes, spill_dir=tmp_path)
    spilled_before = 0
    for i, block in enumerate(blocks):
        store.add(block)
        check_store(store, blocks[: i + 1], host_bytes, tmp_path)
        assert store.tier.count("disk") >= spilled_before  # spilled blocks stay spilled
        spilled_before = store.tier.count("disk")
    assert 0 < spilled_before < len(blocks)
    assert all(p.parent.parent == tmp_path for p in spill_files(tmp_path))
    for i, block in enumerate(blocks):
        assert_same_block(store.get(i), block)
    assert store.get(-1).index == blocks[-1].index
    check_store(store, blocks, host_bytes, tmp_path)  # reading never moves a block


def test_mixed_dtypes_and_no_budget(tmp_path):
    blocks = [make_block(i, 3 + i, (torch.float32, torch.bfloat16, torch.float16)[i % 3]) for i in range(7)]
    unlimited = fresh_store(blocks, None, tmp_path / "a")
    check_store(unlimited, blocks, None, tmp_path / "a")
    assert unlimited.tier == ["host"] * 7
    tight = fresh_store(blocks, max(kv_bytes(b) for b in blocks), tmp_path / "b")
    check_store(tight, blocks, max(kv_bytes(b) for b in blocks), tmp_path / "b")
    for i, block in enumerate(blocks):
        assert_same_block(tight.get(i), block)


def test_views_are_stored_compactly(tmp_path):
    """A block whose K/V are views into larger tensors holds (and counts) only its own bytes."""
    big = torch.randn(1, 40, DIM)
    block = make_block(0, 4)
    block.keys = [big[:, 8 * i : 8 * i + 4] for i in range(LAYERS)]  # contiguous views into `big`
    block.values = [big[:, 8 * i + 4 : 8 * i + 8].transpose(0, 1).transpose(0, 1) for i in range(LAYERS)]
    store = Store("cpu", host_bytes=10 * kv_bytes(block), spill_dir=tmp_path)
    store.add(block)
    held = store.blocks[0]
    for t in (*held.keys, *held.values):
        assert t.untyped_storage().nbytes() == t.numel() * t.element_size()
    assert store.used["host"] == kv_bytes(block)
    assert_same_block(store.get(0), block)


def test_two_stores_never_share_spill_files(tmp_path):
    """Two sessions with the same spill_dir (and the same block ids) keep their own spilled K/V."""
    a_blocks = [make_block(i, 4) for i in range(5)]
    b_blocks = [make_block(i + 50, 4) for i in range(5)]
    for i, b in enumerate(b_blocks):  # same ids as a's blocks, other contents
        b.index = b.unit = i
        b.meta = {"tag": i}
    budget = 2 * kv_bytes(a_blocks[0])
    a = fresh_store(a_blocks, budget, tmp_path)
    b = fresh_store(b_blocks, budget, tmp_path)
    assert a.tier.count("disk") == b.tier.count("disk") == 3
    assert len(spill_files(tmp_path)) == 6
    for i in range(5):
        assert_same_block(a.get(i), a_blocks[i])
        assert_same_block(b.get(i), b_blocks[i])
    del a

    gc.collect()
    assert len(spill_files(tmp_path)) == 3  # a store's spill folder goes with it


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=st.lists(
        st.one_of(st.integers(0, 6), st.lists(st.integers(0, 6), min_size=LAYERS, max_size=LAYERS)),
        min_size=1,
        max_size=12,
    ),
    budget_tokens=st.integers(0, 14),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    cut=st.integers(0, 12),
)
def test_store_property(sizes, budget_tokens, dtype, cut):
    """Random streams of block sizes and budgets: the contract after every add; an add over budget raises
    and changes nothing; truncate leaves the store as a fresh store fed the kept blocks, and so does
    adding the forgotten blocks again."""
    per_token = 2 * HEADS * DIM * torch.tensor([], dtype=dtype).element_size()
    host_bytes = max(1, budget_tokens * LAYERS * per_token)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        store = Store("cpu", host_bytes=host_bytes, spill_dir=root / "s")
        added: list[KVBlock] = []
        for n in sizes:
            block = make_block(len(added), n, dtype)
            if kv_bytes(block) > host_bytes:
                before = (store.tier[:], store.bytes_by_tier(), spill_files(root))
                with pytest.raises(ConfigError, match="smaller than one block"):
                    store.add(block)
                assert (store.tier, store.bytes_by_tier(), spill_files(root)) == before
            else:
                store.add(block)
                added.append(block)
            check_store(store, added, host_bytes, root)
        for i, block in enumerate(added):
            assert_same_block(store.get(i), block)
        n = min(cut, len(added))
        store.truncate(n)
        check_store(store, added[:n], host_bytes, root / "s")
        ref = fresh_store(added[:n], host_bytes, root / "ref")
        assert (store.tier, store.bytes_by_tier()) == (ref.tier, ref.bytes_by_tier())
        for i, block in enumerate(added[:n]):
            assert_same_block(store.get(i), block)
        for block in added[n:]:  # and it goes on after a truncate as if nothing had happened
            store.add(block)
            ref.add(block)
            assert (store.tier, store.bytes_by_tier()) == (ref.tier, ref.bytes_by_tier())
        check_store(store, added, host_bytes, root / "s")
        for i, block in enumerate(added):
            assert_same_block(store.get(i), block)


# ---- 2. a budget smaller than one block -----------------------------------------------------------------
def test_block_over_budget_raises_and_changes_nothing(tmp_path):
    small = [make_block(i, 3) for i in range(5)]
    host_bytes = 2 * kv_bytes(small[0]) + 7
    store = fresh_store(small, host_bytes, tmp_path)
    assert store.tier.count("disk") == 3
    before = (len(store), store.tier[:], store.nbytes_of[:], store.bytes_by_tier(), spill_files(tmp_path))
    big = make_block(5, 7)
    with pytest.raises(ConfigError, match=r"budget \(\d+ bytes\) is smaller than one block"):
        store.add(big)
    after = (len(store), store.tier, store.nbytes_of, store.bytes_by_tier(), spill_files(tmp_path))
    assert after == before
    for i, block in enumerate(small):
        assert_same_block(store.get(i), block)
    empty = Store("cpu", host_bytes=kv_bytes(big) - 1, spill_dir=tmp_path / "e")
    with pytest.raises(ConfigError, match="smaller than one block"):
        empty.add(big)
    assert len(empty) == 0 and sum(empty.bytes_by_tier().values()) == 0
    assert empty.blocks == [] and empty.tier == [] and empty.nbytes_of == []


# ---- 3. truncate ------------------------------------------------------------------------------------------
def test_truncate_forgets_blocks_and_their_spill_files(tmp_path):
    blocks = [make_block(i, 2 + i % 3) for i in range(8)]
    host_bytes = 3 * kv_bytes(blocks[2])
    store = fresh_store(blocks, host_bytes, tmp_path)
    n_disk = store.tier.count("disk")
    assert n_disk >= 4
    kept_files = spill_files(tmp_path)
    store.truncate(n_disk - 1)  # only disk blocks stay; the tail (resident and spilled) is forgotten
    check_store(store, blocks[: n_disk - 1], host_bytes, tmp_path)
    assert set(spill_files(tmp_path)) <= set(kept_files)
    for i in range(len(store)):
        assert_same_block(store.get(i), blocks[i])
    store.truncate(10)  # past the end: nothing changes
    check_store(store, blocks[: n_disk - 1], host_bytes, tmp_path)
    # adding again after a truncate: new spill files never clobber old ones
    for block in blocks[n_disk - 1 :]:
        store.add(block)
    check_store(store, blocks, host_bytes, tmp_path)
    for i, block in enumerate(blocks):
        assert_same_block(store.get(i), block)
    store.truncate(0)
    check_store(store, [], host_bytes, tmp_path)
    assert spill_files(tmp_path) == []
    with pytest.raises(ValueError):
        store.truncate(-1)


def test_truncate_restores_the_tiers_of_the_kept_blocks(tmp_path):
    """A rollback is exact: blocks that spilled only to make room for the forgotten ones come back."""
    blocks = [make_block(i, 3) for i in range(4)] + [make_block(4 + i, 6) for i in range(3)]
    host_bytes = 3 * kv_bytes(blocks[0])
    store = fresh_store(blocks[:4], host_bytes, tmp_path)
    snapshot = (store.tier[:], store.bytes_by_tier(), len(spill_files(tmp_path)))
    for block in blocks[4:]:
        store.add(block)
    assert store.tier.count("disk") > snapshot[0].count("disk")
    store.truncate(4)
    assert (store.tier, store.bytes_by_tier(), len(spill_files(tmp_path))) == snapshot
    for i in range(4):
        assert_same_block(store.get(i), blocks[i])


# ---- 4, 5. the engine's memory under a host budget --------------------------------------------------------
CONFIG = MemoryConfig(name="t", retrieve=TopK(k=3))


@functools.cache
def shared_qa() -> tuple[VideoQA, int]:
    """One VideoQA for the engine tests, and the bytes of one frame block."""
    qa = VideoQA.from_model(*get_tiny("llava_onevision"), memory=CONFIG)
    s = qa.session()
    s.add_frames(random_frames(2))
    sizes = set(s.engine.store.nbytes_of)
    assert len(sizes) == 1
    return qa, sizes.pop()


def memory_state(session) -> tuple:
    eng = session.engine
    store = eng.store
    return (
        len(store),
        store.tier[:],
        store.nbytes_of[:],
        store.bytes_by_tier(),
        eng.cursor,
        eng.clock,
        eng.frames_ingested,
        len(eng.index),
        list(eng.unit_tokens),
        eng.non_sink_tokens,
        eng.cache.lengths(),
        len(eng.segmenter.open),
    )


def test_engine_host_budget_spills_losslessly(tmp_path):
    _, block = shared_qa()
    budget = int(2.5 * block)
    frames = random_frames(8, seed=3)
    free = VideoQA.from_model(*get_tiny("llava_onevision"), memory=CONFIG).session()
    free.add_frames(frames)
    config = MemoryConfig(name="t", retrieve=TopK(k=3), host_bytes=budget, spill_dir=str(tmp_path))
    capped = VideoQA.from_model(*get_tiny("llava_onevision"), memory=config).session()
    capped.add_frames(frames)
    stats, store = capped.stats, capped.engine.store
    assert stats["memory_bytes"] <= budget
    assert stats["memory_bytes"] == store.resident_bytes
    assert stats["offloaded_bytes"] == store.bytes_by_tier()["disk"] == 6 * block
    assert stats["memory_bytes"] + stats["offloaded_bytes"] == free.stats["memory_bytes"] == 8 * block
    assert stats["blocks"] == free.stats["blocks"] == 8
    assert len(spill_files(tmp_path)) == 6
    read_tiers: list[str] = []
    get = store.get

    def spy(i: int) -> KVBlock:
        read_tiers.append(store.tier[i])
        return get(i)

    store.get = spy
    for question, choices in [("What is in the video?", None), ("Which colour?", ["red", "blue", "green"])]:
        want = free.ask(question, choices, max_new_tokens=8)
        got = capped.ask(question, choices, max_new_tokens=8)
        assert got.text == want.text
        assert got.evidence == want.evidence
        assert (got.choice, got.choice_scores) == (want.choice, want.choice_scores)
    assert "disk" in read_tiers  # the answers did read spilled blocks back
    assert capped.stats["memory_bytes"] == stats["memory_bytes"]  # asking moves nothing
    for i in range(8):
        assert_same_block(get(i), free.engine.store.get(i))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(calls=st.lists(st.integers(1, 6), min_size=1, max_size=3), data=st.data())
def test_engine_resident_bytes_within_budget(calls, data):
    qa, block = shared_qa()
    budget = data.draw(st.integers(block, 4 * block), label="host_bytes")
    session = qa.session(memory=CONFIG.replace(host_bytes=budget))
    total = 0
    for seed, n in enumerate(calls):
        session.add_frames(random_frames(n, seed=seed))
        total += n
        stats = session.stats
        assert stats["memory_bytes"] == session.engine.store.resident_bytes <= budget
        assert stats["memory_bytes"] + stats["offloaded_bytes"] == total * block
        assert stats["memory_bytes"] == min(total, budget // block) * block


def test_engine_block_over_budget_leaves_memory_unchanged():
    qa, block = shared_qa()
    session = qa.session(memory=CONFIG.replace(host_bytes=block - 1))
    session.add_text("a red umbrella", t=0.0)  # joins the open unit; stored with the next frame
    before = memory_state(session)
    assert before[-1] == 1
    with pytest.raises(ConfigError, match="smaller than one block"):
        session.add_frames(random_frames(3))
    assert memory_state(session) == before
    assert len(session.engine.store) == 0 and len(session.engine.index) == 0
    with pytest.raises(ConfigError, match="smaller than one block"):  # a retry fails the same way
        session.add_frames(random_frames(1))
    assert memory_state(session) == before


def test_engine_failed_ingest_restores_spilled_blocks():
    """A unit whose second block is over budget: the first block's spills are undone by the rollback."""
    qa, block = shared_qa()
    session = qa.session(memory=CONFIG.replace(host_bytes=int(2.5 * block)))
    session.add_frames(random_frames(4))
    before = memory_state(session)
    assert before[1] == ["disk", "disk", "host", "host"]
    long_text = " ".join(["a red umbrella in the rain"] * 12)
    items = [
        Frame(4.0, random_frames(1, seed=9)[0]),
        TextEvent(4.5, 5.0, long_text),
        Frame(5.0, random_frames(1)[0]),
    ]
    with pytest.raises(ConfigError, match="smaller than one block"):
        session.engine.ingest(items)
    assert memory_state(session) == before


# ---- 6. CUDA: pinned host tier, reads land on the accelerator -----------------------------------------
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_tiers_pin_host_blocks(tmp_path):
    blocks = [make_block(i, 3 + i % 2, torch.bfloat16 if i % 2 else torch.float32) for i in range(9)]
    unit = max(kv_bytes(b) for b in blocks)
    store = Store("cuda", device_bytes=2 * unit, host_bytes=3 * unit, spill_dir=tmp_path)
    for i, block in enumerate(blocks):
        store.add(block)
        used = store.bytes_by_tier()
        assert used["device"] <= 2 * unit and used["host"] <= 3 * unit
        assert sum(used.values()) == sum(kv_bytes(b) for b in blocks[: i + 1])
        order = {"disk": 0, "host": 1, "device": 2}
        assert [order[t] for t in store.tier] == sorted(order[t] for t in store.tier)
    assert {"device", "host", "disk"} <= set(store.tier)
    for held, tier in zip(store.blocks, store.tier):
        for t in (*held.keys, *held.values):
            if tier == "host":
                assert t.device.type == "cpu" and t.is_pinned()
            else:
                assert tier == "disk" or t.device.type == "cuda"
    for i, block in enumerate(blocks):
        got = store.get(i)
        torch.cuda.synchronize()
        assert_same_block(got, block, device="cuda")
    store.truncate(4)  # blocks come back up from disk: pinned on the host, or on the accelerator
    for held, tier in zip(store.blocks, store.tier):
        if tier == "host":
            assert all(t.is_pinned() for t in (*held.keys, *held.values))
    for i in range(4):
        assert_same_block(store.get(i), blocks[i], device="cuda")


# ---- 5. lanes: blocks a policy prefers in slower memory ---------------------------------------------------
def expected_tiers(sizes: list[int], lanes: list[int], caps: dict[str, int | None]) -> list[str]:
    """The placement rule written out directly: tier by tier, fastest first, the hot lane (0) takes the
    longest run of its newest unplaced blocks that fits the tier's budget, then the cold lane (1, never in
    the fastest tier) the longest run of its newest unplaced blocks that fits what is left; the last tier
    takes the rest."""
    tiers = ["device", "host", "disk"]
    where = [""] * len(sizes)
    left = {lane: [i for i in range(len(sizes)) if lanes[i] == lane] for lane in (0, 1)}
    for k, tier in enumerate(tiers):
        room = caps[tier]
        for lane in (0, 1):
            if lane == 1 and k == 0:
                continue
            rows = left[lane]
            while rows and (room is None or sizes[rows[-1]] <= room):
                i = rows.pop()
                where[i] = tier
                if room is not None:
                    room -= sizes[i]
    return where


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=st.lists(st.tuples(st.integers(1, 4), st.booleans()), min_size=1, max_size=14),
    device_tokens=st.integers(4, 12),
    host_tokens=st.integers(4, 12),
    cut=st.integers(0, 14),
)
def test_lanes_place_cold_blocks_below_hot_ones(ops, device_tokens, host_tokens, cut):
    """Three tiers (the accelerator tier kept in RAM, so this runs on a CPU): after every add and after a
    truncate, every block is where the rule says, byte counts per tier are exact, and blocks read back
    bit-identical."""
    per_token = LAYERS * 2 * HEADS * DIM * 4
    caps = {"device": device_tokens * per_token, "host": host_tokens * per_token, "disk": None}
    with tempfile.TemporaryDirectory() as tmp:
        store = Store("cpu", caps["device"], caps["host"], tmp, device_tier=True)
        added, lanes = [], []
        for n, cold in ops:
            block = make_block(len(added), n)
            store.add(block, cold=cold)
            added.append(block)
            lanes.append(int(cold))
            sizes = [kv_bytes(b) for b in added]
            assert store.tier == expected_tiers(sizes, lanes, caps)
        for tier in ("device", "host", "disk"):
            assert store.bytes_by_tier()[tier] == sum(s for s, t in zip(sizes, store.tier) if t == tier)
        n = min(cut, len(added))
        store.truncate(n)
        assert store.tier == expected_tiers(sizes[:n], lanes[:n], caps)
        for i, block in enumerate(added[:n]):
            assert_same_block(store.get(i), block)


def test_cold_blocks_go_to_disk_on_a_cpu_machine(tmp_path):
    """On a CPU-only machine the host tier is the fastest, so a cold block is written to disk at once and
    is not resident; hot blocks are."""
    blocks = [make_block(i, 3) for i in range(4)]
    store = Store("cpu", spill_dir=tmp_path)
    for i, b in enumerate(blocks):
        store.add(b, cold=i % 2 == 1)
    assert store.tier == ["host", "disk", "host", "disk"]
    assert store.resident_bytes == kv_bytes(blocks[0]) + kv_bytes(blocks[2])
    assert store.bytes_by_tier()["disk"] == kv_bytes(blocks[1]) + kv_bytes(blocks[3])
    assert store.nbytes_of == [kv_bytes(b) for b in blocks]
    assert len(spill_files(tmp_path)) == 2
    for i, b in enumerate(blocks):
        assert_same_block(store.get(i), b)


def test_token_count_follows_adds_and_truncates():
    """`n_tokens` (what `memory_stats` reports as memory_tokens, with no pass over the store) equals the
    tokens of the blocks held, through adds, spills to disk and rollbacks."""
    blocks = [make_block(i, n) for i, n in enumerate([3, 0, 5, 2, 7, 1])]
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(host_bytes=2 * blocks[2].nbytes, spill_dir=tmp)  # the older blocks spill to disk
        for b in blocks:
            store.add(b)
            assert store.n_tokens == sum(x.positions[0].shape[1] for x in blocks[: b.index + 1])
        assert "disk" in store.tier
        for n in (4, 1, 0):
            store.truncate(n)
            assert store.n_tokens == sum(x.positions[0].shape[1] for x in blocks[:n])
        store.add(blocks[0])
        assert store.n_tokens == 3
