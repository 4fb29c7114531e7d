"""delta_probe: every available backend against the float64 reference, outputs and gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from asserts import assert_close, max_error
from conftest import cpu_backends
from hypothesis import given
from hypothesis import strategies as st

from introspect.ops import BackendUnavailableError, available_backends, delta_probe

BACKENDS = cpu_backends("delta_probe")
# (N, D, P): awkward sizes, the SmolLM2 width 576, and a 7B-class width 4096.
SHAPES = [(1, 1, 1), (1, 7, 3), (7, 1, 1), (97, 97, 4), (111, 576, 1), (1025, 33, 32), (3, 4096, 2)]
# The Triton interpreter runs kernels in numpy, one program at a time: keep its grid small.
TRITON_SHAPES = {(1, 1, 1), (1, 7, 3), (97, 97, 4), (3, 4096, 2)}
# Tolerances as data: relative to the largest |value| of the float64 truth (sums of many terms),
# plus an elementwise relative term.
TOL_F32 = {"pred": 2e-6, "loss": 2e-5, "grad": 2e-5}


def _inputs(N, D, P, *, mode, bias, target, layout, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)

    def hidden():
        if layout == "row_strided":  # every other row of a wider buffer: stride(0) = 2 * (D + 3)
            return torch.randn(2 * N, D + 3, generator=g, dtype=dtype)[::2, 1 : D + 1]
        if layout == "transposed":  # column stride != 1
            return torch.randn(D, N, generator=g, dtype=dtype).t()
        return torch.randn(N, D, generator=g, dtype=dtype)

    return {
        "h_x": hidden(),
        "h_mod": hidden() if mode == "difference" else None,
        "w": torch.randn(P, D, generator=g, dtype=dtype) / math.sqrt(D),
        "bias": torch.randn(P, generator=g, dtype=dtype) if bias else None,
        "target": torch.randn(N, P, generator=g, dtype=dtype) if target else None,
    }


def _run(inputs, backend, *, grad_path="loss", cast=None, seed=1):
    """Runs delta_probe and a backward pass; returns outputs and every input gradient."""
    leaves = {}
    for k, v in inputs.items():
        if v is None:
            leaves[k] = None
            continue
        v = v.detach().to(cast) if cast is not None else v.detach().clone()
        leaves[k] = v.requires_grad_(True)
    out = delta_probe(
        leaves["h_x"], leaves["w"], leaves["bias"], leaves["target"], h_mod=leaves["h_mod"],
        backend=backend,
    )  # fmt: skip
    g = torch.Generator().manual_seed(seed)
    obj = out.loss if out.loss is not None else torch.zeros((), dtype=out.pred.dtype)
    if grad_path == "pred_and_loss" or out.loss is None:
        upstream = torch.randn(out.pred.shape, generator=g).to(out.pred.dtype)
        obj = obj + (out.pred * upstream).sum()
    obj.backward()
    res = {"pred": out.pred.detach(), "loss": None if out.loss is None else out.loss.detach()}
    for k, v in leaves.items():
        res[f"grad_{k}"] = None if v is None else v.grad
    return res


def _compare(got, truth, tol, label):
    for key, t in truth.items():
        if t is None:
            assert got[key] is None, f"{label}: {key} should be None"
            continue
        kind = "pred" if key == "pred" else ("loss" if key == "loss" else "grad")
        rel = tol[kind]
        scale = float(t.abs().max()) if t.numel() else 0.0
        assert_close(got[key], t, atol=rel * scale + 1e-7, rtol=rel, name=f"{label} {key}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("mode", ["direct", "difference"])
@pytest.mark.parametrize("bias,target", [(False, False), (True, True), (False, True)])
@pytest.mark.parametrize("layout", ["contiguous", "row_strided", "transposed"])
def test_matches_float64_reference(backend, shape, mode, bias, target, layout):
    if backend == "triton" and (shape not in TRITON_SHAPES or layout == "transposed"):
        pytest.skip("interpreted Triton: covered on a smaller grid")
    inputs = _inputs(*shape, mode=mode, bias=bias, target=target, layout=layout)
    truth = _run(inputs, "reference", cast=torch.float64)
    got = _run(inputs, backend)
    _compare(got, truth, TOL_F32, f"{backend} {shape} {mode}")
    # The fp32 reference meets the same tolerance, so the tolerance is not loose by accident.
    _compare(_run(inputs, "reference"), truth, TOL_F32, f"reference {shape} {mode}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["direct", "difference"])
def test_gradient_through_prediction_and_loss(backend, mode):
    # Upstream gradient on pred as well as on the loss takes the general backward path.
    inputs = _inputs(97, 97, 4, mode=mode, bias=True, target=True, layout="row_strided")
    truth = _run(inputs, "reference", grad_path="pred_and_loss", cast=torch.float64)
    got = _run(inputs, backend, grad_path="pred_and_loss")
    _compare(got, truth, TOL_F32, f"{backend} {mode} pred+loss")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "per_probe"])
def test_reductions(backend, reduction):
    inputs = _inputs(33, 20, 3, mode="difference", bias=True, target=True, layout="contiguous")
    args = (inputs["h_x"], inputs["w"], inputs["bias"], inputs["target"])
    got = delta_probe(*args, h_mod=inputs["h_mod"], reduction=reduction, backend=backend).loss
    sq = (
        F.linear(inputs["h_mod"] - inputs["h_x"], inputs["w"], inputs["bias"]) - inputs["target"]
    ) ** 2
    want = {"mean": sq.mean(), "sum": sq.sum(), "per_probe": sq.mean(0)}[reduction]
    assert_close(got, want, atol=1e-5, rtol=1e-5, name=reduction)


def test_reference_matches_plain_torch():
    # The reference itself against torch.nn.functional (an implementation we did not write).
    inputs = _inputs(50, 40, 3, mode="difference", bias=True, target=True, layout="contiguous")
    out = delta_probe(
        inputs["h_x"], inputs["w"], inputs["bias"], inputs["target"], h_mod=inputs["h_mod"],
        backend="reference",
    )  # fmt: skip
    pred = F.linear(inputs["h_mod"] - inputs["h_x"], inputs["w"], inputs["bias"])
    assert_close(out.pred, pred, atol=1e-6, rtol=1e-6, name="pred")
    assert_close(out.loss, F.mse_loss(pred, inputs["target"]), atol=1e-6, rtol=1e-6, name="loss")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["direct", "difference"])
def test_bfloat16_error_at_most_twice_pytorch(backend, mode):
    """Low precision rule: our error against the float64 truth is at most 2x the error PyTorch
    makes when it runs the same computation in bfloat16."""
    inputs = _inputs(257, 96, 4, mode=mode, bias=True, target=True, layout="contiguous",
                     dtype=torch.bfloat16)  # fmt: skip
    _check_bfloat16(inputs, backend, mode, "cpu")


def _on(inputs: dict, device: str) -> dict:
    return {k: (None if v is None else v.to(device)) for k, v in inputs.items()}


def _check_bfloat16(inputs: dict, backend: str, mode: str, device: str) -> None:
    """``backend``'s error on ``device`` against the float64 truth is at most twice PyTorch's own
    bfloat16 error there, for every output and gradient."""
    truth = _run(inputs, "reference", cast=torch.float64)
    ours = {
        k: (None if v is None else v.cpu()) for k, v in _run(_on(inputs, device), backend).items()
    }

    # PyTorch's own bfloat16 computation of the same function.
    leaves = {
        k: (None if v is None else v.detach().clone().to(device).requires_grad_())
        for k, v in inputs.items()
    }
    z = leaves["h_x"] if mode == "direct" else leaves["h_mod"] - leaves["h_x"]
    pred = F.linear(z, leaves["w"], leaves["bias"])
    loss = F.mse_loss(pred, leaves["target"])
    loss.backward()
    torch_bf16 = {"pred": pred.detach().cpu(), "loss": loss.detach().cpu()}
    torch_bf16.update(
        {f"grad_{k}": (None if v is None else v.grad.cpu()) for k, v in leaves.items()}
    )

    for key, t in truth.items():
        if t is None:
            continue
        assert ours[key].dtype == torch.bfloat16, f"{key} should stay bfloat16"
        ours_err, torch_err = max_error(ours[key], t), max_error(torch_bf16[key], t)
        assert ours_err <= 2 * torch_err + 1e-6, (
            f"{backend} {key}: error {ours_err:.3g} > 2 x PyTorch bf16 error {torch_err:.3g}"
        )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_and_inf_propagate_like_the_reference(backend, bad):
    inputs = _inputs(20, 19, 3, mode="difference", bias=True, target=True, layout="contiguous")
    inputs["h_mod"][4, 6] = bad
    truth = _run(inputs, "reference")
    got = _run(inputs, backend)
    assert not torch.isfinite(got["pred"][4]).any()
    assert torch.isfinite(got["pred"][torch.arange(20) != 4]).all()
    _compare(got, truth, TOL_F32, f"{backend} non-finite")


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend):
    inputs = _inputs(0, 8, 2, mode="direct", bias=True, target=True, layout="contiguous")
    got = delta_probe(inputs["h_x"], inputs["w"], inputs["bias"], inputs["target"], backend=backend)
    want = delta_probe(
        inputs["h_x"], inputs["w"], inputs["bias"], inputs["target"], backend="reference"
    )
    assert got.pred.shape == (0, 2)
    assert torch.isnan(got.loss) and torch.isnan(want.loss)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b == "cpp"])
@given(
    n=st.integers(1, 70),
    d=st.integers(1, 70),
    p=st.integers(1, 9),
    mode=st.sampled_from(["direct", "difference"]),
    scale=st.sampled_from([1e-3, 1.0, 1e3]),
    seed=st.integers(0, 2**16),
)
def test_hypothesis_shapes_and_scales(backend, n, d, p, mode, scale, seed):
    inputs = _inputs(n, d, p, mode=mode, bias=True, target=True, layout="contiguous", seed=seed)
    inputs = {k: (v * scale if v is not None else None) for k, v in inputs.items()}
    truth = _run(inputs, "reference", cast=torch.float64)
    _compare(_run(inputs, backend), truth, TOL_F32, f"{backend} hypothesis")


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b == "cpp"])
@given(
    values=st.lists(
        st.one_of(st.floats(-1e4, 1e4, width=32), st.sampled_from([float("nan"), float("inf")])),
        min_size=24, max_size=24,
    ),
)  # fmt: skip
def test_hypothesis_arbitrary_values(backend, values):
    h = torch.tensor(values, dtype=torch.float32).reshape(6, 4)
    w = torch.tensor([[0.5, -1.0, 2.0, 0.25], [1.0, 1.0, -1.0, 0.0]])
    t = torch.zeros(6, 2)
    got = delta_probe(h, w, None, t, backend=backend)
    want = delta_probe(h.double(), w.double(), None, t.double(), backend="reference")
    assert_close(got.pred, want.pred, atol=1e-3, rtol=1e-5, name="pred")
    assert_close(got.loss, want.loss, atol=1e-3, rtol=1e-4, name="loss")


# ---------------------------------------------------------------------------------------------
# Clear errors
# ---------------------------------------------------------------------------------------------


def test_errors_name_the_problem():
    h, w = torch.randn(4, 8), torch.randn(2, 8)
    with pytest.raises(ValueError, match=r"w must be \[P, D\] with D = 8"):
        delta_probe(h, torch.randn(2, 7))
    with pytest.raises(ValueError, match="h_mod must have h_x's shape"):
        delta_probe(h, w, h_mod=torch.randn(5, 8))
    with pytest.raises(TypeError, match="h_x must be a floating-point tensor"):
        delta_probe(torch.ones(4, 8, dtype=torch.int64), w)
    with pytest.raises(TypeError, match="must share a dtype"):
        delta_probe(h, w, h_mod=torch.randn(4, 8, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match=r"bias must be \[P\]"):
        delta_probe(h, w, torch.randn(3))
    with pytest.raises(ValueError, match=r"target must be \[N, P\] = \[4, 2\]"):
        delta_probe(h, w, None, torch.randn(4, 3))
    with pytest.raises(ValueError, match="must be 2-D"):
        delta_probe(torch.randn(4, 8, 1), w)
    with pytest.raises(ValueError, match="needs h_mod"):
        delta_probe(h, w, mode="difference")
    with pytest.raises(ValueError, match="do not pass h_mod"):
        delta_probe(h, w, h_mod=h, mode="direct")
    with pytest.raises(ValueError, match="reduction must be one of"):
        delta_probe(h, w, None, torch.randn(4, 2), reduction="median")
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        delta_probe(h, w, backend="fast")


def test_error_for_inputs_on_different_devices():
    with pytest.raises(
        ValueError, match="all inputs must be on one device; got h_x on cpu, w on meta"
    ):
        delta_probe(torch.randn(4, 8), torch.randn(2, 8, device="meta"))


def test_explicit_backend_that_cannot_run_raises():
    h, w = torch.randn(4, 8), torch.randn(2, 8)
    with pytest.raises(BackendUnavailableError, match="'cuda'"):
        delta_probe(h, w, backend="cuda")
    if "cpp" in BACKENDS:
        with pytest.raises(BackendUnavailableError, match="float64"):
            delta_probe(h.double(), w.double(), backend="cpp")
    # "auto" falls back silently to a backend that runs float64.
    out = delta_probe(h.double(), w.double())
    assert out.pred.dtype == torch.float64


def test_target_vector_accepted_for_a_single_probe():
    h, w, t = torch.randn(5, 3), torch.randn(1, 3), torch.randn(5)
    a = delta_probe(h, w, None, t)
    b = delta_probe(h, w, None, t[:, None])
    assert torch.equal(a.loss, b.loss)


# ---------------------------------------------------------------------------------------------
# Custom-op registration: schema, fake implementation, autograd, torch.compile
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b == "cpp"])
def test_opcheck(backend):
    op = getattr(torch.ops.introspect, f"delta_probe_fwd_{backend}").default
    g = torch.Generator().manual_seed(0)
    hx, hm = torch.randn(9, 5, generator=g), torch.randn(9, 5, generator=g)
    w = torch.randn(2, 5, generator=g, requires_grad=True)
    b = torch.randn(2, generator=g, requires_grad=True)
    t = torch.randn(9, 2, generator=g)
    torch.library.opcheck(op, (hx, hm, w, b, t), test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(
        op, (hx, None, w, None, None), test_utils=("test_schema", "test_faketensor")
    )


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b == "cpp"])
def test_torch_compile(backend):
    inputs = _inputs(64, 24, 3, mode="difference", bias=True, target=True, layout="contiguous")
    w = inputs["w"].clone().requires_grad_()

    def step(w):
        out = delta_probe(inputs["h_x"], w, inputs["bias"], inputs["target"],
                          h_mod=inputs["h_mod"], backend=backend)  # fmt: skip
        return out.loss

    eager_loss = step(w)
    (eager_grad,) = torch.autograd.grad(eager_loss, w)
    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    loss = compiled(w)
    (grad,) = torch.autograd.grad(loss, w)
    assert_close(loss, eager_loss, atol=1e-6, rtol=1e-6, name="compiled loss")
    assert_close(grad, eager_grad, atol=1e-6, rtol=1e-6, name="compiled grad")


def _gpu_backend_or_skip(backend: str) -> None:
    if backend not in available_backends("delta_probe"):
        from introspect.ops import unavailable_reason

        pytest.skip(f"{backend} not available: {unavailable_reason(backend)}")


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("shape", [(1, 7, 3), (97, 97, 4), (1025, 576, 32), (3, 4096, 64)])
@pytest.mark.parametrize("mode", ["direct", "difference"])
def test_gpu_backends_match_reference(backend, shape, mode):
    _gpu_backend_or_skip(backend)
    inputs = _inputs(*shape, mode=mode, bias=True, target=True, layout="row_strided")
    got = _run(_on(inputs, "cuda"), backend, grad_path="pred_and_loss")
    truth = _run(inputs, "reference", grad_path="pred_and_loss", cast=torch.float64)
    _compare({k: (None if v is None else v.cpu()) for k, v in got.items()}, truth, TOL_F32, backend)


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("shape", [(97, 97, 4), (1025, 576, 32), (3, 4096, 64)])
@pytest.mark.parametrize("mode", ["direct", "difference"])
def test_gpu_backends_bfloat16(backend, shape, mode):
    _gpu_backend_or_skip(backend)
    inputs = _inputs(*shape, mode=mode, bias=True, target=True, layout="row_strided",
                     dtype=torch.bfloat16)  # fmt: skip
    _check_bfloat16(inputs, backend, mode, "cuda")


@pytest.mark.cuda
@pytest.mark.slow
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_more_than_2_31_elements(backend):
    """h_x of 2^31 + 4096 bfloat16 elements (4 GiB): every offset past 2^31 must be 64-bit.
    Checked against float64 sums over row chunks, on the GPU."""
    _gpu_backend_or_skip(backend)
    N, D, P = (1 << 19) + 1, 4096, 2
    g = torch.Generator(device="cuda").manual_seed(0)
    hx = torch.randn(N, D, generator=g, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(P, D, generator=g, device="cuda") / D**0.5
    t = torch.randn(N, P, generator=g, device="cuda")
    assert hx.numel() > 2**31
    w_ = w.clone().requires_grad_()
    out = delta_probe(hx, w_, None, t, reduction="sum", backend=backend)
    out.loss.backward()
    pred = torch.empty(N, P, dtype=torch.float64, device="cuda")
    grad = torch.zeros(P, D, dtype=torch.float64, device="cuda")
    for lo in range(0, N, 1 << 16):
        z = hx[lo : lo + (1 << 16)].double()
        pred[lo : lo + len(z)] = z @ w.double().T
        grad += 2 * (pred[lo : lo + len(z)] - t[lo : lo + len(z)].double()).T @ z
    loss = ((pred - t.double()) ** 2).sum()
    assert_close(out.pred, pred, atol=1e-4, rtol=1e-5, name="pred")
    assert_close(out.pred[-1], pred[-1], atol=1e-4, rtol=1e-5, name="last row (past 2^31)")
    assert_close(out.loss, loss, atol=0, rtol=1e-5, name="loss")
    assert_close(w_.grad, grad, atol=1e-3 * float(grad.abs().max()), rtol=1e-4, name="w.grad")


def test_cpp_threading_paths_give_identical_results():
    """The cpp kernels run on the process's OpenMP team when one is loaded, else on their own
    threads; the row ranges are the same, so the results must be bitwise identical."""
    if "cpp" not in BACKENDS:
        pytest.skip("cpp backend not built")
    import os
    import subprocess
    import sys
    import tempfile

    code = (
        "import torch\n"
        "from introspect.ops import delta_probe, pearson\n"
        "g = torch.Generator().manual_seed(3)\n"
        "hx, hm = torch.randn(5000, 96, generator=g), torch.randn(5000, 96, generator=g)\n"
        "w = torch.randn(5, 96, generator=g, requires_grad=True)\n"
        "t = torch.randn(5000, 5, generator=g)\n"
        "out = delta_probe(hx, w, None, t, h_mod=hm, backend='cpp')\n"
        "(out.loss + out.pred.sum()).backward()\n"
        "r = pearson(hx, hm, backend='cpp')\n"
        "print(repr(out.loss.item()), w.grad.sum().item(), out.pred.sum().item(), r.sum().item())\n"
    )
    outs = []
    for flag in ("0", "1"):
        env = {**os.environ, "INTROSPECT_NO_OPENMP": flag}
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env=env, cwd=tempfile.gettempdir(), timeout=120)  # fmt: skip
        assert res.returncode == 0, res.stderr
        outs.append(res.stdout)
    assert outs[0] == outs[1]
