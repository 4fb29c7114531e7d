"""choice_logprobs: the chunked reference against dense float64 log-softmax, its memory bound,
real tied / soft-capped heads, padding, low precision, non-finite values and clear errors."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile

import pytest
import torch
from asserts import assert_close, max_error
from conftest import cpu_backends
from hypothesis import given
from hypothesis import strategies as st

from introspect.ops import (
    BackendUnavailableError,
    _registry,
    available_backends,
    choice_logprobs,
    choice_logprobs_reference,
    implemented_backends,
)

F64 = torch.float64

# (M, V, D, C): awkward sizes; V is never a multiple of the chunks below.
SHAPES = [(1, 1, 1, 1), (1, 7, 3, 2), (7, 97, 5, 3), (97, 1025, 33, 4), (33, 5003, 64, 2)]
CHUNKS = [None, 1, 96, 1000]
# One column per tile is slow in eager mode: kept to the smaller vocabularies.
GRID = [(s, c) for s in SHAPES for c in CHUNKS if not (c == 1 and s[1] > 2000)]

# Tolerances as data: (dtype, atol, rtol) against the float64 truth computed from the same
# (already rounded) inputs, with atol scaled by the largest |logit|. Every dtype accumulates in
# float32, so all meet the same float32-level bound.
TOLERANCES = [
    (torch.float32, 1e-6, 1e-6),
    (torch.bfloat16, 1e-6, 1e-6),
    (torch.float16, 1e-6, 1e-6),
]


def _inputs(M, V, D, C, *, dtype=torch.float32, bias=False, pad=True, scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(M, D, generator=g).to(dtype)
    weight = (torch.randn(V, D, generator=g) * scale / math.sqrt(D)).to(dtype)
    b = torch.randn(V, generator=g).to(dtype) if bias else None
    choices = torch.randint(0, V, (M, C), generator=g)
    if pad and M > 1 and C > 1:
        choices[1, C - 1] = -1
        choices[M - 1, 0] = -1
    return hidden, weight, b, choices


def _truth(hidden, weight, bias, choices, softcap=None):
    """Dense float64 logits: logp = logit - logsumexp (so +inf logits give -inf/NaN, not NaN
    everywhere as log_softmax does), -inf where the id is -1."""
    logits = hidden.to(F64) @ weight.to(F64).T
    if bias is not None:
        logits = logits + bias.to(F64)
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    lse = torch.logsumexp(logits, -1)
    logp = logits.gather(1, choices.clamp(min=0)) - lse[:, None]
    logp = logp.masked_fill(choices < 0, -math.inf)
    return logp, lse, logits


def _check(out, truth, atol, rtol, label):
    logp, lse, logits = truth
    finite = logits[torch.isfinite(logits)]
    scale = 1.0 + (float(finite.abs().max()) if finite.numel() else 0.0)
    assert_close(out.lse, lse, atol=atol * scale, rtol=rtol, name=f"{label} lse")
    assert_close(out.logp, logp, atol=atol * scale, rtol=rtol, name=f"{label} logp")


# ---------------------------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape,chunk", GRID, ids=[f"{'x'.join(map(str, s))}-chunk{c}" for s, c in GRID]
)
@pytest.mark.parametrize("bias,softcap", [(False, None), (True, None), (True, 2.5), (False, 30.0)])
def test_reference_matches_dense_float64(shape, chunk, bias, softcap):
    inputs = _inputs(*shape, bias=bias)
    out = choice_logprobs(*inputs[:2], inputs[3], inputs[2], softcap=softcap, chunk=chunk)
    assert out.logp.dtype == torch.float32 and out.lse.dtype == torch.float32
    assert out.logp.shape == (shape[0], shape[3]) and out.lse.shape == (shape[0],)
    _check(out, _truth(*inputs, softcap), 1e-6, 1e-6, f"{shape} chunk={chunk}")


@pytest.mark.parametrize("row_chunk", [1, 5, 32])
def test_row_blocks_give_the_same_result(row_chunk):
    hidden, weight, bias, choices = _inputs(67, 1001, 24, 3, bias=True)
    truth = _truth(hidden, weight, bias, choices, 4.0)
    for rows in (67, row_chunk):
        logp, lse = choice_logprobs_reference(hidden, weight, bias, choices, 4.0, 256, rows)
        _check(type("Out", (), {"logp": logp, "lse": lse}), truth, 1e-6, 1e-6, f"rows={rows}")


def test_float64_inputs_give_float64_outputs():
    hidden, weight, bias, choices = _inputs(9, 301, 16, 2, dtype=F64, bias=True)
    out = choice_logprobs(hidden, weight, choices, bias, chunk=64)
    assert out.logp.dtype == F64
    _check(out, _truth(hidden, weight, bias, choices), 1e-12, 1e-12, "float64")


@pytest.mark.parametrize("dtype,atol,rtol", TOLERANCES, ids=lambda v: str(v))
def test_low_precision_inputs_accumulate_in_float32(dtype, atol, rtol):
    hidden, weight, bias, choices = _inputs(65, 3001, 96, 4, dtype=dtype, bias=True)
    out = choice_logprobs(hidden, weight, choices, bias, chunk=512)
    assert out.logp.dtype == torch.float32
    truth = _truth(hidden, weight, bias, choices)
    _check(out, truth, atol, rtol, str(dtype))
    if dtype == torch.float32:
        return
    # And at most 2x the error PyTorch makes computing the same thing in that dtype.
    dense = torch.log_softmax(hidden @ weight.T + bias, -1).gather(1, choices.clamp(min=0))
    valid = choices >= 0
    ours_err = max_error(out.logp[valid], truth[0][valid])
    torch_err = max_error(dense[valid], truth[0][valid])
    assert ours_err <= 2 * torch_err, f"{dtype}: error {ours_err:.3g} > 2 x {torch_err:.3g}"


def test_mixed_dtypes_hidden_bf16_head_fp32():
    hidden, weight, bias, choices = _inputs(20, 500, 32, 3, bias=True)
    h16 = hidden.to(torch.bfloat16)
    out = choice_logprobs(h16, weight, choices, bias, chunk=128)
    _check(out, _truth(h16, weight, bias, choices), 1e-6, 1e-6, "mixed")


@pytest.mark.parametrize("layout", ["row_strided", "transposed", "weight_view"])
def test_non_contiguous_inputs(layout):
    M, V, D = 31, 403, 20
    g = torch.Generator().manual_seed(5)
    hidden = torch.randn(2 * M, D + 3, generator=g)[::2, 1 : D + 1]
    weight = torch.randn(V, D, generator=g) / math.sqrt(D)
    if layout == "transposed":
        hidden = torch.randn(D, M, generator=g).t()
    if layout == "weight_view":  # the head as a column slice of a wider matrix
        weight = torch.randn(V, D + 5, generator=g)[:, 2 : D + 2]
    choices = torch.randint(0, V, (M, 3), generator=g)
    out = choice_logprobs(hidden, weight, choices, chunk=100)
    _check(out, _truth(hidden, weight, None, choices), 1e-6, 1e-6, layout)


def test_padding_means_no_choice():
    hidden, weight, _, choices = _inputs(6, 50, 8, 4, pad=False)
    choices[2] = -1  # a row with no choice at all
    choices[4, 1:] = -1
    out = choice_logprobs(hidden, weight, choices)
    assert torch.isneginf(out.logp[2]).all() and torch.isfinite(out.lse).all()
    assert torch.isneginf(out.logp[4, 1:]).all() and torch.isfinite(out.logp[4, 0])
    # Padding has probability zero: a row's choice mass ignores it.
    mass = out.logp.exp().sum(1)
    assert mass[2] == 0 and 0 < mass[4] <= 1
    # The same ids without padding give the same values where both are defined.
    filled = choices.clamp(min=0)
    full = choice_logprobs(hidden, weight, filled)
    keep = choices >= 0
    assert torch.equal(full.logp[keep], out.logp[keep]) and torch.equal(full.lse, out.lse)


def test_choice_logits_enter_the_log_sum_exp_exactly():
    # With every token as a choice, the probabilities sum to one.
    hidden, weight, bias, _ = _inputs(5, 300, 16, 1, bias=True)
    every = torch.arange(300).expand(5, 300)
    out = choice_logprobs(hidden, weight, every, bias, softcap=5.0, chunk=77)
    assert_close(out.logp.exp().sum(1), torch.ones(5), atol=1e-5, rtol=0, name="mass")


def test_empty_rows_and_no_choices():
    hidden, weight, _, _ = _inputs(4, 30, 8, 1)
    out = choice_logprobs(hidden[:0], weight, torch.zeros(0, 3, dtype=torch.int64))
    assert out.logp.shape == (0, 3) and out.lse.shape == (0,)
    out = choice_logprobs(hidden, weight, torch.zeros(4, 0, dtype=torch.int64))
    assert out.logp.shape == (4, 0)
    assert_close(out.lse, _truth(hidden, weight, None, torch.zeros(4, 0, dtype=torch.int64))[1],
                 atol=1e-5, rtol=1e-6, name="lse")  # fmt: skip


def test_non_finite_values_behave_like_dense_logsumexp():
    hidden, weight, bias, choices = _inputs(6, 200, 12, 3, bias=True, pad=False)
    hidden[1, 3] = math.nan  # row 1: every logit NaN
    bias[150] = math.inf  # every row has a +inf logit -> lse = inf
    choices[2, 0] = 150
    hidden_neg = hidden.clone()
    out = choice_logprobs(hidden, weight, choices, bias, chunk=64)
    truth = _truth(hidden, weight, bias, choices)
    assert torch.isnan(out.lse[1]) and torch.isnan(out.logp[1]).all()
    assert math.isinf(out.lse[0].item()) and out.lse[0] > 0
    assert torch.isnan(out.logp[2, 0])  # inf - inf
    _check(out, truth, 1e-6, 1e-6, "non-finite")

    # Every logit -inf (bias -inf everywhere): lse = -inf, as logsumexp gives.
    out = choice_logprobs(hidden_neg[:1], weight, choices[:1], torch.full((200,), -math.inf))
    assert torch.isneginf(out.lse).all()


def test_very_negative_logits_stay_finite():
    # Every logit far below exp's range: the running sums must not underflow to 0 or blow up.
    hidden, weight, _, choices = _inputs(4, 1000, 8, 2, pad=False)
    bias = torch.full((1000,), -500.0)
    bias[700] = -400.0
    out = choice_logprobs(hidden, weight, choices, bias, chunk=64)
    _check(out, _truth(hidden, weight, bias, choices), 1e-6, 1e-6, "very negative")


@pytest.mark.parametrize("mode", ["inference_mode", "no_grad", "plain"])
def test_runs_under_every_grad_mode(mode):
    hidden, weight, bias, choices = _inputs(11, 257, 16, 2, bias=True)
    want = choice_logprobs(hidden, weight, choices, bias)
    leaves = [hidden.clone().requires_grad_(), weight.clone().requires_grad_(), bias.clone()]
    ctx = {"inference_mode": torch.inference_mode, "no_grad": torch.no_grad}.get(mode)
    if ctx is None:
        got = choice_logprobs(leaves[0], leaves[1], choices, leaves[2])
    else:
        with ctx():
            got = choice_logprobs(leaves[0], leaves[1], choices, leaves[2])
    assert not got.logp.requires_grad and not got.lse.requires_grad
    assert torch.equal(got.logp, want.logp) and torch.equal(got.lse, want.lse)


# ---------------------------------------------------------------------------------------------
# Real heads: a tied Llama head and Gemma-2's soft-capped tied head, against the models' logits
# ---------------------------------------------------------------------------------------------


def _model_check(model, V):
    """Our log-probs from the model's final hidden states and head, against the model's own
    logits; returns (ours, the same without soft-capping, the model's largest |logit|)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, V, (3, 9), generator=g)
    with torch.no_grad():
        # Larger weights than the initialiser's, so logits are far from zero.
        model.get_input_embeddings().weight.mul_(20.0)
        logits = model(input_ids=ids).logits.double()
        hidden = model.model(input_ids=ids).last_hidden_state  # after the final norm
    rows = hidden[:, -1]  # the scored positions
    choices = torch.randint(0, V, (3, 4), generator=g)
    choices[0, 3] = -1
    cap = getattr(model.config, "final_logit_softcapping", None)
    head = model.get_output_embeddings()
    out = choice_logprobs(rows, head.weight, choices, head.bias, softcap=cap, chunk=50)
    want = torch.log_softmax(logits[:, -1], -1).gather(1, choices.clamp(min=0))
    want = want.masked_fill(choices < 0, -math.inf)
    assert_close(out.logp, want, atol=2e-5, rtol=1e-5, name="model logp")
    uncapped = choice_logprobs(rows, head.weight, choices, head.bias, chunk=50)
    return out, uncapped, float(logits[:, -1].abs().max())


def test_tied_llama_head_matches_the_model():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=301, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(config).eval()
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    _, _, largest = _model_check(model, 301)
    assert largest > 1.0  # the scale is not trivially near zero


def test_softcapped_gemma2_head_matches_the_model():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.Gemma2Config(
        vocab_size=257, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16,
        final_logit_softcapping=0.5,  # small, so capping changes the answer
    )  # fmt: skip
    model = transformers.Gemma2ForCausalLM(config).eval()
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    capped, uncapped, largest = _model_check(model, 257)
    # The model's logits are capped and ours match them; without the cap they would not.
    assert largest <= 0.5
    valid = torch.isfinite(capped.logp)
    assert (capped.logp[valid] - uncapped.logp[valid]).abs().max() > 0.1


# ---------------------------------------------------------------------------------------------
# Memory: the reference's extra memory does not grow with V
# ---------------------------------------------------------------------------------------------

_MEMORY_PROBE = r"""
import gc, json, re, sys
import torch
from introspect.ops import choice_logprobs

torch.set_num_threads(1)
M, V, D, C, chunk = 64, 1 << 18, 16, 4, 1024
g = torch.Generator().manual_seed(0)
hidden = torch.randn(M, D, generator=g)
weight = torch.randn(V, D, generator=g)
choices = torch.randint(0, V, (M, C), generator=g)


def status(key):
    text = open("/proc/self/status").read()
    return int(re.search(key + r":\s+(\d+)", text).group(1)) * 1024


def peak_extra(fn):
    # Peak resident memory above the current level while fn runs (Linux: writing 5 to
    # clear_refs resets VmHWM to the current RSS).
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = status("VmRSS")
    fn()
    return status("VmHWM") - base


# One-time set-up (BLAS and thread pools) on tiny inputs, so that it is not counted below.
choice_logprobs(hidden[:2], weight[:100], choices[:2] % 100, chunk=10)
torch.log_softmax(hidden[:2] @ weight[:100].T, -1)

res = {
    "reference": peak_extra(lambda: choice_logprobs(hidden, weight, choices, chunk=chunk)),
    "reference_quarter_vocab": peak_extra(
        lambda: choice_logprobs(hidden, weight[: V // 4], choices % (V // 4), chunk=chunk)
    ),
    "naive": peak_extra(lambda: torch.log_softmax(hidden @ weight.T, -1).gather(1, choices)),
    "logits_bytes": M * V * 4,
    "tile_bytes": M * chunk * 4,
}
print(json.dumps(res))
"""


def _can_reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _can_reset_peak_rss(), reason="needs Linux /proc/self/clear_refs")
def test_reference_extra_memory_is_a_tile_not_the_logits():
    env = {**os.environ, "INTROSPECT_QUIET_NATIVE": "1", "OMP_NUM_THREADS": "1"}
    res = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE], capture_output=True, text=True, env=env,
        cwd=tempfile.gettempdir(), timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    mem = json.loads(res.stdout.strip().splitlines()[-1])
    # The probe sees dense allocations: the naive path holds the logits and their log-softmax.
    assert mem["naive"] >= 1.5 * mem["logits_bytes"], mem
    # The reference holds one [rows, chunk] tile plus O(M·C): a few MiB at most (allocator
    # and page granularity), whatever V is; the dense logits alone are 64 MiB here.
    bound = 8 * mem["tile_bytes"] + 4 * 2**20
    assert mem["reference"] <= bound, mem
    assert mem["reference_quarter_vocab"] <= bound, mem
    assert mem["reference"] * 10 <= mem["naive"], mem


