"""Fused elementwise ops (rms_norm, silu_mul, rope): the cpp backend against the PyTorch
reference (Hugging Face's formulas op for op), bf16 rounding, threads, autograd fallback, bad
input, and negative controls showing that the bounds catch a wrong eps or a swapped rope half.

Bounds: rope rounds exactly as the reference does and matches it bit for bit. rms_norm sums the
squares in another order than torch's reduction: float32 within 2e-6 relative, bfloat16 within
one bfloat16 ulp (the float32 value before the rounding may differ in its last bit). silu_mul's
exp is its own polynomial (Cephes expf, within 2 ulp), not torch's: float32 within 2e-6
relative; bfloat16 within one ulp (a float32 silu one bit away can flip a rounding; none of
the tested values does).
"""

from __future__ import annotations

import pytest
import torch
from asserts import assert_close
from hypothesis import given
from hypothesis import strategies as st

from introspect.ops import (
    BackendUnavailableError,
    available_backends,
    fused,
    rms_norm,
    rope,
    silu_mul,
)
from introspect.ops.fused import rms_norm_reference, rope_reference, silu_mul_reference

pytestmark = pytest.mark.skipif(
    "cpp" not in available_backends("rms_norm"), reason="introspect._C with the fused kernels"
)
WIDTHS = [1, 15, 64, 576, 577, 1536]
ROWS = [1, 7, 33]
EPS = 1e-5


