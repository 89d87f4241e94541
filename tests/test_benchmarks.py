"""Smoke tests of the speed benchmarks (benchmarks/*.py): each runs in --quick mode on a tiny model and
writes well-formed JSON and a Markdown table. Timings are never asserted; the checks each benchmark makes
of its own work (same tokens as the bare path, FAISS = torch top-k, reloaded blocks exact) are."""

from __future__ import annotations

import importlib
import json
import math
import sys
from pathlib import Path

import pytest

from videokv.errors import InputError

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _module(name: str):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module(name)


def _run(name: str, tmp_path: Path, *extra: str) -> dict:
    import torch

    out = tmp_path / f"{name}.json"
    threads = torch.get_num_threads()
    try:
        payload = _module(name).main(["--quick", "--out", str(out), *extra])
    finally:  # the benchmarks set torch's thread count (--threads); leave the test process as it was
        torch.set_num_threads(threads)
    on_disk = json.loads(out.read_text())
    assert on_disk["benchmark"] == name == payload["benchmark"]
    assert on_disk["results"] == json.loads(json.dumps(payload["results"]))
    machine = on_disk["machine"]
    assert machine["cpu_cores"] >= 1 and machine["device"] == "cpu" and machine["date"]
    table = on_disk["table"].splitlines()
    assert table[0].startswith("| ") and set(table[1]) <= set("|-")
    width = table[0].count("|")  # every Markdown table in the text has rows as wide as its header
    for prev, line in zip(table, table[1:]):
        if line.startswith("|"):
            width = width if prev.startswith("|") else line.count("|")
            assert line.count("|") == width, line
    return on_disk


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_engine_overhead(tmp_path):
    data = _run("engine_overhead", tmp_path)
    res = data["results"]
    # the bare transformers path processed exactly the tokens videokv did, at the same positions
    assert res["check"]["same_tokens"] is True
    assert res["check"]["max_abs_key_diff_full_vs_bare"] < 1e-4
    assert set(res["cases"]) == {"bare", "full", "rekv"}
    for case in res["cases"].values():
        assert len(case["seconds"]) == data["args"]["repeats"]
        assert _positive(case["median"]) and _positive(case["paired_ratio_to_bare"])
    assert res["stream"]["stream_tokens"] > res["stream"]["frames"]
    assert res["cases"]["rekv"]["memory_bytes"] > 0


@pytest.mark.parametrize("arch", ["qwen2_5_vl-7b", "llava_onevision-7b"])
def test_engine_overhead_scaled_architectures(tmp_path, arch):
    """The realistic-size code path (7B architectures, random weights) on a scaled-down config."""
    data = _run(
        "engine_overhead", tmp_path, "--model", f"random-scaled:{arch}", "--presets", "", "--repeats", "1"
    )
    assert data["results"]["check"]["same_tokens"] is True
    assert set(data["results"]["cases"]) == {"bare", "full"}


def test_full_size_architecture_needs_cuda(tmp_path):
    import torch

    threads = torch.get_num_threads()
    try:
        with pytest.raises(InputError, match="--device cuda"):
            _module("engine_overhead").main(
                ["--model", "random:qwen2_5_vl-7b", "--out", str(tmp_path / "x.json")]
            )
    finally:  # the benchmark sets torch's thread count before it refuses: leave the test process as it was
        torch.set_num_threads(threads)
    assert not (tmp_path / "x.json").exists()


def test_random_architectures_have_published_sizes():
    import torch

    common = _module("common")
    sizes = {}
    for arch in common.RANDOM_ARCHS:
        model, _ = common.random_model(arch, dtype=torch.bfloat16, device="meta")
        text = model.config.get_text_config()
        assert (text.hidden_size, text.num_hidden_layers, text.num_key_value_heads) == (3584, 28, 4)
        sizes[arch] = sum(p.numel() for p in model.parameters())
    assert 8.2e9 < sizes["qwen2_5_vl-7b"] < 8.4e9 and 7.9e9 < sizes["llava_onevision-7b"] < 8.1e9


