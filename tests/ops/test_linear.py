"""linear: the onednn backend (oneDNN's GEMM on a prepacked weight) against float64 numpy and
F.linear, stale packed weights, autograd fallback, backend selection and bad input.

Bound: a float32 GEMM's error grows with the summed magnitudes, so every output element must lie
within 1e-6 · (|x| @ |w|ᵀ + |b|) of the float64 product; F.linear meets the same bound, and a
wrong weight, transposition or bias misses it by orders of magnitude (the negative control)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from introspect.ops import (
    BackendUnavailableError,
    _registry,
    available_backends,
    linear,
    pack_linear_weight,
)

pytestmark = pytest.mark.skipif(
    "onednn" not in available_backends("linear"), reason="PyTorch built without oneDNN"
)
SHAPES = [
    ((1,), 1, 1),
    ((7,), 15, 3),
    ((2, 33), 64, 96),
    ((3, 5, 17), 576, 192),
    ((257,), 1536, 576),
]


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _numpy_linear(x, w, b):
    x64, w64 = x.double().numpy(), w.double().numpy()
    y = x64 @ w64.T + (0.0 if b is None else b.double().numpy())
    scale = np.abs(x64) @ np.abs(w64).T + (0.0 if b is None else np.abs(b.double().numpy()))
    return y, scale


def _within(y: torch.Tensor, expected: np.ndarray, scale: np.ndarray, name: str) -> None:
    err = np.abs(y.double().numpy() - expected)
    worst = float((err / (scale + 1e-30)).max())
    assert (err <= 1e-6 * scale + 1e-30).all(), f"{name}: error {worst:.2e} of the scale"


@pytest.mark.parametrize("lead,k,n", SHAPES)
@pytest.mark.parametrize("bias", [False, True])
def test_onednn_matches_float64(lead, k, n, bias):
    x, w = _randn(*lead, k, seed=1), _randn(n, k, seed=2)
    b = _randn(n, seed=3) if bias else None
    expected, scale = _numpy_linear(x, w, b)
    packed = pack_linear_weight(w)
    with torch.no_grad():
        y = linear(x, w, b, packed=packed, backend="onednn")
        ref = linear(x, w, b, backend="reference")
    assert y.shape == (*lead, n) and y.dtype == torch.float32
    _within(y, expected, scale, "onednn")
    _within(ref, expected, scale, "F.linear")
    # negative controls: the bound catches a transposed-shape weight and a dropped bias
    wrong = linear(x, _randn(n, k, seed=9), b, backend="reference")
    with pytest.raises(AssertionError):
        _within(wrong, expected, scale, "wrong weight")
    if bias:
        with pytest.raises(AssertionError):
            _within(linear(x, w, None, packed=packed), expected, scale, "no bias")


def test_strided_input():
    x, w = _randn(4, 9, 64), _randn(32, 64, seed=1)
    xs = x[:, ::2]  # not contiguous
    expected, scale = _numpy_linear(xs.contiguous(), w, None)
    with torch.no_grad():
        _within(linear(xs, w, packed=pack_linear_weight(w)), expected, scale, "strided")


def test_auto_takes_onednn_only_with_a_current_packed_weight_and_no_grad():
    w = _randn(16, 8)
    packed = pack_linear_weight(w)
    cpu = torch.device("cpu")

    def chosen(**sizes):
        return _registry.select("linear", "auto", cpu, torch.float32, sizes)[0]

    assert chosen(grad=False, packed=True) == "onednn"
    assert chosen(grad=False, packed=False) == "reference"
    assert chosen(grad=True, packed=True) == "reference"
    assert _registry.select("linear", "auto", cpu, torch.bfloat16, {"packed": True})[0] == (
        "reference"
    )
    with torch.no_grad():
        w.mul_(2.0)  # changed in place: the packed copy is stale
    assert not packed.current(w)
    x = _randn(3, 8, seed=4)
    with torch.no_grad():
        y = linear(x, w, packed=packed)
    expected, scale = _numpy_linear(x, w, None)
    _within(y, expected, scale, "after an in-place change")
    with pytest.raises(BackendUnavailableError, match="packed"):
        linear(x, w, packed=packed, backend="onednn")


def test_autograd_falls_back_to_the_reference():
    x = _randn(5, 8).requires_grad_()
    w = _randn(4, 8, seed=1).requires_grad_()
    y = linear(x, w, packed=pack_linear_weight(w.detach()))
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), w.detach().sum(0).expand(5, 8).numpy(), atol=1e-5)
    np.testing.assert_allclose(w.grad.numpy(), x.detach().sum(0).expand(4, 8).numpy(), atol=1e-5)


def test_bad_input():
    w = _randn(4, 8)
    with pytest.raises(ValueError, match="do not fit"):
        linear(_randn(3, 7), w)
    with pytest.raises(ValueError, match="bias must be"):
        linear(_randn(3, 8), w, _randn(5))
    with pytest.raises(TypeError, match="floating-point"):
        linear(torch.ones(3, 8, dtype=torch.long), w)
    with pytest.raises(ValueError, match="2-D float32 CPU"):
        pack_linear_weight(w.double())