def _randn(*shape, dtype=torch.float32, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(dtype)


def bf16_ulps(a: torch.Tensor, b: torch.Tensor) -> int:
    """Largest distance in bfloat16 steps between a and b (bit patterns on one ordered line)."""

    def ordered(t):
        i = t.contiguous().view(torch.int16).to(torch.int32)
        return torch.where(i < 0, -(i & 0x7FFF), i)

    return int((ordered(a) - ordered(b)).abs().max()) if a.numel() else 0


def _check(actual, expected, dtype, *, rtol, ulps, name):
    assert actual.dtype == expected.dtype, name
    if dtype == torch.float32:
        assert_close(actual, expected, atol=0.0, rtol=rtol, name=name)
    else:
        assert bf16_ulps(actual, expected) <= ulps, f"{name}: {bf16_ulps(actual, expected)} ulps"


# ------------------------------------------------------------------------------------ rms_norm


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n", WIDTHS)
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("with_residual", [False, True])
def test_rms_norm_matches_reference(dtype, n, rows, with_residual):
    x = _randn(2, rows, n, dtype=dtype, seed=n + rows)
    w = (_randn(n, seed=1) * 0.5 + 1).to(dtype)
    res = _randn(2, rows, n, dtype=dtype, seed=2, scale=3.0) if with_residual else None
    got = rms_norm(x, w, EPS, res, backend="cpp")
    want = rms_norm_reference(x, w, EPS, res)
    if with_residual:
        assert torch.equal(got[1], want[1]), "the residual sum is one rounding of x + residual"
        got, want = got[0], want[0]
    _check(got, want, dtype, rtol=2e-6, ulps=1, name=f"rms_norm {dtype} {rows}x{n}")


@pytest.mark.parametrize(
    "x_dtype,w_dtype", [(torch.bfloat16, torch.float32), (torch.float32, torch.bfloat16)]
)
def test_rms_norm_mixed_dtypes_promote_like_torch(x_dtype, w_dtype):
    x, w = _randn(5, 577, dtype=x_dtype), (_randn(577, seed=3) + 1).to(w_dtype)
    got, want = rms_norm(x, w, EPS, backend="cpp"), rms_norm_reference(x, w, EPS)
    assert got.dtype == want.dtype == torch.float32
    # bf16 x: h is rounded to bf16 before the weight, so a last-bit difference in float32
    # before that rounding shows as one bf16 step of h.
    rtol = 2e-6 if x_dtype == torch.float32 else 2**-8
    assert_close(got, want, atol=0.0, rtol=rtol, name="rms_norm mixed")


@pytest.mark.parametrize("layout", ["row_strided", "transposed"])
def test_rms_norm_non_contiguous(layout):
    base = _randn(40, 2 * 577, seed=4)
    x = base[:, :577] if layout == "row_strided" else _randn(577, 40, seed=4).t()
    w = _randn(577, seed=5) + 1
    assert_close(rms_norm(x, w, EPS, backend="cpp"), rms_norm_reference(x, w, EPS), atol=0.0,
                 rtol=2e-6, name=layout)  # fmt: skip


def test_rms_norm_catches_a_wrong_eps():
    x, w = _randn(9, 576, seed=6), _randn(576, seed=7) + 1
    got = rms_norm(x, w, EPS, backend="cpp")
    with pytest.raises(AssertionError, match="differ beyond"):
        assert_close(got, rms_norm_reference(x, w, 2 * EPS), atol=0.0, rtol=2e-6)
    with pytest.raises(AssertionError, match="ulps"):
        _check(rms_norm(x.bfloat16(), w.bfloat16(), EPS, backend="cpp"),
               rms_norm_reference(x.bfloat16(), w.bfloat16(), 1e-1), torch.bfloat16,
               rtol=0, ulps=1, name="bf16 eps")  # fmt: skip


def test_rms_norm_zero_row_and_nan():
    x = _randn(3, 64, seed=8)
    x[0] = 0.0
    x[2, 5] = float("nan")
    w = _randn(64, seed=9)
    got, want = rms_norm(x, w, EPS, backend="cpp"), rms_norm_reference(x, w, EPS)
    assert_close(got, want, atol=0.0, rtol=2e-6, name="zero row and NaN row")


# ------------------------------------------------------------------------------------ silu_mul


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n", WIDTHS)
@pytest.mark.parametrize("rows", ROWS)
def test_silu_mul_matches_reference(dtype, n, rows):
    gate = _randn(rows, n, dtype=dtype, seed=n, scale=4.0)
    up = _randn(rows, n, dtype=dtype, seed=n + 1)
    _check(silu_mul(gate, up, backend="cpp"), silu_mul_reference(gate, up), dtype, rtol=2e-6,
           ulps=1, name=f"silu_mul {dtype} {rows}x{n}")  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_silu_mul_extremes(dtype):
    # Large |gate| (exp overflow and underflow), ±inf, NaN and values that round the exp near
    # its clamps; silu(-inf) * u is NaN in torch (−inf / inf), as here.
    gate = torch.tensor([0.0, -0.0, 1e-30, -1e-30, 20.0, -20.0, 86.0, 87.0, 88.0, 88.8, 89.0,
                         -86.0, -88.0, -88.8, -89.0, -100.0, 100.0, 1e30, -1e30, float("inf"),
                         float("-inf"), float("nan")])  # fmt: skip
    up = torch.linspace(-3, 3, gate.numel())
    got, want = (
        silu_mul(gate.to(dtype), up.to(dtype), backend="cpp"),
        silu_mul_reference(gate.to(dtype), up.to(dtype)),
    )
    assert_close(got, want, atol=0.0, rtol=2e-6 if dtype == torch.float32 else 2**-7, name="ext")


def test_silu_mul_catches_a_wrong_activation():
    gate, up = _randn(4, 64, seed=10, scale=3.0), _randn(4, 64, seed=11)
    with pytest.raises(AssertionError, match="differ beyond"):
        assert_close(silu_mul(gate, up, backend="cpp"), torch.sigmoid(gate) * up, atol=0.0,
                     rtol=2e-6)  # fmt: skip


# ---------------------------------------------------------------------------------------- rope


def _rope_inputs(B, Hq, Hk, S, D, dtype=torch.float32, cs_dtype=None, hf_layout=False):
    if hf_layout:  # q_proj(x).view(B, S, H, D).transpose(1, 2), as the attention makes it
        q = _randn(B, S, Hq, D, dtype=dtype, seed=1).transpose(1, 2)
        k = _randn(B, S, Hk, D, dtype=dtype, seed=2).transpose(1, 2)
    else:
        q, k = _randn(B, Hq, S, D, dtype=dtype, seed=1), _randn(B, Hk, S, D, dtype=dtype, seed=2)
    pos = torch.arange(S, dtype=torch.float32)[None, :, None] + torch.arange(B)[:, None, None]
    freq = 10000 ** (-torch.arange(0, D, 2, dtype=torch.float32) / D)
    ang = torch.cat([pos * freq, pos * freq], -1)
    cs = cs_dtype or dtype
    return q, k, ang.cos().to(cs), ang.sin().to(cs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1, 2), (2, 9, 3, 7, 64), (3, 4, 2, 5, 30),
                                   (1, 2, 1, 33, 130)])  # fmt: skip
@pytest.mark.parametrize("hf_layout", [False, True])
def test_rope_matches_reference_bitwise(dtype, shape, hf_layout):
    q, k, cos, sin = _rope_inputs(*shape, dtype=dtype, hf_layout=hf_layout)
    q0, k0 = q.clone(), k.clone()
    (qa, ka), (qb, kb) = rope(q, k, cos, sin, backend="cpp"), rope_reference(q, k, cos, sin)
    assert qa.dtype == qb.dtype and torch.equal(qa, qb) and torch.equal(ka, kb)
    assert torch.equal(q, q0) and torch.equal(k, k0), "inputs unchanged"