def test_latency_vs_length(tmp_path):
    data = _run("latency_vs_length", tmp_path, "--presets", "full,rekv,x2l")
    res = data["results"]
    for name in ("full", "rekv", "x2l"):
        cps = res["presets"][name]["checkpoints"]
        assert list(cps) == ["0.2", "0.4"]
        first, last = cps["0.2"], cps["0.4"]
        assert _positive(first["ttft_s"]) and first["total_s"] >= first["ttft_s"] - 1e-3
        assert last["stream_tokens"] > first["stream_tokens"]  # the stream continued after the ask
        assert first["ttft_ratio_to_first"] == 1.0 and first["first_samples"] is None
        # later lengths are timed beside a session stopped at the first checkpoint, in the same rounds
        assert len(last["first_samples"]) == len(last["samples"]) == data["args"]["repeats"]
        assert last["first_samples"][0]["context_tokens"] == first["context_tokens"]
        assert _positive(last["ttft_ratio_to_first"]) and _positive(last["total_ratio_to_first"])
        # the physical floor attended to as many tokens as the preset's question did
        for cp in (first, last):
            assert {s["floor_tokens"] for s in cp["samples"]} == {int(round(cp["context_tokens"]))}
            assert _positive(cp["floor_s"]) and _positive(cp["cold_s"]) and _positive(cp["total_to_floor"])
            assert cp["dominant_step"] in ("retrieval", "question prefill", "decode")
        assert res["presets"][name]["ingest_tokens"] == last["stream_tokens"]
    assert set(res["bare_tokens_per_s"]) == {"0.2", "0.4"} and all(
        map(_positive, res["bare_tokens_per_s"].values())
    )
    assert res["presets"]["rekv"]["meets_1_3x"] in (True, False)
    assert "total / floor" in data["table"] and "bare forward tokens / s" in data["table"]


def test_latency_scaled_llava(tmp_path):
    """The realistic-size path of the latency benchmark, on the scaled-down LLaVA-OneVision architecture."""
    model = "random-scaled:llava_onevision-7b"
    data = _run("latency_vs_length", tmp_path, "--model", model, "--presets", "full,rekv")
    for name in ("full", "rekv"):
        assert list(data["results"]["presets"][name]["checkpoints"]) == ["0.2", "0.4"]


def test_latency_full_stops_at_context(tmp_path):
    """`full` leaves the run once its context would pass the model's (tiny model: 4096 tokens)."""
    data = _run(
        "latency_vs_length",
        tmp_path,
        "--presets",
        "full,rekv",
        "--minutes",
        "0.2,3",
        "--fps",
        "2",
        "--frame-tokens",
        "16",
    )
    res = data["results"]
    assert res["presets"]["full"]["stopped_at_minutes"] == 3.0
    assert list(res["presets"]["full"]["checkpoints"]) == ["0.2"]
    assert list(res["presets"]["rekv"]["checkpoints"]) == ["0.2", "3"]
    assert "over context" in data["table"]


def test_retrieval_scoring(tmp_path):
    data = _run("retrieval_scoring", tmp_path, "--sizes", "300,3000", "--max-gb", "0.0031")
    res = data["results"]
    assert list(res["sizes"]) == ["300", "3000"]
    for entry in res["sizes"].values():
        assert entry["topk_agreement_torch_vs_faiss"] == 1.0
        assert entry["select_identical_torch_vs_faiss"] is True
        assert entry["layer_major_identical"] is True
        assert set(entry["cases"]) == {
            "torch kernel",
            "torch kernel, layer-major",
            "faiss kernel",
            "torch select",
            "faiss select",
        }
    # --max-gb caps the catalog: 3000 x 128 floats per layer fit twice in 3.1 MB; kernel times are scaled
    # to 24 layers, retriever times extrapolated through 1 and 2 layers
    big = res["sizes"]["3000"]
    assert (big["layers_built"], big["half_layers"], big["scale_to_all_layers"]) == (2, 1, 12)
    kernel = big["cases"]["torch kernel"]
    assert kernel["ms_per_query_all_layers"] == pytest.approx(kernel["median"] * 1e3 * 12)
    select = big["cases"]["faiss select"]
    assert (
        select["estimate"].startswith("fit") and select["ms_per_query_all_layers"] >= select["median"] * 1e3
    )


def test_reload_throughput(tmp_path):
    data = _run("reload_throughput", tmp_path)
    res = data["results"]
    assert res["reloaded_blocks_exact"] is True
    assert res["bytes_per_question"] == res["block_bytes"] * res["k"]
    for name in (
        "memcpy (torch)",
        "host -> context",
        "host -> context (compact)",
        "disk get (warm)",
        "disk get (cold)",
        "disk -> context (warm)",
        "disk -> context (cold)",
    ):
        assert _positive(res["cases"][name]["gb_per_s"])
    assert res["cases"]["memcpy (torch)"]["fraction_of_reference"] == pytest.approx(1.0)


