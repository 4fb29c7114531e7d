"""The C++ paired_attention kernel (float32 CPU, forward only) against float64 SDPA on the
dense mask, and the engine's per-trie attention that runs it."""

from __future__ import annotations

import pytest
import torch
from asserts import assert_close
from tiny import tiny_llama
from tries import STRUCTURES, chain, concat, pair

from introspect import _native
from introspect.engine.attention import BLOCKS, paired_attention_context
from introspect.ops import BackendUnavailableError, paired_attention, segment_meta
from introspect.ops.paired_attention import PAD, PREFIX, paired_attention_blocks

pytestmark = pytest.mark.skipif(
    _native.load() is None or not hasattr(_native.load(), "paired_attention_cpu"),
    reason="introspect._C with paired_attention_cpu is not built",
)
F64 = torch.float64
TOL = {"atol": 2e-6, "rtol": 1e-5}

# (Hq, Hkv, head dim): GQA ratios 1, 3 (SmolLM2's 9/3) and 4; head dims that are and are not
# multiples of the kernel's 16 lanes.
HEADS = [(2, 2, 64), (9, 3, 64), (4, 1, 128), (6, 2, 80), (3, 3, 24), (4, 2, 8), (1, 1, 256)]


def _qkv(meta, Hq, Hkv, D, seed=0):
    g = torch.Generator().manual_seed(seed)
    B, T, P = meta.rows, meta.width, meta.prefix_len
    q = torch.randn(B, Hq, T, D, generator=g)
    k = torch.randn(B, Hkv, P + T, D, generator=g)
    v = torch.randn(B, Hkv, P + T, D, generator=g)
    return q, k, v


def _truth(q, k, v, meta, scale=None):
    return paired_attention(q.to(F64), k.to(F64), v.to(F64), meta, scale, backend="reference")


@pytest.mark.parametrize("heads", HEADS, ids=lambda h: "h{}/{}-d{}".format(*h))
@pytest.mark.parametrize("name", list(STRUCTURES))
def test_matches_float64_reference(name, heads):
    meta = segment_meta(STRUCTURES[name])
    q, k, v = _qkv(meta, *heads)
    out = paired_attention(q, k, v, meta, backend="cpp")
    assert out.dtype == torch.float32 and out.shape == q.shape
    assert_close(out, _truth(q, k, v, meta), **TOL, name=f"cpp {name} {heads}")


def test_auto_takes_it_for_float32_without_grad():
    meta = segment_meta(STRUCTURES["T97"])
    q, k, v = _qkv(meta, 4, 2, 64)
    assert torch.equal(
        paired_attention(q, k, v, meta), paired_attention(q, k, v, meta, backend="cpp")
    )


def test_scale_and_cached_prefix():
    """Keys [P + T]: tries hung under the cached prefix see all of it, the others none."""
    P = 9
    rows = [
        concat(pair(6, 4, [3]), pair(2, 2, [1])),
        concat(chain(5, first=PREFIX), pair(1, 3, [2])),
    ]
    rows[0][0] = PREFIX
    meta = segment_meta(rows, prefix_len=P)
    q, k, v = _qkv(meta, 6, 2, 64, seed=1)
    out = paired_attention(q, k, v, meta, scale=0.3, backend="cpp")
    assert_close(out, _truth(q, k, v, meta, 0.3), **TOL, name="cpp with a cached prefix")


def test_long_segments_and_many_tiles():
    """Segments longer than a tile, several GQA heads per tile, and a mask that matters: the
    result differs from plain causal attention over the row."""
    meta = segment_meta([pair(40, 90, [70, 3]), concat(pair(5, 30, [20]), chain(50))])
    q, k, v = _qkv(meta, 9, 3, 64, seed=2)
    out = paired_attention(q, k, v, meta, backend="cpp")
    assert_close(out, _truth(q, k, v, meta), **TOL, name="cpp long segments")
    causal = torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat_interleave(3, 1), v.repeat_interleave(3, 1), is_causal=True
    )
    assert (out - causal).abs().max() > 0.1


def test_strided_views_and_output_layout():
    """q, k, v as [B, T, H, D] buffers viewed [B, H, T, D] (how HF models hand them over), and
    a key tensor whose last stride is not 1; the output is stored [B, T, H, D]."""
    meta = segment_meta(STRUCTURES["T97"])
    B, T = meta.rows, meta.width
    g = torch.Generator().manual_seed(3)
    q = torch.randn(B, T, 8, 64, generator=g).transpose(1, 2)
    kv = torch.randn(B, T, 2, 2, 64, generator=g)
    k, v = kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)
    k_odd = torch.randn(B, 2, T, 64, 2, generator=g)[..., 0]
    assert k_odd.stride(-1) != 1
    out = paired_attention(q, k, v, meta, backend="cpp")
    assert out.transpose(1, 2).is_contiguous()
    assert_close(out, _truth(q, k, v, meta), **TOL, name="cpp on strided views")
    out = paired_attention(q, k_odd, v, meta, backend="cpp")
    assert_close(out, _truth(q, k_odd, v, meta), **TOL, name="cpp, key last stride 2")


