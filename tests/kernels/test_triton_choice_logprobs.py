"""Triton choice_logprobs kernels against dense float64 log-softmax (interpreter on CPU)."""

from __future__ import annotations

import math
import os

import pytest
import torch

# tests/conftest.py turns on the Triton interpreter when there is no GPU.
pytest.importorskip("triton")

from asserts import assert_close

from introspect.kernels import choice_logprobs as k
from introspect.ops import available_backends, choice_logprobs

pytestmark = pytest.mark.triton

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cpu" if INTERPRET or not torch.cuda.is_available() else "cuda"
F64 = torch.float64
F32, BF16, F16 = torch.float32, torch.bfloat16, torch.float16

# (M, V, D, C, hidden dtype, weight dtype, bias, softcap, layout): awkward sizes (V never a
# multiple of the vocabulary tile, D not of the D chunk), every dtype and mixed pairs.
CASES = [
    (1, 1, 1, 1, F32, F32, False, None, "contiguous"),
    (1, 7, 3, 2, F32, F32, True, None, "contiguous"),
    (5, 300, 17, 3, BF16, BF16, False, 3.0, "contiguous"),
    (37, 1001, 40, 5, F32, F32, True, None, "row_strided"),
    (70, 513, 96, 3, F16, F16, True, 30.0, "contiguous"),
    (16, 257, 64, 2, F32, BF16, True, None, "column_sliced"),
    (3, 600, 33, 4, F16, F32, False, 1.0, "row_strided"),
    (97, 130, 129, 2, BF16, BF16, True, None, "column_sliced"),
]
# Everything accumulates in float32: one float32-level bound for every dtype, relative to the
# largest |logit| (the truth uses the same rounded inputs).
ATOL, RTOL = 2e-6, 2e-6


def _case_id(case) -> str:
    M, V, D, C, hd, wd, bias, cap, layout = case
    return (f"M{M}-V{V}-D{D}-C{C}-{str(hd)[6:]}-{str(wd)[6:]}-{'b' if bias else 'nob'}"
            f"-cap{cap}-{layout}")  # fmt: skip


def _inputs(M, V, D, C, hd, wd, bias, cap, layout, seed=0):
    g = torch.Generator().manual_seed(seed)
    if layout == "row_strided":  # every other row of a wider buffer
        hidden = torch.randn(2 * M, D + 3, generator=g)[::2, 1 : D + 1]
    elif layout == "column_sliced":
        hidden = torch.randn(M, D + 9, generator=g)[:, :D]
    else:
        hidden = torch.randn(M, D, generator=g)
    weight = torch.randn(V, D, generator=g) * 3 / math.sqrt(D)
    if layout == "column_sliced":  # the head as a column slice of a wider matrix
        weight = torch.cat([weight, torch.randn(V, 4, generator=g)], 1)[:, :D]
    b = torch.randn(V, generator=g).to(DEVICE) if bias else None
    choices = torch.randint(0, V, (M, C), generator=g)
    if M > 1 and C > 1:
        choices[1, 0] = -1
    return hidden.to(DEVICE, hd), weight.to(DEVICE, wd), b, choices.to(DEVICE), cap


def _truth(hidden, weight, bias, choices, cap):
    logits = hidden.cpu().to(F64) @ weight.cpu().to(F64).T
    if bias is not None:
        logits = logits + bias.cpu().to(F64)
    if cap is not None:
        logits = torch.tanh(logits / cap) * cap
    lse = torch.logsumexp(logits, -1)
    ids = choices.cpu()
    logp = (logits.gather(1, ids.clamp(min=0)) - lse[:, None]).masked_fill(ids < 0, -math.inf)
    return logp, lse, logits


def _check(logp, lse, truth, label=""):
    t_logp, t_lse, logits = truth
    finite = logits[torch.isfinite(logits)]
    scale = 1.0 + (float(finite.abs().max()) if finite.numel() else 0.0)
    assert logp.dtype == torch.float32 and lse.dtype == torch.float32
    assert_close(lse.cpu(), t_lse, atol=ATOL * scale, rtol=RTOL, name=f"{label} lse")
    assert_close(logp.cpu(), t_logp, atol=ATOL * scale, rtol=RTOL, name=f"{label} logp")


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_matches_dense_float64(case):
    hidden, weight, bias, choices, cap = _inputs(*case)
    logp, lse = k.choice_logprobs_fwd(hidden, weight, bias, choices, cap)
    assert logp.shape == choices.shape and lse.shape == (hidden.shape[0],)
    _check(logp, lse, _truth(hidden, weight, bias, choices, cap), _case_id(case))


@pytest.mark.parametrize("splits", [1, 3, 1000])
def test_any_number_of_vocabulary_splits(splits):
    case = (37, 1001, 40, 3, F32, F32, True, 5.0, "contiguous")
    hidden, weight, bias, choices, cap = _inputs(*case)
    a = k.choice_logprobs_fwd(hidden, weight, bias, choices, cap, splits=splits)
    b = k.choice_logprobs_fwd(hidden, weight, bias, choices, cap, splits=splits)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])  # deterministic
    _check(*a, _truth(hidden, weight, bias, choices, cap), f"splits={splits}")