def test_rope_mixed_dtype_and_broadcast_cos():
    # Under bf16 autocast the projections are bf16 while cos/sin stay float32: float32 out.
    q, k, cos, sin = _rope_inputs(2, 9, 3, 7, 64, dtype=torch.bfloat16, cs_dtype=torch.float32)
    (qa, ka), (qb, kb) = rope(q, k, cos, sin, backend="cpp"), rope_reference(q, k, cos, sin)
    assert qa.dtype == torch.float32 and torch.equal(qa, qb) and torch.equal(ka, kb)
    (qa, ka), (qb, kb) = rope(q, k, cos[:1], sin[:1]), rope_reference(q, k, cos[:1], sin[:1])
    assert torch.equal(qa, qb) and torch.equal(ka, kb)


def test_rope_catches_a_swapped_half():
    q, k, cos, sin = _rope_inputs(2, 9, 3, 7, 64)

    def swapped(x):  # rotate_half with the halves the wrong way round
        h = x.shape[-1] // 2
        return torch.cat((x[..., h:], -x[..., :h]), dim=-1)

    qa, _ = rope(q, k, cos, sin, backend="cpp")
    wrong = q * cos.unsqueeze(1) + swapped(q) * sin.unsqueeze(1)
    with pytest.raises(AssertionError, match="differ beyond"):
        assert_close(qa, wrong, atol=0.0, rtol=2e-6)


@given(
    rows=st.integers(1, 40),
    n=st.integers(1, 200),
    pad=st.integers(0, 17),
    scale=st.sampled_from([1e-3, 1.0, 30.0, 1e4]),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    seed=st.integers(0, 2**16),
)
def test_hypothesis_row_strided_inputs(rows, n, pad, scale, dtype, seed):
    """Any width, row count, magnitude and row stride (views of wider rows)."""

    def view(s):
        return _randn(rows, n + pad, dtype=dtype, seed=seed + s, scale=scale)[:, :n]

    x, res, w = view(0), view(1), (_randn(n, seed=seed) + 1).to(dtype)
    got, want = rms_norm(x, w, EPS, res, backend="cpp"), rms_norm_reference(x, w, EPS, res)
    assert torch.equal(got[1], want[1])
    _check(got[0], want[0], dtype, rtol=2e-6, ulps=1, name="rms_norm")
    g, u = view(2), view(3)
    _check(silu_mul(g, u, backend="cpp"), silu_mul_reference(g, u), dtype, rtol=2e-6, ulps=1,
           name="silu_mul")  # fmt: skip


# ---------------------------------------------------------------------------- threads, registry


@pytest.mark.parametrize("openmp", ["0", "1"])
def test_two_threads_equal_one(monkeypatch, openmp):
    monkeypatch.setenv("INTROSPECT_NO_OPENMP", "1" if openmp == "0" else "0")
    x, w, res = _randn(257, 577, seed=12), _randn(577, seed=13) + 1, _randn(257, 577, seed=14)
    g, u = _randn(257, 1536, seed=15, scale=4.0), _randn(257, 1536, seed=16)
    q, k, cos, sin = _rope_inputs(2, 9, 3, 120, 64, hf_layout=True)
    before = torch.get_num_threads()
    outs = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            y, s = rms_norm(x, w, EPS, res, backend="cpp")
            qo, ko = rope(q, k, cos, sin, backend="cpp")
            outs.append((y, s, silu_mul(g, u, backend="cpp"), qo, ko))
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*outs, strict=True):
        assert torch.equal(a, b)
    assert_close(outs[1][0], rms_norm_reference(x, w, EPS, res)[0], atol=0.0, rtol=2e-6)
    assert_close(outs[1][2], silu_mul_reference(g, u), atol=0.0, rtol=2e-6)
    assert torch.equal(outs[1][3], rope_reference(q, k, cos, sin)[0])


def _spy(monkeypatch, name):
    calls = []
    real = getattr(fused, name)
    monkeypatch.setattr(fused, name, lambda *a: calls.append(1) or real(*a))
    return calls


def test_autograd_falls_back_to_the_reference(monkeypatch):
    calls = _spy(monkeypatch, "_rms_op")
    x, w = _randn(3, 64, seed=17).requires_grad_(), _randn(64, seed=18) + 1
    y = rms_norm(x, w, EPS)
    y.sum().backward()
    assert not calls and x.grad is not None and y.grad_fn is not None
    assert_close(x.grad, torch.autograd.grad(rms_norm_reference(x, w, EPS).sum(), x)[0],
                 atol=0.0, rtol=0.0)  # fmt: skip
    with pytest.raises(BackendUnavailableError, match="requires grad"):
        rms_norm(x, w, EPS, backend="cpp")
    with torch.no_grad():
        rms_norm(x, w, EPS)
    with torch.inference_mode():
        rms_norm(x, w, EPS)
    assert len(calls) == 2, "no grad: the cpp backend runs"