# ---------------------------------------------------------------------------------------------
# Property-based: shapes, scales, chunks
# ---------------------------------------------------------------------------------------------


@given(
    m=st.integers(1, 20),
    v=st.integers(1, 300),
    d=st.integers(1, 24),
    c=st.integers(1, 5),
    chunk=st.integers(1, 400),
    scale=st.sampled_from([1e-3, 1.0, 30.0]),
    softcap=st.sampled_from([None, 1.0, 50.0]),
    seed=st.integers(0, 2**16),
)
def test_hypothesis_shapes_scales_and_chunks(m, v, d, c, chunk, scale, softcap, seed):
    hidden, weight, bias, choices = _inputs(m, v, d, c, bias=True, scale=scale, seed=seed)
    out = choice_logprobs(hidden, weight, choices, bias, softcap=softcap, chunk=chunk)
    _check(out, _truth(hidden, weight, bias, choices, softcap), 2e-6, 2e-6, "hypothesis")


# ---------------------------------------------------------------------------------------------
# Backends and errors
# ---------------------------------------------------------------------------------------------


def test_registry_lists_every_backend_and_auto_uses_the_reference_on_cpu():
    assert implemented_backends("choice_logprobs") == ["reference", "cuda", "triton"]
    name, _ = _registry.select("choice_logprobs", "auto", torch.device("cpu"), torch.float32)
    assert name == "reference"