class _PoisonedTorch:
    """``torch`` stand-in whose ``empty`` hands out NaN-filled memory."""

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def empty(*size, dtype=None, device=None, **kwargs):
        out = torch.empty(*size, dtype=dtype, device=device, **kwargs)
        return out.fill_(float("nan")) if out.is_floating_point() else out.fill_(-7)


def test_outputs_do_not_read_uninitialised_memory(monkeypatch):
    monkeypatch.setattr(k, "torch", _PoisonedTorch())
    case = (70, 700, 20, 3, F32, F32, True, None, "row_strided")
    hidden, weight, bias, choices, cap = _inputs(*case)
    logp, lse = k.choice_logprobs_fwd(hidden, weight, bias, choices, cap, splits=3)
    _check(logp, lse, _truth(hidden, weight, bias, choices, cap), "poisoned")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the interpreter's numpy sees the NaNs
def test_non_finite_values():
    hidden, weight, bias, choices, _ = _inputs(6, 300, 12, 3, F32, F32, True, None, "contiguous")
    choices[1, 0] = 5  # no padding here
    hidden[1, 3] = math.nan  # row 1: every logit NaN
    bias[150] = math.inf  # +inf logit in every row: lse = inf
    choices[2, 0] = 150
    logp, lse = k.choice_logprobs_fwd(hidden, weight, bias, choices, None, splits=2)
    assert torch.isnan(lse[1]) and torch.isnan(logp[1]).all()
    assert math.isinf(lse[0].item()) and lse[0] > 0
    assert torch.isnan(logp[2, 0])  # inf - inf
    _check(logp, lse, _truth(hidden, weight, bias, choices, None), "non-finite")

    neg = torch.full((300,), -math.inf, device=DEVICE)
    logp, lse = k.choice_logprobs_fwd(hidden[:1], weight, neg, choices[:1], None)
    assert torch.isneginf(lse).all()

    # Every logit far below exp's range, the largest in a late tile.
    low = torch.full((300,), -500.0, device=DEVICE)
    low[290] = -400.0
    logp, lse = k.choice_logprobs_fwd(hidden[2:4], weight, low, choices[2:4], None, splits=1)
    _check(logp, lse, _truth(hidden[2:4], weight, low, choices[2:4], None), "very negative")


def test_padding_and_out_of_range_ids():
    hidden, weight, _, choices, _ = _inputs(4, 50, 8, 3, F32, F32, False, None, "contiguous")
    choices[1, 0] = 7
    choices[0] = -1
    choices[3, 2] = 50  # past V: the public function rejects it; the kernel must not read it
    logp, lse = k.choice_logprobs_fwd(hidden, weight, None, choices, None)
    assert torch.isneginf(logp[0]).all() and torch.isnan(logp[3, 2])
    assert torch.isfinite(logp[1:3]).all() and torch.isfinite(lse).all()


def test_public_function_runs_the_triton_backend():
    if "triton" not in available_backends("choice_logprobs"):
        pytest.skip("triton backend not available")
    hidden, weight, bias, choices, _ = _inputs(*CASES[3])
    got = choice_logprobs(hidden, weight, choices, bias, softcap=4.0, backend="triton")
    want = choice_logprobs(hidden, weight, choices, bias, softcap=4.0, backend="reference")
    assert_close(got.logp, want.logp, atol=1e-5, rtol=1e-6, name="logp")
    assert_close(got.lse, want.lse, atol=1e-5, rtol=1e-6, name="lse")
    # Under inference mode and with inputs that require grad: no history on the outputs.
    with torch.inference_mode():
        again = choice_logprobs(hidden, weight, choices, bias, softcap=4.0, backend="triton")
    assert torch.equal(again.logp, got.logp)
    leaf = hidden.clone().requires_grad_()
    out = choice_logprobs(leaf, weight, choices, bias, softcap=4.0, backend="triton")
    assert not out.logp.requires_grad and torch.equal(out.logp, got.logp)


def test_custom_op_schema_and_fake():
    if "triton" not in available_backends("choice_logprobs"):
        pytest.skip("triton backend not available")
    op = torch.ops.introspect.choice_logprobs_triton.default
    hidden, weight, bias, choices, _ = _inputs(5, 40, 8, 2, F32, F32, True, None, "contiguous")
    torch.library.opcheck(
        op, (hidden, weight, bias, choices, 2.0), test_utils=("test_schema", "test_faketensor")
    )
    torch.library.opcheck(
        op, (hidden, weight, None, choices, 0.0), test_utils=("test_schema", "test_faketensor")
    )


def test_rejects_bad_inputs():
    hidden = torch.randn(4, 8, device=DEVICE)
    weight = torch.randn(10, 8, device=DEVICE)
    ids = torch.zeros(4, 1, dtype=torch.int64, device=DEVICE)
    with pytest.raises(TypeError, match="not supported"):
        k.choice_logprobs_fwd(hidden.double(), weight, None, ids, None)
    with pytest.raises(ValueError, match=r"weight must be \[V, 8\]"):
        k.choice_logprobs_fwd(hidden, weight[:, :5], None, ids, None)
    with pytest.raises(ValueError, match="choices must be"):
        k.choice_logprobs_fwd(hidden, weight, None, ids[:3], None)
