"""paired_attention: segment metadata, the reference against SDPA on pack's mask, and packed
forwards of real (tiny) HF models against separate forwards of each sequence."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from asserts import assert_close, max_error
from conftest import cpu_backends
from hypothesis import given
from hypothesis import strategies as st
from tiny import tiny_llama

from introspect.engine.attention import (
    ATTN_NAME,
    paired_attention_context,
    paired_attention_unsupported,
    register_paired_attention,
    supports_paired_attention,
)
from introspect.engine.packing import build_item, pack
from introspect.ops import paired_attention, segment_meta
from introspect.ops.paired_attention import (
    PAD,
    PREFIX,
    ROOT,
    independent_blocks,
    paired_attention_blocks,
)

BACKENDS = cpu_backends("paired_attention", include_reference=True)
CONTEXT_BACKENDS = [*BACKENDS, "blocks"]  # the model registration also runs per-trie SDPA
LOW_BACKENDS = [b for b in BACKENDS if b != "cpp"]  # cpp takes float32 only
LOGIT_TOL = {"atol": 1e-5, "rtol": 1e-5}  # fp32 packed vs separate forwards

# ---------------------------------------------------------------------------------------------
# Metadata
# ---------------------------------------------------------------------------------------------

_seq = st.lists(st.integers(1, 4), min_size=1, max_size=7)  # few token ids: shared prefixes
_item = st.tuples(
    st.lists(_seq, min_size=1, max_size=4),  # prompts: x, x'...
    st.lists(st.lists(st.integers(1, 4), min_size=1, max_size=3), min_size=1, max_size=3),
    st.booleans(),  # prompts start with the cached prefix
)


def _items(spec, prefix):
    return [
        build_item(i, [(list(prefix) if under else []) + p for p in prompts], choices)
        for i, (prompts, choices, under) in enumerate(spec)
    ]


@given(
    spec=st.lists(_item, min_size=1, max_size=5),
    row_tokens=st.integers(1, 40),
    prefix=st.lists(st.integers(1, 4), min_size=0, max_size=4),
    share_rows=st.booleans(),
)
def test_dense_mask_equals_pack_mask(spec, row_tokens, prefix, share_rows):
    batch = pack(_items(spec, prefix), row_tokens=row_tokens, prefix=prefix, share_rows=share_rows)
    meta = segment_meta(batch)
    assert meta.prefix_len == batch.prefix_len
    assert (meta.rows, meta.width) == tuple(batch.input_ids.shape)
    assert torch.equal(meta.dense_mask(), batch.mask)
    # Every query sees at most max_keys keys, and some query sees exactly that many.
    assert int(batch.mask.sum(-1).max()) == meta.max_keys


@given(spec=st.lists(_item, min_size=1, max_size=4), prefix=st.lists(st.integers(1, 4), max_size=3))
def test_paths_layout_is_causal_rows(spec, prefix):
    """One root-to-leaf path per row: causal within the row, the prefix for paths under it."""
    batch = pack(_items(spec, prefix), row_tokens=64, prefix=prefix, layout="paths")
    meta = segment_meta(batch)
    B, T = batch.input_ids.shape
    P = batch.prefix_len
    expected = torch.zeros(B, T, P + T, dtype=torch.bool)
    for r in range(B):
        n = int(batch.mask[r, P:].sum())
        expected[r, :n, P : P + n] = torch.ones(n, n, dtype=torch.bool).tril()
        expected[r, :n, :P] = bool(batch.mask[r, :P].all()) and P > 0
        for i in range(n, T):
            expected[r, i, P + i] = True
    assert torch.equal(meta.dense_mask()[:, 0], expected)


@st.composite
def _forests(draw):
    """Per-row parent arrays: random forests, with padding runs and roots under a prefix."""
    prefix_len = draw(st.integers(0, 3))
    rows = []
    for _ in range(draw(st.integers(1, 3))):
        row: list[int] = []
        for i in range(draw(st.integers(0, 30))):
            live = [j for j in range(i) if row[j] != PAD]
            kinds = ["root", "pad", "prev"] + (["any"] if live else [])
            kinds += ["prefix"] if prefix_len else []
            kind = draw(st.sampled_from(kinds))
            if kind == "prev" and i > 0 and row[i - 1] != PAD:
                row.append(i - 1)
            elif kind == "any":
                row.append(draw(st.sampled_from(live)))
            elif kind == "pad":
                row.append(PAD)
            else:
                row.append(PREFIX if kind == "prefix" else ROOT)
        rows.append(row)
    return rows, prefix_len


def _closure_mask(rows, prefix_len, width):
    """Ancestor closure straight from the parents (no segments involved)."""
    P = prefix_len
    mask = torch.zeros(len(rows), width, P + width, dtype=torch.bool)
    for r, row in enumerate(rows):
        for i in range(width):
            p = row[i] if i < len(row) else PAD
            if p >= 0:
                mask[r, i] = mask[r, p]
            elif p == PREFIX:
                mask[r, i, :P] = True
            mask[r, i, P + i] = True
    return mask[:, None]


@given(_forests())
def test_parent_arrays_give_the_ancestor_closure(forest):
    rows, P = forest
    meta = segment_meta(rows, prefix_len=P)
    width = max(len(r) for r in rows)
    assert torch.equal(meta.dense_mask(), _closure_mask(rows, P, width))
    # The same from a tensor (padded with PAD) and with a wider width.
    as_tensor = torch.full((len(rows), width), PAD, dtype=torch.int64)
    for r, row in enumerate(rows):
        as_tensor[r, : len(row)] = torch.tensor(row, dtype=torch.int64)
    wide = segment_meta(as_tensor, width=width + 3, prefix_len=P)
    assert torch.equal(wide.dense_mask(), _closure_mask(rows, P, width + 3))

    # Segments are maximal: a segment never starts at a position whose parent is the one before.
    def parent(r, i):
        return rows[r][i] if i < len(rows[r]) else PAD

    segs = zip(
        meta.seg_row.tolist(), meta.seg_q_start.tolist(), meta.seg_self_only.tolist(), strict=True
    )
    for r, qs, self_only in segs:
        assert qs == 0 or parent(r, qs) != qs - 1
        assert not (self_only and qs > 0 and parent(r, qs - 1) == PAD)


def test_segments_of_one_pair_trie():
    """prefix [0, 3), x suffix [3, 5), x'_1 [5, 7), x'_2 [7, 8) under the prefix's last token,
    a choice continuation [8, 9) under x's last token, then padding."""
    parents = [ROOT, 0, 1, 2, 3, 2, 5, 2, 4, PAD, PAD]
    meta = segment_meta([parents])
    assert meta.seg_q_start.tolist() == [0, 5, 7, 8, 9]
    assert meta.seg_q_end.tolist() == [5, 7, 8, 9, 11]
    assert meta.seg_self_only.tolist() == [0, 0, 0, 0, 1]
    assert meta.intervals() == [[], [(0, 3)], [(0, 3)], [(0, 5)], []]
    assert meta.kv_ptr.dtype == torch.int32 and meta.kv_start.dtype == torch.int32
    assert (meta.max_keys, meta.longest) == (6, 5)
    # Under a cached prefix of 4 keys, the root's segment (and so every one) sees [0, 4) first.
    under = segment_meta([[PREFIX, *parents[1:]]], prefix_len=4)
    assert under.intervals() == [[(0, 4)], [(0, 4), (4, 7)], [(0, 4), (4, 7)], [(0, 4), (4, 9)], []]


