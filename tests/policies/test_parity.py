"""Parity with the reference code: each policy against an independent, loop-by-loop implementation of its
reference's formula, on fixed random tensors (kept sets identical, scores within ~1e-6, budgets identical).
The references are named in each test; docs/PARITY.md tabulates them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from videokv.models.base import Piece
from videokv.policies.base import Unit
from videokv.policies.compress import (
    DualSignal,
    InfiniPot,
    KeyNorm,
    MultiGrain,
    Pool,
    Redundancy,
    ValueNorm,
)
from videokv.policies.compress.guidance import Guidance
from videokv.policies.compress.multigrain import sub_unit
from videokv.policies.retrieve import LayerAdaptive

L, KV, D = 3, 4, 8


def unit_of(frames: int, tokens: int, seed: int, kv: int = KV, layers: int = L) -> Unit:
    g = torch.Generator().manual_seed(seed)
    n = frames * tokens
    pieces = [
        Piece(torch.zeros(tokens, 2), torch.zeros(1, tokens, dtype=torch.long), "frame", float(i), i + 1.0)
        for i in range(frames)
    ]
    spans = [(i * tokens, (i + 1) * tokens) for i in range(frames)]
    keys = [torch.randn(kv, n, D, generator=g) for _ in range(layers)]
    values = [torch.randn(kv, n, D, generator=g) for _ in range(layers)]
    return Unit(pieces, keys, values, torch.arange(n)[None], spans, {})


def topk_set(scores: list[float], k: int) -> set[int]:
    return set(sorted(range(len(scores)), key=lambda i: -scores[i])[:k])


def kept_per_head(draft, layer: int) -> list[set[int]]:
    idx = draft.index[layer]
    return [set(row.tolist()) for row in (idx if idx.dim() == 2 else idx[None].expand(KV, -1))]


# ---- kvpress KnormPress (kvpress/presses/knorm_press.py + scorer_press.py) ---------------------------------


def test_knorm_matches_kvpress_per_head():
    unit = unit_of(3, 10, seed=1)
    keep = 0.3  # kvpress compression_ratio 0.7
    n = unit.n_tokens
    n_kept = int(n * (1 - 0.7))
    (draft,) = KeyNorm(keep, per_head=True).compress(unit)
    scores = KeyNorm(keep, per_head=True).score(unit)
    worst = 0.0
    for layer in range(L):
        for h in range(KV):
            ref = [-math.sqrt(sum(float(x) ** 2 for x in unit.keys[layer][h, t])) for t in range(n)]
            worst = max(worst, max(abs(a - b) for a, b in zip(ref, scores[layer, h].tolist())))
            assert kept_per_head(draft, layer)[h] == topk_set(ref, n_kept)
    assert worst < 1e-5


# ---- InfiniPot-V TaR / VaN (kvcache_utils.py, process_kv_cache) --------------------------------------------


def infinipot_v_tar_scores(k: torch.Tensor, q_frames: int, tpf: int) -> list[float]:
    """InfiniPot-V's TaR score of every older token of one head (keys [n, d]): minus its mean cosine with the
    same slot of each of the last `q_frames` frames (`tpf` tokens each), written out token by token."""
    n, q_len = k.shape[0], q_frames * tpf
    unit_k = [k[t] / (k[t].norm() + 1e-9) for t in range(n)]
    return [
        -sum(float(unit_k[t] @ unit_k[n - q_len + qf * tpf + t % tpf]) for qf in range(q_frames)) / q_frames
        for t in range(n - q_len)
    ]


def test_redundancy_matches_infinipot_v_tar_per_head():
    frames, tpf = 8, 6
    unit = unit_of(frames, tpf, seed=2)
    keep = 0.5
    n = unit.n_tokens
    budget = int(n * keep)
    q_frames = int(frames * 0.25)  # query_ratio
    q_len = q_frames * tpf
    comp = Redundancy(keep, per_head=True)
    (draft,) = comp.compress(unit)
    scores = comp.score(unit)
    worst = 0.0
    for layer in range(L):
        for h in range(KV):
            older = infinipot_v_tar_scores(unit.keys[layer][h].double(), q_frames, tpf)
            worst = max(worst, max(abs(a - b) for a, b in zip(older, scores[layer, h, : n - q_len].tolist())))
            ref = topk_set(older, budget - q_len) | set(range(n - q_len, n))
            assert kept_per_head(draft, layer)[h] == ref
    assert worst < 1e-6


def test_value_norm_matches_infinipot_v_van_per_head():
    unit = unit_of(4, 9, seed=3)
    keep = 0.4
    n = unit.n_tokens
    (draft,) = ValueNorm(keep, per_head=True).compress(unit)
    scores = ValueNorm(keep, per_head=True).score(unit)
    worst = 0.0
    for layer in range(L):
        for h in range(KV):
            ref = [math.sqrt(sum(float(x) ** 2 for x in unit.values[layer][h, t])) for t in range(n)]
            worst = max(worst, max(abs(a - b) for a, b in zip(ref, scores[layer, h].tolist())))
            assert kept_per_head(draft, layer)[h] == topk_set(ref, int(n * keep))
    assert worst < 1e-5


@pytest.mark.parametrize("tar_ratio", [0.5, 0.7, 0.0, 1.0])
def test_infinipot_matches_infinipot_v_combined_per_head(tar_ratio):
    """process_kv_cache("infinipot-v"): attn_budget = round((1 - tar_ratio) B); TaR picks B - attn_budget
    (the query frames + the least redundant older tokens); their value norms become max + 1; topk(B)."""
    frames, tpf = 8, 6
    unit = unit_of(frames, tpf, seed=7)
    keep = (
        0.75  # a TaR share at least the query frames' tokens at every ratio (the reference's topk needs it)
    )
    n = unit.n_tokens
    b = int(n * keep)
    attn_budget = round((1 - tar_ratio) * b)
    tar_budget = b - attn_budget
    q_frames = int(frames * 0.25)
    q_len = q_frames * tpf
    comp = InfiniPot(keep, tar_ratio=tar_ratio, per_head=True)
    (draft,) = comp.compress(unit)
    for layer in range(L):
        for h in range(KV):
            k, v = unit.keys[layer][h].double(), unit.values[layer][h].double()
            van = [math.sqrt(sum(float(x) ** 2 for x in v[t])) for t in range(n)]
            if tar_budget > 0:
                older = infinipot_v_tar_scores(k, q_frames, tpf)
                tar = topk_set(older, tar_budget - q_len) | set(range(n - q_len, n))
                top = max(van) + 1
                van = [top if t in tar else x for t, x in enumerate(van)]
            ref = topk_set(van, b)
            assert kept_per_head(draft, layer)[h] == ref
            if tar_budget > 0:
                assert tar <= ref and len(ref - tar) == attn_budget
    ends = {0.0: ValueNorm(keep, per_head=True), 1.0: Redundancy(keep, per_head=True)}
    if tar_ratio in ends:  # the two ends are the single-signal compressors
        (single,) = ends[tar_ratio].compress(unit)
        assert all(torch.equal(a, c) for a, c in zip(draft.index, single.index))


# InfiniPot-V adaptive_pooling=True (kvcache_utils.py, process_kv_cache): per layer quarter
# (layer // max(1, num_layers // 4)) pooling_func_list [3, 2, 1, -1] with pool_size_list [7, 5, 3, 1];
# the norms [heads, n] reshaped to [heads, frames, height_width, -1]; AvgPool3d / AvgPool2d (kernel
# min(size, T, H, W), made odd; none below 2) or AvgPool1d on the flat sequence; stride 1, padding k // 2,
# zero padding counted. Written here as zero-padded shift sums in float64; the unit's K/V are float64 too
# (videokv keeps float64), so the 1e-6 measures the formula, not float32 rounding of 125-term means (~1.2e-6).
ROWS, COLS, POOL_KV, POOL_LAYERS = 6, 8, 2, 8


def grid_unit(frames: int, seed: int) -> Unit:
    g = torch.Generator().manual_seed(seed)
    tpf = ROWS * COLS
    n = frames * tpf
    pieces = [
        Piece(torch.zeros(tpf, 2), torch.zeros(3, tpf, dtype=torch.long), "frame", float(i), i + 1.0)
        for i in range(frames)
    ]
    for p in pieces:
        p.hw = (ROWS, COLS)
    spans = [(i * tpf, (i + 1) * tpf) for i in range(frames)]
    keys = [torch.randn(POOL_KV, n, D, generator=g, dtype=torch.float64) for _ in range(POOL_LAYERS)]
    values = [torch.randn(POOL_KV, n, D, generator=g, dtype=torch.float64) for _ in range(POOL_LAYERS)]
    return Unit(pieces, keys, values, torch.arange(n)[None].expand(3, n), spans, {})


def infinipot_v_pooled_norms(values: torch.Tensor, layer: int, num_layers: int, frames: int) -> np.ndarray:
    """val_norm_score of one layer after process_kv_cache's adaptive pooling, [heads, n], float64."""
    pooling_func_list, pool_size_list = [3, 2, 1, -1], [7, 5, 3, 1]
    idx = layer // max(1, num_layers // len(pooling_func_list))
    nd, pool = pooling_func_list[idx], pool_size_list[idx]
    score = np.sqrt((values.double().numpy() ** 2).sum(-1))  # [heads, n]
    heads, n = score.shape
    if nd <= 0:
        return score
    if nd == 1:
        pad = np.pad(score, ((0, 0), (pool // 2, pool // 2)))
        return sum(pad[:, o : o + n] for o in range(pool)) / pool
    x = score.reshape(heads, frames, ROWS, -1)
    t, h, w = x.shape[1:]
    k = min(pool, t, h, w)
    if k % 2 == 0:
        k -= 1
    if k < 2:
        return score
    p = k // 2
    if nd == 2:  # AvgPool2d on [heads, T, H, W]: over (H, W) of each frame
        pad = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
        out = sum(pad[:, :, a : a + h, b : b + w] for a in range(k) for b in range(k)) / k**2
    else:  # AvgPool3d on [heads, T, H, W] (unbatched, channels = heads): over (T, H, W)
        pad = np.pad(x, ((0, 0), (p, p), (p, p), (p, p)))
        out = (
            sum(pad[:, f : f + t, a : a + h, b : b + w] for f in range(k) for a in range(k) for b in range(k))
            / k**3
        )
    return out.reshape(heads, n)


@pytest.mark.parametrize("frames", [4, 8])  # 4 frames: the 3-D and 2-D kernels shrink to 3; 8: 5 and 5
def test_value_norm_matches_infinipot_v_adaptive_pooling_per_head(frames):
    unit = grid_unit(frames, seed=11)
    keep = 0.4
    n = unit.n_tokens
    comp = ValueNorm(keep, adaptive_pooling=True, per_head=True)
    (draft,) = comp.compress(unit)
    scores = comp.score(unit)
    worst, overlap = 0.0, []
    for layer in range(POOL_LAYERS):
        ref = infinipot_v_pooled_norms(unit.values[layer], layer, POOL_LAYERS, frames)
        worst = max(worst, float(np.abs(ref - scores[layer].double().numpy()).max()))
        for h in range(POOL_KV):
            want = topk_set(ref[h].tolist(), int(n * keep))
            got = set(draft.index[layer][h].tolist())
            overlap.append(len(got & want) / len(want))
    assert worst < 1e-6
    assert min(overlap) == 1.0


@pytest.mark.parametrize("frames", [4, 8])
def test_infinipot_matches_infinipot_v_adaptive_pooling_per_head(frames):
    """process_kv_cache("infinipot-v", tar_ratio 0.5, adaptive_pooling=True): the pooled norms, the TaR
    indices raised to max + 1, topk(B) per head."""
    unit = grid_unit(frames, seed=12)
    keep, tar_ratio, tpf = 0.75, 0.5, ROWS * COLS
    n = unit.n_tokens
    b = int(n * keep)
    attn_budget = round((1 - tar_ratio) * b)
    tar_budget = b - attn_budget
    q_frames = int(frames * 0.25)
    q_len = q_frames * tpf
    comp = InfiniPot(keep, tar_ratio=tar_ratio, adaptive_pooling=True, per_head=True)
    (draft,) = comp.compress(unit)
    scores = comp.score(unit)
    worst, overlap = 0.0, []
    for layer in range(POOL_LAYERS):
        pooled = infinipot_v_pooled_norms(unit.values[layer], layer, POOL_LAYERS, frames)
        for h in range(POOL_KV):
            older = infinipot_v_tar_scores(unit.keys[layer][h].double(), q_frames, tpf)
            tar = topk_set(older, tar_budget - q_len) | set(range(n - q_len, n))
            van = pooled[h].tolist()
            rest = [t for t in range(n) if t not in tar]
            worst = max(worst, max(abs(van[t] - float(scores[layer, h, t])) for t in rest))
            top = float(pooled.max()) + 1
            want = topk_set([top if t in tar else x for t, x in enumerate(van)], b)
            got = set(draft.index[layer][h].tolist())
            assert tar <= want
            overlap.append(len(got & want) / len(want))
    assert worst < 1e-6
    assert min(overlap) == 1.0


# ---- Video-XL-2 pooling (llava_qwen.py, pooling_kvs: avg_pool1d, kernel = stride) --------------------------


def test_pool_matches_video_xl2_avg_pool1d():
    unit = unit_of(3, 14, seed=4)  # 14 tokens per frame, stride 4: 3 windows, 2 tokens dropped per frame
    stride = 4
    (draft,) = Pool(stride).compress(unit)
    worst = 0.0
    for layer in range(L):
        got_k, got_v = draft.keys[layer], draft.values[layer]
        expected = []
        for s, e in unit.frame_spans:
            for w in range((e - s) // stride):
                a = s + w * stride
                expected.append(a)
                for h in range(KV):
                    for x, full in ((got_k, unit.keys), (got_v, unit.values)):
                        ref = sum(full[layer][h, a + j] for j in range(stride)) / stride
                        worst = max(worst, float((x[h, len(expected) - 1] - ref).abs().max()))
        assert got_k.shape[1] == len(expected) == 9
        assert draft.positions[layer][0].tolist() == expected
    assert worst < 1e-6


# ---- MuKV dual signal (mukv_dualsignal_compression.py) -----------------------------------------------------


def mukv_reference(
    keys_last: torch.Tensor, attention: torch.Tensor, alpha: float, beta: float
) -> list[float]:
    """_compute_token_importance with strategy 'last' and fft_method 'fft', written out."""
    kv, n, d = keys_last.shape
    att = [
        sum(float(attention[h, q, t]) for h in range(attention.shape[0]) for q in range(n)) for t in range(n)
    ]
    att = [a / attention.shape[0] for a in att]
    x = np.array([[float(keys_last[:, t, j].double().mean()) for j in range(d)] for t in range(n)])
    spectrum = np.fft.rfft(x.T, axis=-1)
    start = max(1, spectrum.shape[-1] // 2)
    high = np.zeros_like(spectrum)
    high[:, start:] = spectrum[:, start:]
    freq = np.abs(np.fft.irfft(high, n=n, axis=-1)).mean(axis=0).tolist()

    def mm(v):
        return [(a - min(v)) / (max(v) - min(v) + 1e-8) for a in v]

    return [alpha * a + beta * f for a, f in zip(mm(att), mm(freq))]


def test_dual_signal_matches_mukv():
    n = 49
    unit = unit_of(1, n, seed=5)
    g = torch.Generator().manual_seed(6)
    unit.attention["self"] = torch.softmax(torch.randn(6, n, n, generator=g, dtype=torch.float64), -1).float()
    comp = DualSignal(keep=0.1, alpha=0.5, beta=0.5, frequency="fft")
    ref = mukv_reference(unit.keys[-1], unit.attention["self"], 0.5, 0.5)
    got = comp.score(unit).tolist()
    assert max(abs(a - b) for a, b in zip(ref, got)) < 1e-6
    (draft,) = comp.compress(unit)
    target_k = int(n * 0.1)  # 4 (round() would give 5)
    assert all(set(i.tolist()) == topk_set(ref, target_k) for i in draft.index)


def test_multigrain_counts_are_mukv_target_k():
    unit = unit_of(4, 196, seed=7, kv=2, layers=2)
    g = torch.Generator().manual_seed(8)
    unit.attention["self"] = torch.softmax(torch.randn(2, 784, 784, generator=g), -1)
    for mg in (MultiGrain(), MultiGrain(alone=False)):
        # MuKV's frame and patch blocks prefilled on their own (here: stand-ins cut from the unit)
        unit.alone = [sub_unit(unit, a, b) for a, b in mg.alone_ranges(unit.pieces)]
        sizes = {}
        for d in mg.compress(unit):
            sizes.setdefault(d.kind, set()).add(d.index[0].numel() if d.index else d.keys[0].shape[1])
        assert sizes == {"patch": {int(49 * 0.1)}, "frame": {int(196 * 0.1)}, "segment": {int(784 * 0.8)}}


# ---- StreamKV (abstract_streamkv.py obtain_cdf_num / rescale_sum_match; kv_cache_manager.py) ---------------


def ref_cdf_num(layer_scores: list[torch.Tensor], target: int) -> list[int]:
    cums = []
    for s in layer_scores:
        z = (s - s.mean()) / s.std()
        cums.append(torch.softmax(z, 0).sort(descending=True).values.cumsum(0))

    def count(p: float) -> list[int]:
        p32 = float(torch.tensor(p, dtype=torch.float32))
        return [max(1, sum(1 for c in cum.tolist() if c < p32)) for cum in cums]

    left, right, mid = 0.0, 1.0, 0.0
    while right - left > 1e-6:
        mid = (left + right) / 2.0
        total = sum(count(mid))
        if abs(total - target) < 5:
            break
        if total > target:
            right = mid
        else:
            left = mid
    return count(mid)


def ref_rescale(arr: list[int], lo: float, hi: float) -> list[int]:
    total = float(sum(arr))
    amin, amax = min(arr), max(arr)
    if amin == amax:
        return list(arr)
    scaled = [(a - amin) / (amax - amin) * (hi - lo) + lo for a in arr]
    ratio = total / sum(scaled)
    mapped = [min(hi, max(lo, float(np.round(x * ratio)))) for x in scaled]
    diff = int(round(total - sum(mapped)))
    if diff:
        order = list(np.argsort(mapped) if diff > 0 else np.argsort([-m for m in mapped]))
        for i in order:
            if (diff > 0 and mapped[i] < hi) or (diff < 0 and mapped[i] > lo):
                mapped[i] += 1 if diff > 0 else -1
                diff += -1 if diff > 0 else 1
                if diff == 0:
                    break
    return [int(m) for m in mapped]


def test_guidance_matches_streamkv_scores_budgets_and_kept_frames():
    frames, tpf, layers, kv, groups = 20, 5, 6, 2, 3
    unit = unit_of(frames, tpf, seed=9, kv=kv, layers=layers)
    g = torch.Generator().manual_seed(10)
    q_full = torch.randn(layers, kv * groups, 7, D, generator=g)  # [L, heads, prompt tokens, d], pre-RoPE
    k_pre = torch.randn(layers, kv, frames * tpf, D, generator=g)
    k_pre[::2, :, : 3 * tpf] += 2.0 * q_full[::2].mean(2).view(layers // 2, kv, groups, D).sum(2)[:, :, None]
    unit.attention["guidance_q"] = q_full.view(layers, kv, groups, 7, D).sum(2).mean(2)
    unit.attention["prerope_k"] = k_pre
    comp = Guidance(keep=0.6, temp=1.0)
    # reference: mean prompt query (per query head) . the frame's mean key repeated to the query heads
    ref_scores = []
    for layer in range(layers):
        row = []
        for f in range(frames):
            total = 0.0
            for h in range(kv * groups):
                qm = q_full[layer, h].double().mean(0)
                km = k_pre[layer, h // groups, f * tpf : (f + 1) * tpf].double().mean(0)
                total += float(qm @ km)
            row.append(total)
        ref_scores.append(row)
    got = comp.frame_scores(unit)
    assert float((got.double() - torch.tensor(ref_scores)).abs().max()) < 1e-5
    # budgets: target int(L * F * ratio), range [max(1, int(F r (1 - t))), min(F, int(F r (1 + t)))]
    scores32 = [torch.tensor(r, dtype=torch.float32) for r in ref_scores]
    nums = ref_cdf_num([got[i] for i in range(layers)], int(layers * frames * 0.6))
    ref_counts = [
        max(1, c) for c in ref_rescale(nums, max(1, int(frames * 0.6 * 0)), min(frames, int(frames * 1.2)))
    ]
    assert comp.budgets(got) == ref_counts
    assert len(set(ref_counts)) > 1  # the layers really differ
    drafts = comp.compress(unit)  # one block per kept frame, present at the layers that kept it
    for layer in range(layers):
        kept = {int(i) // tpf for d in drafts for i in d.index[layer]}
        assert kept == topk_set(scores32[layer].tolist(), ref_counts[layer])


def test_layer_adaptive_matches_streamkv_retrieval_budgets():
    g = torch.Generator().manual_seed(11)
    layers, n, k = 8, 300, 64
    scores = [torch.randn(n, generator=g) * (4.0 if i % 3 == 0 else 1.0) for i in range(layers)]
    ret = LayerAdaptive(k=k, temp=0.5, recent=8, max_k=128)
    expected = ref_rescale(ref_cdf_num(scores, layers * k), max(k * 0.5, 1), min(k * 1.5, 128))
    assert ret.budgets(scores) == expected
    assert len(set(expected)) > 1


def test_streamkv_budget_routine_on_many_random_cases():
    """The exact counts on 200 random cases (layers 4-28, 8-64 frames, ratio 0.3-0.9, temp 0-1)."""
    rng = np.random.default_rng(12)
    for case in range(200):
        layers, frames = int(rng.integers(4, 29)), int(rng.integers(8, 65))
        ratio, temp = float(rng.uniform(0.3, 0.9)), float(rng.uniform(0.0, 1.0))
        g = torch.Generator().manual_seed(case)
        scores = torch.stack(
            [torch.randn(frames, generator=g) * float(rng.uniform(0.2, 5)) for _ in range(layers)]
        )
        comp = Guidance(keep=ratio, temp=temp)
        lo = max(1, int(frames * ratio * (1 - temp)))
        hi = min(frames, int(frames * ratio * (1 + temp)))
        nums = ref_cdf_num(list(scores), int(layers * frames * ratio))
        expected = [min(frames, max(1, c)) for c in ref_rescale(nums, lo, hi)]
        assert comp.budgets(scores) == expected, case
