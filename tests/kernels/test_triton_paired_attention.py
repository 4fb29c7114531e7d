"""Triton paired_attention against the SDPA reference (interpreter on CPU)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

# tests/conftest.py turns on the Triton interpreter when there is no GPU.
pytest.importorskip("triton")

from asserts import assert_close, max_error
from tries import STRUCTURES, chain, concat, pair

from introspect.kernels import paired_attention as kpa
from introspect.ops import BackendUnavailableError, paired_attention, segment_meta
from introspect.ops.paired_attention import PAD, PREFIX

pytestmark = pytest.mark.triton

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cpu" if INTERPRET or not torch.cuda.is_available() else "cuda"
F64 = torch.float64

# fp32: absolute/relative tolerance against a float64 reference. Low precision: the kernel's
# largest error against float64 may be at most FACTOR x the error torch SDPA itself makes in that
# dtype (plus FLOOR, far below one unit in the last place, for outputs both get exactly right).
TOLERANCES = {
    torch.float32: {"atol": 1e-5, "rtol": 1e-5},
    torch.bfloat16: {"factor": 2.0, "floor": 1e-6},
    torch.float16: {"factor": 2.0, "floor": 1e-6},
}


# (Hq, Hkv, head dim): GQA ratios 1, 3 and 4; head dims 64 and 128.
HEADS = [(2, 2, 64), (3, 1, 128), (8, 2, 64), (4, 1, 128), (6, 2, 64), (2, 2, 128)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
CASES = [
    (name, *HEADS[(i + j) % len(HEADS)], dtype)
    for i, name in enumerate(STRUCTURES)
    for j, dtype in enumerate(DTYPES)
]
# Head dims that are not 64/128: padded to a power of two >= 16 inside the kernel.
CASES += [("T97", 4, 2, 16, torch.float32), ("T7", 3, 3, 80, torch.bfloat16)]


def _case_id(case) -> str:
    name, hq, hkv, d, dtype = case
    return f"{name}-h{hq}/{hkv}-d{d}-{str(dtype).removeprefix('torch.')}"


def _qkv(B, Hq, Hkv, Tq, Tk, D, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, Tq, D, generator=g)
    k = torch.randn(B, Hkv, Tk, D, generator=g)
    v = torch.randn(B, Hkv, Tk, D, generator=g)
    return (t.to(DEVICE, dtype) for t in (q, k, v))


def _check(out, q, k, v, meta):
    """The kernel's output against float64 SDPA on the same (rounded) inputs."""
    truth = paired_attention(q.to(F64), k.to(F64), v.to(F64), meta, backend="reference")
    assert out.dtype == q.dtype and out.shape == q.shape
    tol = TOLERANCES[q.dtype]
    if "factor" in tol:
        torch_err = max_error(paired_attention(q, k, v, meta, backend="reference"), truth)
        bound = tol["factor"] * torch_err + tol["floor"]
        assert_close(out, truth, atol=bound, rtol=0, name=f"triton vs float64 ({q.dtype})")
    else:
        assert_close(out, truth, atol=tol["atol"], rtol=tol["rtol"], name="triton vs float64")


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_matches_reference(case):
    name, Hq, Hkv, D, dtype = case
    meta = segment_meta(STRUCTURES[name])
    q, k, v = _qkv(meta.rows, Hq, Hkv, meta.width, meta.width, D, dtype)
    out = paired_attention(q, k, v, meta, backend="triton")
    _check(out, q, k, v, meta)


@pytest.mark.parametrize(("block_m", "block_n"), [(16, 128), (64, 16)])
def test_segments_split_into_several_tiles(monkeypatch, block_m, block_n):
    """A 97-token segment spans several query blocks and key tiles; a padding block wider than a
    key tile has queries that see nothing in its first tile."""
    monkeypatch.setattr(kpa, "block_m_for", lambda *_: block_m)
    config = kpa._launch_config(torch.float32, 64)
    monkeypatch.setattr(kpa, "_launch_config", lambda *_: {**config, "BLOCK_N": block_n})
    meta = segment_meta([pair(1, 96, [30]), chain(2)])
    assert 97 in (meta.seg_q_end - meta.seg_q_start).tolist()
    q, k, v = _qkv(meta.rows, 4, 1, meta.width, meta.width, 64, torch.float32)
    out = paired_attention(q, k, v, meta, backend="triton")
    _check(out, q, k, v, meta)
    assert torch.equal(out[1, :, 2:], v[1, 0, 2:].expand(4, -1, -1))  # padding