@pytest.mark.parametrize(
    ("parents", "kwargs", "match"),
    [
        ([[ROOT, 1]], {}, "position 1: parent 1 is not an earlier position"),
        ([[ROOT, PAD, 1]], {}, "position 2: parent 1 is a padding position"),
        ([[ROOT, -5]], {}, "parent -5"),
        ([[PREFIX, 0]], {}, "no cached prefix"),
        ([[ROOT, 0, 1]], {"width": 2}, "width 2"),
        (torch.zeros(2, 3), {}, "integer"),
    ],
)
def test_invalid_parents_are_rejected(parents, kwargs, match):
    with pytest.raises(ValueError, match=match):
        segment_meta(parents, **kwargs)


def test_meta_moves_and_caches():
    meta = segment_meta([[ROOT, 0, 1, 0]])
    assert meta.to("cpu") is meta
    assert meta.dense_mask() is meta.dense_mask()
    blk_seg, blk_q0 = meta.query_blocks(16)
    assert blk_seg.tolist() == [0, 1] and blk_q0.tolist() == [0, 3]
    long = segment_meta([list(range(-1, 39))])
    assert long.query_blocks(16)[1].tolist() == [0, 16, 32]


# ---------------------------------------------------------------------------------------------
# The reference against SDPA on pack's mask
# ---------------------------------------------------------------------------------------------