def test_retrieval_at_scale(tmp_path):
    """A whole question through Session.ask over a memory grown to N blocks (Engine.keep), split into its
    steps; the planted needles are found at every N, the replayed selection is the ask's, the context is the
    sinks plus the selected blocks; copies may share their real block's K/V; sizes over a cap are skipped."""
    data = _run("retrieval_at_scale", tmp_path, "--sizes", "300,3000")
    res = data["results"]
    assert set(res["presets"]) == {"rekv", "videokv"}
    assert res["text_matching"] == {"rekv": False, "videokv": True}
    for preset, out in res["presets"].items():
        assert set(out["sizes"]) == {"300", "3000"}
        for n, entry in out["sizes"].items():
            assert "skipped" not in entry and entry["kv"] == "cloned"
            assert entry["blocks"] >= int(n)
            steps = entry["steps"]
            for name in (
                "total",
                "retrieval",
                "catalog",
                "selection",
                "reload",
                "forward",
                "prefill",
                "decode",
            ):
                assert len(steps[name]["seconds"]) == data["args"]["repeats"]
                assert _positive(steps[name]["median"]), (preset, n, name)
            for name in ("selection alone", "reload alone", "assembly alone"):
                assert _positive(steps[name]["median"])
            # the steps partition each ask (its stats are rounded to 0.1 ms)
            parts = [steps[s]["seconds"] for s in ("catalog", "selection", "reload", "forward", "prefill")]
            for r, total in enumerate(steps["total"]["seconds"]):
                assert sum(p[r] for p in parts) <= total + 1e-3
            assert entry["dominant"] in steps and 0 < entry["dominant_share"] <= 1
            assert _positive(entry["ratio_to_smallest"]["total"])
            checks = entry["checks"]
            assert checks["frame_needle_in_layer0"] is True
            assert checks["replay_identical"] is True
            assert checks["context_is_sinks_plus_selected"] is True
            dense_k = {"rekv": 64, "videokv": 32}[preset]  # the presets' dense budgets (presets.py)
            assert checks["selected_per_layer_min"] >= checks["dense_k"] == dense_k
            assert checks["text_needle_in_every_layer"] is (preset == "videokv")
        tiers = out["sizes"]["3000"]["bytes_by_tier"]
        assert (tiers["disk"] > 0) is (preset == "videokv") and (tiers["host"] > 0) is (preset == "rekv")
    # copies sharing their real block's K/V (what a size too large for cloned copies uses); a disk cap skips
    # the disk-tier preset
    data = _run(
        "retrieval_at_scale",
        tmp_path,
        *("--sizes", "300", "--repeats", "1", "--share-kv", "always", "--max-disk-gb", "1e-9"),
    )
    sizes = {p: out["sizes"]["300"] for p, out in data["results"]["presets"].items()}
    assert sizes["rekv"]["kv"] == "shared" and sizes["rekv"]["checks"]["replay_identical"] is True
    assert "spill files" in sizes["videokv"]["skipped"] and "skipped" in data["table"]
    # --share-kv auto: shared K/V at every N when cloned copies of the largest would pass --max-gb; sizes
    # over a cap are skipped
    from argparse import Namespace

    bench = _module("retrieval_at_scale")
    args = Namespace(max_gb=4.0, max_disk_gb=8.0, max_build_s=300.0, share_kv="auto")
    est = {"ram_gb": 3.0, "ram_gb_shared": 2.0, "disk_gb": 0.0, "build_s": 10.0}
    in_ram, on_disk = {"kv_resident": 2048.0}, {"kv_resident": 0.0}
    assert bench.kv_mode(est, in_ram, args) == "cloned"
    assert bench.kv_mode(dict(est, ram_gb=6.0), in_ram, args) == "shared"
    assert bench.kv_mode(dict(est, ram_gb=6.0), on_disk, args) == "cloned"
    assert bench.plan(est, "cloned", args) is None
    assert "RAM" in bench.plan(dict(est, ram_gb=6.0), "cloned", args)
    assert bench.plan(dict(est, ram_gb=6.0), "shared", args) is None
    assert "grow and release" in bench.plan(dict(est, build_s=900.0), "cloned", args)


def test_store_failover(tmp_path, seaweed):
    data = _run(
        "store_failover", tmp_path, "--store", f"s3://{seaweed.bucket()}/b", "--s3-endpoint", seaweed.endpoint
    )
    res = data["results"]
    for point in res["points"].values():
        assert point["failover"]["answers_equal"] is True  # a lazy restore answers as the session in memory
        assert point["blocks"] > 0 and point["index_parts"] >= 1
    assert res["ingest_ratio_s3_over_folder"] > 0 and res["failover_growth_lazy"] > 0