def test_explicit_backend_that_cannot_run_raises():
    hidden, weight, _, choices = _inputs(4, 20, 8, 2)
    with pytest.raises(BackendUnavailableError, match="'cuda'"):
        choice_logprobs(hidden, weight, choices, backend="cuda")
    with pytest.raises(BackendUnavailableError, match="no 'cpp' implementation"):
        choice_logprobs(hidden, weight, choices, backend="cpp")
    if "triton" in cpu_backends("choice_logprobs"):
        with pytest.raises(BackendUnavailableError, match="float64"):
            choice_logprobs(hidden.double(), weight.double(), choices, backend="triton")


def test_errors_name_the_problem():
    hidden, weight, bias, choices = _inputs(4, 20, 8, 2, bias=True)
    with pytest.raises(ValueError, match=r"weight must be \[V, D\] with D = 8"):
        choice_logprobs(hidden, torch.randn(20, 7), choices)
    with pytest.raises(ValueError, match=r"choices must be \[M, C\] with M = 4"):
        choice_logprobs(hidden, weight, choices[:3])
    with pytest.raises(ValueError, match=r"choices must be \[M, C\]"):
        choice_logprobs(hidden, weight, choices[:, 0])
    with pytest.raises(TypeError, match="choices must be an integer tensor"):
        choice_logprobs(hidden, weight, choices.float())
    with pytest.raises(ValueError, match=r"must lie in \[0, 20\).*choices\[2, 1\] = 20"):
        bad = choices.clone()
        bad[2, 1] = 20
        choice_logprobs(hidden, weight, bad)
    with pytest.raises(ValueError, match=r"choices\[0, 0\] = -2"):
        bad = choices.clone()
        bad[0, 0] = -2
        choice_logprobs(hidden, weight, bad)
    with pytest.raises(ValueError, match=r"bias must be \[V\] = \[20\]"):
        choice_logprobs(hidden, weight, choices, bias[:5])
    with pytest.raises(ValueError, match="softcap must be a positive finite number"):
        choice_logprobs(hidden, weight, choices, softcap=0.0)
    with pytest.raises(ValueError, match="softcap must be a positive finite number"):
        choice_logprobs(hidden, weight, choices, softcap=math.inf)
    with pytest.raises(ValueError, match="chunk must be a positive int"):
        choice_logprobs(hidden, weight, choices, chunk=0)
    with pytest.raises(ValueError, match="V = 0"):
        choice_logprobs(hidden, weight[:0], torch.zeros(4, 0, dtype=torch.int64))
    with pytest.raises(TypeError, match="hidden must be a floating-point tensor"):
        choice_logprobs(choices, weight, choices)
    with pytest.raises(ValueError, match="all inputs must be on one device"):
        choice_logprobs(hidden, weight.to("meta"), choices)
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        choice_logprobs(hidden, weight, choices, backend="fast")