def _random_batch(seed=0, prefix=()):
    g = torch.Generator().manual_seed(seed)

    def rnd(n):
        return torch.randint(10, 60, (n,), generator=g).tolist()

    items = []
    for i, (lp, lx, mods) in enumerate([(5, 3, [2]), (1, 1, [1, 3]), (12, 0, [4]), (3, 7, [7, 2])]):
        shared = list(prefix) + rnd(lp)
        prompts = [shared + rnd(lx)] + [shared + rnd(m) for m in mods]
        items.append(build_item(i, prompts, [[11], [12, 13]]))
    return items


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("Hq", "Hkv"), [(2, 2), (6, 2), (4, 1)])
def test_reference_equals_sdpa_on_pack_mask(dtype, Hq, Hkv):
    batch = pack(_random_batch(), row_tokens=40)
    meta = segment_meta(batch)
    B, T = batch.input_ids.shape
    g = torch.Generator().manual_seed(1)
    q = torch.randn(B, Hq, T, 32, generator=g).to(dtype)
    k = torch.randn(B, Hkv, T, 32, generator=g).to(dtype)
    v = torch.randn(B, Hkv, T, 32, generator=g).to(dtype)
    out = paired_attention(q, k, v, meta, backend="reference")
    r = Hq // Hkv
    expected = F.scaled_dot_product_attention(
        q, k.repeat_interleave(r, 1), v.repeat_interleave(r, 1), attn_mask=batch.mask
    )
    tol = 1e-6 if dtype in (torch.float32, torch.float64) else 1e-2
    assert_close(out, expected, atol=tol, rtol=tol, name="reference vs SDPA(pack mask)")
    scaled = paired_attention(q, k, v, meta, scale=0.3, backend="reference")
    expected = F.scaled_dot_product_attention(
        q, k.repeat_interleave(r, 1), v.repeat_interleave(r, 1), attn_mask=batch.mask, scale=0.3
    )
    assert_close(scaled, expected, atol=tol, rtol=tol, name="with scale")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("Hq", "Hkv"), [(2, 2), (6, 2)])
@pytest.mark.parametrize("prefix", [(), (2, 6, 20)])
def test_blocks_equal_the_reference(dtype, Hq, Hkv, prefix):
    """Per-trie SDPA (what the CPU engine runs) against the dense-mask reference, with padding,
    a cached prefix and grouped-query heads; every block checked, none merged across tries."""
    batch = pack(_random_batch(prefix=prefix), row_tokens=40, prefix=list(prefix))
    meta = segment_meta(batch)
    blocks = independent_blocks(meta)
    assert blocks is not None and len(blocks) > batch.input_ids.shape[0]  # rows hold several
    assert any(p for *_, p in blocks), "the batch should have padding"
    B, T = batch.input_ids.shape
    P = batch.prefix_len
    g = torch.Generator().manual_seed(4)
    q = torch.randn(B, Hq, T, 16, generator=g).to(dtype)
    k = torch.randn(B, Hkv, P + T, 16, generator=g).to(dtype)
    v = torch.randn(B, Hkv, P + T, 16, generator=g).to(dtype)
    got = paired_attention_blocks(q, k, v, meta, 0.25)
    want = paired_attention(q, k, v, meta, scale=0.25, backend="reference")
    tol = 2e-6 if dtype == torch.float32 else 1e-2
    assert_close(got, want, atol=tol, rtol=tol, name="blocks vs reference")
    # negative control: a block that left out its first segment's keys would not match
    bad = [(r, a + 1, b, p) if not p and b - a > 2 else (r, a, b, p) for r, a, b, p in blocks]
    meta._cache["blocks"] = bad
    wrong = paired_attention_blocks(q, k, v, meta, 0.25)
    assert not torch.allclose(wrong.float(), want.float(), atol=1e-2)