@pytest.mark.parametrize("dtype", DTYPES)
def test_cached_prefix_keys(dtype):
    """Keys [P + T]: tries hung under the cached prefix see all of it, the others none."""
    P = 9
    rows = [
        concat(pair(6, 4, [3], off=0), pair(2, 2, [1])),
        concat(chain(5, first=PREFIX), pair(1, 3, [2])),
    ]
    rows[0][0] = PREFIX
    meta = segment_meta(rows, prefix_len=P)
    assert meta.prefix_len == P
    q, k, v = _qkv(meta.rows, 6, 2, meta.width, P + meta.width, 64, dtype)
    _check(paired_attention(q, k, v, meta, backend="triton"), q, k, v, meta)


def test_strided_views_and_output_layout():
    """q, k, v as [B, T, H, D] buffers viewed [B, H, T, D] (how HF models hand them over); the
    output is stored [B, T, H, D] so that transposing it back costs nothing."""
    meta = segment_meta(STRUCTURES["T97"])
    B, T = meta.rows, meta.width
    g = torch.Generator().manual_seed(3)
    q = torch.randn(B, T, 8, 64, generator=g).to(DEVICE).transpose(1, 2)
    kv = torch.randn(B, T, 2, 2, 64, generator=g).to(DEVICE)
    k, v = kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)
    assert not q.is_contiguous() and not k.is_contiguous()
    out = paired_attention(q, k, v, meta, backend="triton")
    assert out.transpose(1, 2).is_contiguous()
    _check(out, q, k, v, meta)


def test_nan_key_reaches_only_the_queries_that_see_it():
    """A NaN key poisons exactly the queries whose mask includes it (in the heads that read its
    kv head): keys outside a segment's visible intervals are never touched."""
    meta = segment_meta(STRUCTURES["T97"])
    q, k, v = _qkv(meta.rows, 4, 2, meta.width, meta.width, 64, torch.float32)
    row, pos, kv_head = 0, 25, 1  # inside the first pair's x suffix
    k[row, kv_head, pos, 3] = float("nan")
    out = paired_attention(q, k, v, meta, backend="triton")
    expected = torch.zeros(out.shape[:3], dtype=torch.bool)
    sees = meta.dense_mask("cpu")[row, 0, :, pos]
    expected[row, 2:4] = sees  # query heads 2 and 3 read kv head 1
    assert 0 < int(sees.sum()) < meta.width
    assert torch.equal(torch.isnan(out).any(-1).cpu(), expected)
    k_clean = torch.nan_to_num(k)
    ref = paired_attention(q, k_clean, v, meta, backend="reference")
    keep = ~expected.to(DEVICE)
    assert_close(out[keep], ref[keep], atol=1e-5, rtol=1e-5, name="queries not seeing the NaN")