def test_padding_attends_to_itself():
    rows = [concat(pair(3, 2, [2]), [PAD] * 5, chain(2)), chain(3)]
    meta = segment_meta(rows)
    q, k, v = _qkv(meta, 4, 2, 64)
    out = paired_attention(q, k, v, meta, backend="cpp")
    for r, i in [(0, i) for i in range(7, 12)] + [(1, i) for i in range(3, 14)]:
        for h in range(4):
            assert torch.equal(out[r, h, i], v[r, h // 2, i]), (r, h, i)


def test_nan_key_reaches_only_the_queries_that_see_it():
    """Keys outside the intervals a query sees are never read."""
    meta = segment_meta(STRUCTURES["T97"])
    q, k, v = _qkv(meta, 4, 2, 64)
    row, pos, kv_head = 0, 25, 1
    k[row, kv_head, pos, 3] = float("nan")
    out = paired_attention(q, k, v, meta, backend="cpp")
    expected = torch.zeros(out.shape[:3], dtype=torch.bool)
    sees = meta.dense_mask("cpu")[row, 0, :, pos]
    expected[row, 2:4] = sees
    assert 0 < int(sees.sum()) < meta.width
    assert torch.equal(torch.isnan(out).any(-1), expected)


def test_same_result_on_any_thread_count():
    meta = segment_meta(STRUCTURES["T129"])
    q, k, v = _qkv(meta, 6, 2, 64)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = paired_attention(q, k, v, meta, backend="cpp")
        torch.set_num_threads(max(2, threads))
        many = paired_attention(q, k, v, meta, backend="cpp")
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, many)


def test_refuses_what_it_does_not_compute():
    meta = segment_meta(STRUCTURES["T7"])
    q, k, v = _qkv(meta, 2, 2, 64)
    with pytest.raises(BackendUnavailableError, match="bfloat16"):
        paired_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), meta, backend="cpp")
    q.requires_grad_(True)
    with pytest.raises(BackendUnavailableError, match="no backward"):
        paired_attention(q, k, v, meta, backend="cpp")
    out = paired_attention(q, k, v, meta)  # auto: the differentiable reference
    out.sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()


def test_engine_blocks_run_the_kernel(monkeypatch):
    """The engine's per-trie attention runs the kernel on float32 inputs without grad, the
    per-trie SDPA with INTROSPECT_BACKEND=reference, and both give the separate forwards'
    logits."""
    import introspect.engine.attention as attn

    calls = []
    real = attn.paired_attention_cpp
    monkeypatch.setattr(attn, "paired_attention_cpp", lambda *a: calls.append(1) or real(*a))
    model = tiny_llama(hidden=64)
    rows = [concat(pair(4, 3, [2]), chain(3)), pair(2, 6, [3])]
    meta = segment_meta(rows)
    ids = torch.randint(0, model.config.vocab_size, (meta.rows, meta.width))
    pos = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 4, 5, 0, 1, 2], [0, 1, 2, 3, 4, 5, 6, 7, 2, 3, 4, 0]])
    with torch.no_grad(), paired_attention_context(model, meta, backend=BLOCKS):
        fast = model(input_ids=ids, position_ids=pos).logits
    assert len(calls) == model.config.num_hidden_layers
    monkeypatch.setenv("INTROSPECT_BACKEND", "reference")
    with torch.no_grad(), paired_attention_context(model, meta, backend=BLOCKS):
        sdpa = model(input_ids=ids, position_ids=pos).logits
    assert len(calls) == model.config.num_hidden_layers
    assert_close(fast, sdpa, atol=1e-5, rtol=1e-5, name="kernel vs per-trie SDPA")
    with torch.no_grad():
        alone = model(input_ids=ids[1:, :8]).logits[0]  # row 1's x: positions 0..7
    assert_close(fast[1, :8], alone, atol=1e-5, rtol=1e-5, name="packed x vs its own forward")


def test_blocks_reference_agrees():
    """The SDPA-per-trie path the kernel replaces gives the same result."""
    meta = segment_meta(STRUCTURES["T129"])
    q, k, v = _qkv(meta, 9, 3, 64)
    scale = 64**-0.5
    assert_close(
        paired_attention(q, k, v, meta, backend="cpp"),
        paired_attention_blocks(q, k, v, meta, scale), **TOL, name="cpp vs blocks",
    )  # fmt: skip