def test_blocks_of_a_layout_that_does_not_split_fall_back_to_the_reference():
    # position 4 starts a segment whose parent (1) lies before the root at 3: no blocks.
    meta = segment_meta([[ROOT, 0, 1, ROOT, 1, 4]])
    assert independent_blocks(meta) is None
    q, k, v = (
        torch.randn(1, 2, 6, 4, generator=torch.Generator().manual_seed(i)) for i in range(3)
    )
    assert_close(
        paired_attention_blocks(q, k, v, meta, 0.5),
        paired_attention(q, k, v, meta, scale=0.5, backend="reference"),
        atol=1e-6, rtol=1e-6, name="fallback",
    )  # fmt: skip


def test_reference_is_differentiable():
    meta = segment_meta([[ROOT, 0, 1, 1, PREFIX, 4, PAD]], prefix_len=2)
    q = torch.randn(1, 2, 7, 4, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 1, 9, 4, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 1, 9, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda q, k, v: paired_attention(q, k, v, meta, backend="reference"), (q, k, v)
    )


# ---------------------------------------------------------------------------------------------
# HF models: packed forwards against separate forwards
# ---------------------------------------------------------------------------------------------


def _separate_vs_packed(model, batch, logits):
    """Compares the packed logits at every prompt node with a separate forward of that prompt."""
    checked = 0
    for k, item in enumerate(batch.items):
        skip = batch.skips[k] if batch.skips else 0
        for nodes in item.prompt_nodes:
            ids = torch.tensor([[item.trie.tokens[n] for n in nodes]])
            with torch.no_grad():
                alone = model(input_ids=ids).logits[0]
            keep = [j for j, n in enumerate(nodes) if n >= skip]
            rows, cols = zip(*(batch.position(k, nodes[j]) for j in keep), strict=True)
            assert_close(
                logits[list(rows), list(cols)], alone[keep], **LOGIT_TOL,
                name=f"item {k} prompt logits",
            )  # fmt: skip
            checked += len(keep)
    assert checked > 0


@pytest.mark.parametrize("backend", CONTEXT_BACKENDS)
def test_tiny_llama_packed_matches_separate_forwards(backend):
    model = tiny_llama(hidden=64)  # head dim 16, 4 query heads over 2 kv heads
    assert supports_paired_attention(model)
    items = _random_batch(seed=2)
    batch = pack(items, row_tokens=30)
    assert batch.input_ids.shape[0] > 1 and len(batch.items) > batch.input_ids.shape[0]
    with torch.no_grad(), paired_attention_context(model, segment_meta(batch), backend=backend):
        assert model.config._attn_implementation == ATTN_NAME
        logits = model(input_ids=batch.input_ids, position_ids=batch.position_ids).logits
    assert model.config._attn_implementation == "sdpa"
    _separate_vs_packed(model, batch, logits)


@pytest.mark.parametrize("backend", CONTEXT_BACKENDS)
def test_tiny_llama_with_cached_prefix(backend):
    from transformers import DynamicCache

    model = tiny_llama(hidden=64)
    prefix = [2, 6, 20, 21, 22, 23]
    items = _random_batch(seed=3, prefix=prefix)
    items.append(build_item(len(items), [[30, 31, 32], [30, 33]], [[11]]))  # not under it
    batch = pack(items, row_tokens=30, prefix=prefix)
    assert batch.prefix_len == len(prefix) and sum(s > 0 for s in batch.skips) == len(items) - 1
    with torch.no_grad():
        cached = model.model(input_ids=torch.tensor([prefix]), use_cache=True).past_key_values
    B = batch.input_ids.shape[0]
    cache = DynamicCache()
    for i, layer in enumerate(cached.layers):
        cache.update(layer.keys.expand(B, -1, -1, -1), layer.values.expand(B, -1, -1, -1), i)
    with torch.no_grad(), paired_attention_context(model, segment_meta(batch), backend=backend):
        logits = model(
            input_ids=batch.input_ids, position_ids=batch.position_ids, past_key_values=cache
        ).logits
    _separate_vs_packed(model, batch, logits)