@pytest.mark.parametrize("dtype", DTYPES)
def test_padding_attends_to_itself(dtype):
    rows = [concat(pair(3, 2, [2]), [PAD] * 5, chain(2)), chain(3)]
    meta = segment_meta(rows)
    q, k, v = _qkv(meta.rows, 4, 2, meta.width, meta.width, 64, dtype)
    out = paired_attention(q, k, v, meta, backend="triton")
    pads = [(0, i) for i in range(7, 12)] + [(1, i) for i in range(3, 14)]
    for r, i in pads:
        for h in range(4):
            assert torch.equal(out[r, h, i], v[r, h // 2, i]), (r, h, i)


def test_matches_dense_sdpa_on_the_packed_mask():
    """Independent of the metadata's own mask: SDPA with a mask built straight from parents."""
    rows = STRUCTURES["T129"]
    meta = segment_meta(rows)
    T = meta.width
    mask = torch.zeros(len(rows), T, T, dtype=torch.bool)
    for r, par in enumerate(rows):
        for i in range(T):
            p = par[i] if i < len(par) else PAD
            if p >= 0:
                mask[r, i] = mask[r, p]
            mask[r, i, i] = True
    q, k, v = _qkv(meta.rows, 4, 1, T, T, 64, torch.float32, seed=5)
    ref = F.scaled_dot_product_attention(
        q.to(F64), k.to(F64).repeat_interleave(4, 1), v.to(F64).repeat_interleave(4, 1),
        attn_mask=mask[:, None].to(DEVICE),
    )  # fmt: skip
    out = paired_attention(q, k, v, meta, backend="triton")
    assert_close(out, ref, atol=1e-5, rtol=1e-5, name="triton vs dense SDPA")


def test_rejects_what_it_cannot_run():
    meta = segment_meta([chain(5)])
    q, k, v = _qkv(1, 2, 2, 5, 5, 64, torch.float32)
    with pytest.raises(BackendUnavailableError, match="float64"):
        paired_attention(q.double(), k.double(), v.double(), meta, backend="triton")
    q, k, v = _qkv(1, 2, 2, 5, 5, 512, torch.float32)
    with pytest.raises(BackendUnavailableError, match="head dims"):
        paired_attention(q, k, v, meta, backend="triton")
    q, k, v = _qkv(1, 3, 2, 5, 5, 64, torch.float32)
    with pytest.raises(ValueError, match="multiple"):
        paired_attention(q, k, v, meta, backend="triton")
    q, k, v = _qkv(1, 2, 2, 6, 6, 64, torch.float32)
    with pytest.raises(ValueError, match="width 5"):
        paired_attention(q, k, v, meta, backend="triton")


# ---------------------------------------------------------------------------------------------
# GPU launch configurations: they fit every target's shared memory and do not spill
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_launch_config_for_every_head_dim(dtype):
    for head_dim in range(1, kpa.MAX_HEAD_DIM + 1):
        cap_m = kpa.gpu_config(dtype, head_dim)[0]
        assert kpa.block_d_for(head_dim) >= max(16, head_dim)
        for longest in (1, 17, 100, 5000):
            meta = segment_meta([chain(longest)])
            block_m = kpa.block_m_for(meta, dtype, head_dim)
            assert 16 <= block_m <= (64 if INTERPRET else cap_m)
            assert block_m & (block_m - 1) == 0


def _aot(entries: list[list]) -> list[dict]:
    """``triton_aot.py`` in a process without the interpreter: one result per entry."""
    import json
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    here = os.path.dirname(os.path.abspath(__file__))
    res = subprocess.run(
        [sys.executable, os.path.join(here, "triton_aot.py"), json.dumps(entries)],
        capture_output=True, text=True, env=env, cwd=here, timeout=3000,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    return [json.loads(line) for line in res.stdout.splitlines()]


def _check_aot(rows: list[dict]) -> None:
    for row in rows:
        assert "error" not in row, row
        limit = kpa.SHARED_LIMITS[row["capability"]]
        assert row["shared"] <= limit, f"{row}: needs more shared memory than {limit} bytes"
        assert row["stack"] in (None, 0), f"{row}: spills registers to the stack"


@pytest.mark.slow
def test_largest_launch_config_fits_sm86():
    """The entry that needs the most shared memory, compiled for sm_86 (the smallest limit):
    seconds. The whole table is checked by the test below."""
    _check_aot(_aot([["fp32", 128, 86]]))


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("INTROSPECT_TRITON_AOT") != "1",
    reason="compiles every configuration for sm_80/86/90 (minutes): set INTROSPECT_TRITON_AOT=1",
)
def test_every_launch_config_compiles_for_every_target():
    entries = []
    for (kind, head_dim), (cap_m, *_) in kpa.GPU_CONFIGS.items():
        for dtype in ("fp32",) if kind == "fp32" else ("bf16", "fp16"):
            for capability in (80, 86, 90):
                entries.append([dtype, head_dim, capability])
            if cap_m > 16:  # the smallest query block too
                entries.append([dtype, head_dim, 90, 16])
    _check_aot(_aot(entries))


# ---------------------------------------------------------------------------------------------
# On a GPU: rows of ~2k tokens, every head dim class and GQA group, fp32 and bf16
# ---------------------------------------------------------------------------------------------

LONG_ROWS = [
    pair(1536, 256, [160, 95]),  # a long shared prefix, x's suffix, two x' suffixes: 2047
    concat(pair(700, 300, [300]), pair(400, 200, [100, 47])),  # two pairs in one row: 2047
    chain(2047),
]


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("group", [1, 4, 7])
@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_gpu_long_rows(head_dim, group, dtype):
    """Every launch configuration (head dim x dtype) on rows of 2047 tokens, segments far longer
    than a query block, against float64 SDPA on the same GPU."""
    assert DEVICE == "cuda"
    meta = segment_meta(LONG_ROWS)
    Hkv = 2
    q, k, v = _qkv(meta.rows, Hkv * group, Hkv, meta.width, meta.width, head_dim, dtype)
    _check(paired_attention(q, k, v, meta, backend="triton"), q, k, v, meta)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_gpu_long_rows_with_a_cached_prefix(dtype):
    P = 1000
    rows = [pair(500, 300, [200, 47]), concat(chain(600, first=PREFIX), pair(100, 200, [100]))]
    rows[0][0] = PREFIX
    meta = segment_meta(rows, prefix_len=P)
    q, k, v = _qkv(meta.rows, 8, 2, meta.width, P + meta.width, 128, dtype)
    _check(paired_attention(q, k, v, meta, backend="triton"), q, k, v, meta)