def test_silu_and_rope_fall_back_under_autograd(monkeypatch):
    silu_calls, rope_calls = _spy(monkeypatch, "_silu_op"), _spy(monkeypatch, "_rope_op")
    g, u = _randn(3, 16, seed=19).requires_grad_(), _randn(3, 16, seed=20)
    silu_mul(g, u).sum().backward()
    q, k, cos, sin = _rope_inputs(1, 2, 1, 3, 8)
    q.requires_grad_()
    rope(q, k, cos, sin)[0].sum().backward()
    assert not silu_calls and not rope_calls and g.grad is not None and q.grad is not None
    silu_mul(g.detach(), u), rope(q.detach(), k, cos, sin)
    assert silu_calls and rope_calls
    silu_mul(g.detach().bfloat16(), u.bfloat16())  # auto prefers torch's silu in bfloat16
    assert len(silu_calls) == 1


def test_unsupported_inputs_fall_back_or_raise():
    x64, w64 = _randn(3, 8, dtype=torch.float64), _randn(8, dtype=torch.float64)
    assert_close(rms_norm(x64, w64, EPS), rms_norm_reference(x64, w64, EPS), atol=0, rtol=0)
    with pytest.raises(BackendUnavailableError, match="float64"):
        rms_norm(x64, w64, EPS, backend="cpp")
    with pytest.raises(BackendUnavailableError, match=r"up is torch\.bfloat16"):
        silu_mul(_randn(2, 4), _randn(2, 4, dtype=torch.bfloat16), backend="cpp")
    q, k, cos, sin = _rope_inputs(1, 2, 1, 3, 8)
    with pytest.raises(BackendUnavailableError, match="odd"):
        rope(q[..., :7], k[..., :7], cos[..., :7], sin[..., :7], backend="cpp")
    qo, _ = rope(q[..., :7], k[..., :7], cos[..., :7], sin[..., :7])  # auto: the reference
    assert torch.equal(qo, rope_reference(q[..., :7], k[..., :7], cos[..., :7], sin[..., :7])[0])


def test_bad_input_gives_clear_errors():
    x = _randn(3, 8)
    with pytest.raises(TypeError, match="rms_norm: x must be a floating-point tensor"):
        rms_norm(torch.ones(3, 8, dtype=torch.int64), torch.ones(8), EPS)
    with pytest.raises(ValueError, match=r"rms_norm: weight must be 1-D of x's last dimension"):
        rms_norm(x, torch.ones(7), EPS)
    with pytest.raises(ValueError, match="residual must have x's shape and dtype"):
        rms_norm(x, torch.ones(8), EPS, x.bfloat16())
    with pytest.raises(ValueError, match="silu_mul: gate and up must have one shape"):
        silu_mul(x, x[:2])
    q, k, cos, sin = _rope_inputs(1, 2, 1, 3, 8)
    with pytest.raises(ValueError, match="rope: cos must be"):
        rope(q, k, cos[:, :2], sin)
    with pytest.raises(ValueError, match="rope: q must be 4-D"):
        rope(q[0], k, cos, sin)
    with pytest.raises(TypeError, match=r"rope: sin must be a torch\.Tensor"):
        rope(q, k, cos, sin.tolist())


# ------------------------------------------------------------- triton (Liger-Kernel) on CUDA


def test_the_gpu_backend_is_liger_and_refuses_cpu_tensors_with_a_reason():
    from introspect.ops import implemented_backends

    for op in ("rms_norm", "silu_mul", "rope"):
        assert "triton" in implemented_backends(op)
    x, w = torch.randn(3, 8), torch.ones(8)
    with pytest.raises(BackendUnavailableError):
        rms_norm(x, w, 1e-6, backend="triton")


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_liger_kernels_match_the_reference_on_cuda(dtype):
    pytest.importorskip("liger_kernel")
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(64, 576, device="cuda", generator=g).to(dtype)
    w = torch.randn(576, device="cuda", generator=g).to(dtype)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(rms_norm(x, w, 1e-5, backend="triton"),
                               rms_norm_reference(x, w, 1e-5), **tol)  # fmt: skip
    up = torch.randn(64, 576, device="cuda", generator=g).to(dtype)
    torch.testing.assert_close(silu_mul(x, up, backend="triton"), silu_mul_reference(x, up), **tol)
    q = torch.randn(2, 9, 33, 64, device="cuda", generator=g).to(dtype)
    k = torch.randn(2, 3, 33, 64, device="cuda", generator=g).to(dtype)
    ang = torch.randn(2, 33, 32, device="cuda", generator=g)
    cos = torch.cat([ang.cos()] * 2, -1).to(dtype)
    sin = torch.cat([ang.sin()] * 2, -1).to(dtype)
    got, want = rope(q, k, cos, sin, backend="triton"), rope_reference(q, k, cos, sin)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, **tol)