def test_int32_ids_are_accepted():
    hidden, weight, _, choices = _inputs(5, 40, 8, 3)
    a = choice_logprobs(hidden, weight, choices)
    b = choice_logprobs(hidden, weight, choices.to(torch.int32))
    assert torch.equal(a.logp, b.logp)


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(1, 7, 3, 2), (97, 1025, 33, 4), (300, 49152, 576, 4)])
def test_gpu_backends_match_dense_float64(backend, dtype, shape):
    if backend not in available_backends("choice_logprobs"):
        pytest.skip(f"{backend} not available")
    hidden, weight, bias, choices = _inputs(*shape, dtype=dtype, bias=True)
    for softcap in (None, 30.0):
        truth = _truth(hidden, weight, bias, choices, softcap)
        out = choice_logprobs(hidden.cuda(), weight.cuda(), choices.cuda(), bias.cuda(),
                              softcap=softcap, backend=backend)  # fmt: skip
        got = type(out)(out.logp.cpu(), out.lse.cpu())
        _check(got, truth, 2e-6, 2e-6, f"{backend} {dtype} softcap={softcap}")


@pytest.mark.cuda
@pytest.mark.slow
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_head_of_more_than_2_31_elements(backend):
    """A [V, D] bfloat16 head of more than 2^31 elements (4 GiB): offsets into it must be
    64-bit. Choices near the end of the vocabulary; float64 truth in vocabulary chunks."""
    if backend not in available_backends("choice_logprobs"):
        pytest.skip(f"{backend} not available")
    M, V, D = 3, (1 << 18) + 3, 8192
    g = torch.Generator(device="cuda").manual_seed(0)
    weight = (torch.randn(V, D, generator=g, device="cuda") / D**0.5).to(torch.bfloat16)
    hidden = torch.randn(M, D, generator=g, device="cuda", dtype=torch.bfloat16)
    assert weight.numel() > 2**31
    choices = torch.tensor([[V - 1, 0], [V - 2, V // 2], [V - 3, -1]], device="cuda")
    out = choice_logprobs(hidden, weight, choices, backend=backend)
    logits = torch.cat(
        [hidden.double() @ weight[lo : lo + 16384].double().T for lo in range(0, V, 16384)], 1
    )
    lse = torch.logsumexp(logits, -1)
    logp = (logits.gather(1, choices.clamp(min=0)) - lse[:, None]).masked_fill(
        choices < 0, -math.inf
    )
    _check(type(out)(out.logp.cpu(), out.lse.cpu()), (logp.cpu(), lse.cpu(), logits.cpu()),
           2e-6, 2e-6, f"{backend} V*D > 2^31")  # fmt: skip