def _tiny(family: str, **extra):
    import transformers as tf

    cfg_cls, model_cls = {
        "qwen3": (tf.Qwen3Config, tf.Qwen3ForCausalLM),
        "gemma3": (tf.Gemma3TextConfig, tf.Gemma3ForCausalLM),
        "gemma2": (tf.Gemma2Config, tf.Gemma2ForCausalLM),
    }[family]
    torch.manual_seed(0)
    cfg = cfg_cls(
        vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=128,
        **extra,
    )  # fmt: skip
    return model_cls(cfg).eval()


@pytest.mark.parametrize(
    ("family", "extra"),
    [
        ("qwen3", {}),
        ("gemma3", {"sliding_window": 32, "layer_types": ["sliding_attention", "full_attention"]}),
    ],
)
def test_other_families_match_separate_forwards(family, extra):
    model = _tiny(family, **extra)
    assert supports_paired_attention(model)
    items = _random_batch(seed=4)
    batch = pack(items, row_tokens=30)
    meta = segment_meta(batch)
    with torch.no_grad(), paired_attention_context(model, meta, backend="reference"):
        logits = model(input_ids=batch.input_ids, position_ids=batch.position_ids).logits
    _separate_vs_packed(model, batch, logits)


def test_sliding_window_narrower_than_the_context_is_refused():
    model = _tiny("gemma3", sliding_window=4, layer_types=["sliding_attention", "full_attention"])
    batch = pack(_random_batch(seed=4), row_tokens=30)
    meta = segment_meta(batch)
    assert meta.max_keys > 4
    with (
        torch.no_grad(),
        paired_attention_context(model, meta),
        pytest.raises(NotImplementedError, match="sliding window of 4"),
    ):
        model(input_ids=batch.input_ids, position_ids=batch.position_ids)
    assert model.config._attn_implementation != ATTN_NAME  # restored after the error


def test_unsupported_models_are_refused():
    gemma2 = _tiny("gemma2")  # attention-logit softcapping
    assert "softcapping" in paired_attention_unsupported(gemma2)
    assert not supports_paired_attention(gemma2)
    meta = segment_meta([[ROOT, 0]])
    with pytest.raises(ValueError, match="softcapping"), paired_attention_context(gemma2, meta):
        pass
    assert "not a transformers" in paired_attention_unsupported(torch.nn.Linear(2, 2))


def test_metadata_from_the_call_or_nowhere():
    model = tiny_llama(hidden=64)
    batch = pack(_random_batch(seed=5), row_tokens=30)
    meta = segment_meta(batch)
    register_paired_attention()
    model.set_attn_implementation(ATTN_NAME)
    try:
        with torch.no_grad():
            with pytest.raises(RuntimeError, match="paired_attention_context"):
                model(input_ids=batch.input_ids, position_ids=batch.position_ids)
            by_kwarg = model(
                input_ids=batch.input_ids, position_ids=batch.position_ids, segment_meta=meta
            ).logits
    finally:
        model.set_attn_implementation("sdpa")
    with torch.no_grad():
        dense = model(
            input_ids=batch.input_ids, position_ids=batch.position_ids, attention_mask=batch.mask
        ).logits
    assert_close(by_kwarg, dense, **LOGIT_TOL, name="kwarg route vs dense mask")


# ---------------------------------------------------------------------------------------------
# Reduced precision: under autocast the op does what SDPA does there
# ---------------------------------------------------------------------------------------------


def _autocast_qkv(meta, low, *, v_low, Hq=4, Hkv=2, D=16, seed=0):
    """q, k as a Llama-style layer hands them over under autocast (float32: RoPE's float32
    cos/sin promote them), v in the autocast dtype, or float32 when a float32 prefix cache was
    concatenated in front of it."""
    g = torch.Generator().manual_seed(seed)
    B, T, P = meta.rows, meta.width, meta.prefix_len
    q = torch.randn(B, Hq, T, D, generator=g)
    k = torch.randn(B, Hkv, P + T, D, generator=g)
    v = torch.randn(B, Hkv, P + T, D, generator=g)
    return q, k, v.to(low) if v_low else v


@pytest.mark.parametrize("backend", LOW_BACKENDS)
@pytest.mark.parametrize("low", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("prefix", [(), (2, 6, 20, 21)], ids=["no-prefix", "prefix"])
def test_autocast_runs_in_the_autocast_dtype_like_sdpa(backend, low, prefix):
    batch = pack(_random_batch(seed=6, prefix=prefix), row_tokens=30, prefix=prefix)
    meta = segment_meta(batch)
    q, k, v = _autocast_qkv(meta, low, v_low=not prefix)
    r = q.shape[1] // k.shape[1]
    mask = meta.dense_mask()
    with torch.autocast("cpu", dtype=low):
        out = paired_attention(q, k, v, meta, backend=backend)
        sdpa = F.scaled_dot_product_attention(
            q, k.repeat_interleave(r, 1), v.repeat_interleave(r, 1), attn_mask=mask
        )
    assert out.dtype == sdpa.dtype == low
    # Truth: float64 attention of the inputs as autocast rounds them.
    q64, k64, v64 = (t.to(low).to(torch.float64) for t in (q, k, v))
    truth = paired_attention(q64, k64, v64, meta, backend="reference")
    bound = 2.0 * max_error(sdpa, truth) + 1e-6
    assert_close(out, truth, atol=bound, rtol=0, name=f"{backend} under autocast({low})")


def test_autocast_leaves_float64_alone_and_mixed_dtypes_fail_outside_it():
    meta = segment_meta([[ROOT, 0, 1, PAD]])
    q, k, v = (torch.randn(1, 2, 4, 8, dtype=torch.float64) for _ in range(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert paired_attention(q, k, v, meta, backend="reference").dtype == torch.float64
    with pytest.raises(TypeError, match="must share a dtype"):
        paired_attention(q.float(), k.float(), v.bfloat16(), meta)


PREFIXES = pytest.mark.parametrize(
    "prefix", [(), (2, 6, 20, 21, 22, 23)], ids=["no-prefix", "prefix"]
)


def _engine_under_autocast(backend: str, prefix, device: str = "cpu") -> None:
    """The path of `extract --dtype autocast-bf16` with paired attention: the packed forward
    under autocast, with and without a float32 prefix cache, is as close to the float32 forward
    as the same forward with the dense mask and the model's SDPA."""
    from introspect.engine.forward import PrefixCache, forward_packed

    model = tiny_llama(hidden=64).to(device)
    batch = pack(_random_batch(seed=3, prefix=prefix), row_tokens=30, prefix=prefix)
    cache = PrefixCache(model, prefix) if prefix else None

    def run(autocast, attention):
        res = forward_packed(
            model, batch, (0, 1), prefix=cache, autocast=autocast, attention=attention,
            attention_backend=backend,
        )  # fmt: skip
        logps = torch.cat([t.flatten() for per in res.logps for t in per])
        return logps, torch.cat([res.hidden[layer].flatten() for layer in (0, 1)])

    exact = run(None, "mask")
    dense = run(torch.bfloat16, "mask")
    paired = run(torch.bfloat16, "paired")
    for name, got, ref, base in zip(("logps", "hidden"), paired, exact, dense, strict=True):
        bound = 2.0 * max_error(base, ref) + 1e-5
        assert_close(got, ref, atol=bound, rtol=0, name=f"{name}, paired {backend} vs float32")


@pytest.mark.parametrize("backend", [*LOW_BACKENDS, "blocks"])
@PREFIXES
def test_engine_forward_under_autocast(backend, prefix):
    _engine_under_autocast(backend, prefix)


@pytest.mark.cuda
@PREFIXES
def test_engine_forward_under_autocast_on_gpu(prefix):
    """On CUDA ``auto`` runs the Triton kernel: the path `extract --device cuda --dtype
    autocast-bf16` takes."""
    _engine_under_autocast("auto", prefix, "cuda")
