"""delta_probe: a linear probe's prediction and its MSE training step, fused.

Given hidden states of x (``h_x`` [N, D]) and optionally of x' (``h_mod`` [N, D]), P probes
``w`` [P, D] with optional ``bias`` [P]:

- ``mode="direct"``:     pred = h_x · wᵀ + b            (the explanation, from x alone)
- ``mode="difference"``: pred = (h_mod − h_x) · wᵀ + b

With a ``target`` [N, P] the squared error is returned too (``reduction``: ``"mean"`` over all
N·P entries, ``"sum"``, or ``"per_probe"`` — the mean over N for each probe). Everything is
differentiable with respect to the hidden states, weights, bias and target.

Accumulation is float32 on every backend. Hidden states may be float32 or bfloat16 (the
reference also takes float16/float64); outputs have the promoted dtype of the inputs.

The native backends compute, in the forward, the prediction, the residual, the squared error
and the weight/bias gradient of the loss, so a training step needs no second pass for the
weights: ``cpp`` in one pass over the rows, ``cuda`` and ``triton`` in two (the weight gradient
needs each row's finished residual), each keeping its gradient tile in registers across its
rows and writing it once.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch._subclasses.fake_tensor import is_fake

from introspect import _native
from introspect.ops import _checks, _registry

OP = "delta_probe"
_NATIVE_DTYPES = {torch.float32, torch.bfloat16}
_REFERENCE_DTYPES = {torch.float16, torch.bfloat16, torch.float32, torch.float64}
_REDUCTIONS = ("mean", "sum", "per_probe")


class DeltaProbeOutput(NamedTuple):
    pred: torch.Tensor
    """[N, P] predictions."""
    loss: torch.Tensor | None
    """Squared error per ``reduction``; ``None`` when no target was given."""


# --------------------------------------------------------------------------------------------
# Reference: plain PyTorch, differentiable by autograd. Tests and benchmarks use this same code.
# --------------------------------------------------------------------------------------------


@_registry.register(OP, "reference", devices={"cpu", "cuda"}, dtypes=_REFERENCE_DTYPES)
def delta_probe_reference(
    h_x: torch.Tensor,
    h_mod: torch.Tensor | None,
    w: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Returns (pred [N, P] float32, per-probe sum of squared errors [P] or None)."""
    acc = torch.float64 if h_x.dtype == torch.float64 else torch.float32
    z = h_x.to(acc) if h_mod is None else h_mod.to(acc) - h_x.to(acc)
    pred = z @ w.to(acc).t()
    if bias is not None:
        pred = pred + bias.to(acc)
    if target is None:
        return pred, None
    resid = pred - target.to(acc)
    return pred, (resid * resid).sum(0)


# --------------------------------------------------------------------------------------------
# Native backends: kernels wrapped as torch.library custom ops with fake implementations and
# an autograd formula, so they compose with autograd and torch.compile.
# --------------------------------------------------------------------------------------------

# fwd returns (pred, resid, sse, G, gb); bwd returns (gw, ghx, ghm). Unused outputs are empty.
_FWD_SCHEMA = (
    "(Tensor hx, Tensor? hm, Tensor w, Tensor? b, Tensor? t) "
    "-> (Tensor, Tensor, Tensor, Tensor, Tensor)"
)
_BWD_SCHEMA = (
    "(Tensor hx, Tensor? hm, Tensor w, Tensor g, bool need_gw, bool need_gh) "
    "-> (Tensor, Tensor, Tensor)"
)


def _fwd_outputs(hx, t, P):
    N, D = hx.shape
    f32 = {"dtype": torch.float32, "device": hx.device}
    pred = torch.empty(N, P, **f32)
    if t is None:
        none = torch.empty(0, **f32)
        return pred, none, none.clone(), none.clone(), none.clone()
    return (
        pred,
        torch.empty(N, P, **f32),
        torch.empty(P, **f32),
        torch.empty(P, D, **f32),
        torch.empty(P, **f32),
    )


def _bwd_outputs(hx, hm, P, need_gw, need_gh):
    N, D = hx.shape
    gw = torch.empty(P, D, dtype=torch.float32, device=hx.device) if need_gw else None
    ghx = torch.empty(N, D, dtype=hx.dtype, device=hx.device) if need_gh else None
    ghm = (
        torch.empty(N, D, dtype=hx.dtype, device=hx.device) if need_gh and hm is not None else None
    )
    return gw, ghx, ghm


def _or_empty(t: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return t if t is not None else like.new_empty(0, dtype=torch.float32)


def _zero_train_outputs(out):
    for t in out[2:]:
        t.zero_()
    return out


def _cpp_fwd(hx, hm, w, b, t):
    C = _native.load()
    out = _fwd_outputs(hx, t, w.shape[0])
    N, D = hx.shape
    if N == 0:
        return _zero_train_outputs(out)
    C.delta_probe_fwd_cpu(
        _checks.DTYPE_CODES[hx.dtype], hx.data_ptr(), hx.stride(0), _checks.ptr(hm),
        hm.stride(0) if hm is not None else 0, w.data_ptr(), _checks.ptr(b), _checks.ptr(t),
        N, D, w.shape[0], *(o.data_ptr() if o.numel() else 0 for o in out),
        torch.get_num_threads(),
    )  # fmt: skip
    return out


def _cpp_bwd(hx, hm, w, g, need_gw, need_gh):
    C = _native.load()
    N, D = hx.shape
    gw, ghx, ghm = _bwd_outputs(hx, hm, w.shape[0], need_gw, need_gh)
    if N == 0 and gw is not None:
        gw.zero_()
    elif N > 0:
        C.delta_probe_bwd_cpu(
            _checks.DTYPE_CODES[hx.dtype], hx.data_ptr(), hx.stride(0), _checks.ptr(hm),
            hm.stride(0) if hm is not None else 0, w.data_ptr(), g.data_ptr(), N, D, w.shape[0],
            _checks.ptr(gw), _checks.ptr(ghx), _checks.ptr(ghm), torch.get_num_threads(),
        )  # fmt: skip
    return _or_empty(gw, hx), _or_empty(ghx, hx), _or_empty(ghm, hx)


def _cuda_fwd(hx, hm, w, b, t):
    C = _native.load()
    out = _fwd_outputs(hx, t, w.shape[0])
    N, D = hx.shape
    if N == 0:
        return _zero_train_outputs(out)
    P = w.shape[0]
    scratch_bytes = C.delta_probe_fwd_cuda_scratch_bytes(N, D, P)
    scratch = torch.empty(max(scratch_bytes, 1), dtype=torch.uint8, device=hx.device)
    with torch.cuda.device(hx.device):
        stream = torch.cuda.current_stream(hx.device).cuda_stream
        C.delta_probe_fwd_cuda(
            _checks.DTYPE_CODES[hx.dtype], hx.data_ptr(), hx.stride(0), _checks.ptr(hm),
            hm.stride(0) if hm is not None else 0, w.data_ptr(), _checks.ptr(b), _checks.ptr(t),
            N, D, P, *(o.data_ptr() if o.numel() else 0 for o in out), scratch.data_ptr(),
            scratch_bytes, stream,
        )  # fmt: skip
    return out


def _cuda_bwd(hx, hm, w, g, need_gw, need_gh):
    C = _native.load()
    N, D = hx.shape
    P = w.shape[0]
    gw, ghx, ghm = _bwd_outputs(hx, hm, P, need_gw, need_gh)
    if N == 0 and gw is not None:
        gw.zero_()
    elif N > 0:
        scratch_bytes = C.delta_probe_bwd_cuda_scratch_bytes(N, D, P)
        scratch = torch.empty(max(scratch_bytes, 1), dtype=torch.uint8, device=hx.device)
        with torch.cuda.device(hx.device):
            stream = torch.cuda.current_stream(hx.device).cuda_stream
            C.delta_probe_bwd_cuda(
                _checks.DTYPE_CODES[hx.dtype], hx.data_ptr(), hx.stride(0), _checks.ptr(hm),
                hm.stride(0) if hm is not None else 0, w.data_ptr(), g.data_ptr(), N, D, P,
                _checks.ptr(gw), _checks.ptr(ghx), _checks.ptr(ghm), scratch.data_ptr(),
                scratch_bytes, stream,
            )  # fmt: skip
    return _or_empty(gw, hx), _or_empty(ghx, hx), _or_empty(ghm, hx)


def _triton_fwd(hx, hm, w, b, t):
    from introspect.kernels import delta_probe as k

    if hx.shape[0] == 0:
        return _zero_train_outputs(_fwd_outputs(hx, t, w.shape[0]))
    pred, resid, sse, G, gb = k.delta_probe_fwd(hx, hm, w, b, t)
    return pred, _or_empty(resid, hx), _or_empty(sse, hx), _or_empty(G, hx), _or_empty(gb, hx)


def _triton_bwd(hx, hm, w, g, need_gw, need_gh):
    from introspect.kernels import delta_probe as k

    if hx.shape[0] == 0:
        gw, ghx, ghm = _bwd_outputs(hx, hm, w.shape[0], need_gw, need_gh)
        if gw is not None:
            gw.zero_()
    else:
        gw, ghx, ghm = k.delta_probe_bwd(hx, hm, w, g, need_gw, need_gh)
    return _or_empty(gw, hx), _or_empty(ghx, hx), _or_empty(ghm, hx)


def _nonzero(g: torch.Tensor) -> bool:
    """Whether an upstream gradient has any non-zero entry. While tracing (torch.compile) the
    value is unknown, so the general path, correct for any gradient, is taken."""
    if torch.compiler.is_compiling() or is_fake(g):
        return True
    return bool(g.any())


def _make_native_op(backend: str, fwd_kernel, bwd_kernel, device_types: tuple[str, ...]):
    lib = "introspect"
    fwd = torch.library.custom_op(
        f"{lib}::delta_probe_fwd_{backend}", fwd_kernel, mutates_args=(),
        device_types=device_types, schema=_FWD_SCHEMA,
    )  # fmt: skip
    bwd = torch.library.custom_op(
        f"{lib}::delta_probe_bwd_{backend}", bwd_kernel, mutates_args=(),
        device_types=device_types, schema=_BWD_SCHEMA,
    )  # fmt: skip

    @fwd.register_fake
    def _(hx, hm, w, b, t):
        return _fwd_outputs(hx, t, w.shape[0])

    @bwd.register_fake
    def _(hx, hm, w, g, need_gw, need_gh):
        gw, ghx, ghm = _bwd_outputs(hx, hm, w.shape[0], need_gw, need_gh)
        return _or_empty(gw, hx), _or_empty(ghx, hx), _or_empty(ghm, hx)

    def setup_context(ctx, inputs, output):
        hx, hm, w, _, t = inputs
        _, resid, _, G, gb = output
        ctx.save_for_backward(hx, hm, w, resid, G, gb)
        ctx.has_target = t is not None
        # Outputs nobody differentiated arrive as None instead of zero-filled [N, P] tensors.
        ctx.set_materialize_grads(False)

    def backward(ctx, g_pred, g_resid, g_sse, g_G, g_gb):
        hx, hm, w, resid, G, gb = ctx.saved_tensors
        need_hx, need_hm, need_w, need_b, need_t = ctx.needs_input_grad
        # Only the prediction and the squared error feed the public outputs; the residual and
        # the gradient sums are internal and receive no gradient.
        coef = 2.0 * g_sse if (ctx.has_target and g_sse is not None) else None
        dense = g_pred is not None and _nonzero(g_pred)
        if not dense and coef is None:
            return None, None, None, None, None
        if dense:
            g_eff = g_pred.float() if coef is None else g_pred.float() + coef * resid
        else:
            g_eff = coef * resid
        g_eff = g_eff.contiguous()
        need_gh = need_hx or need_hm
        kernel_gw = need_w and (dense or coef is None)
        gw = gbias = gt = ghx = ghm = None
        if kernel_gw or need_gh:
            kgw, kghx, kghm = bwd(hx, hm, w, g_eff, kernel_gw, need_gh)
            gw = kgw if kernel_gw else None
            ghx = kghx if need_hx else None
            ghm = kghm if (need_hm and hm is not None) else None
        if need_w and gw is None:
            gw = coef[:, None] * G
        if need_b:
            gbias = g_eff.sum(0) if dense else coef * gb
        if need_t and coef is not None:
            gt = -coef * resid
        return ghx, ghm, gw, gbias, gt

    fwd.register_autograd(backward, setup_context=setup_context)
    return fwd


def _native_impl(fwd_op):
    def run(h_x, h_mod, w, bias, target):
        hx = _checks.unit_column_stride(h_x)
        hm = _checks.unit_column_stride(h_mod) if h_mod is not None else None
        w32 = w.to(torch.float32).contiguous()
        b32 = bias.to(torch.float32).contiguous() if bias is not None else None
        t32 = target.to(torch.float32).contiguous() if target is not None else None
        pred, _, sse, _, _ = fwd_op(hx, hm, w32, b32, t32)
        return pred, (sse if target is not None else None)

    return run


_cpp_op = _make_native_op("cpp", _cpp_fwd, _cpp_bwd, ("cpu",))
_cuda_op = _make_native_op("cuda", _cuda_fwd, _cuda_bwd, ("cuda",))
_triton_op = _make_native_op("triton", _triton_fwd, _triton_bwd, ("cpu", "cuda"))

_registry.register(OP, "cpp", devices={"cpu"}, dtypes=_NATIVE_DTYPES)(_native_impl(_cpp_op))


MAX_PROBES = 64
"""Most probes P the CUDA and Triton kernels take (csrc/delta_probe.cu: kMaxProbes,
kernels/delta_probe.py: MAX_P); ``auto`` runs more on the reference."""


def _kernel_accepts(what: str, min_d: int):
    def accepts(sizes: dict) -> str | None:
        if sizes["P"] > MAX_PROBES:
            return f"the {what} kernel takes at most {MAX_PROBES} probes, got P = {sizes['P']}"
        if sizes["D"] < min_d:
            return f"the {what} kernel needs D >= {min_d}"
        return None

    return accepts


_registry.register(
    OP, "cuda", devices={"cuda"}, dtypes=_NATIVE_DTYPES, accepts=_kernel_accepts("CUDA", 1)
)(_native_impl(_cuda_op))
_registry.register(
    OP, "triton", devices={"cpu", "cuda"}, dtypes=_NATIVE_DTYPES,
    accepts=_kernel_accepts("Triton", 0),
)(_native_impl(_triton_op))  # fmt: skip


# --------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------


def delta_probe(
    h_x: torch.Tensor,
    w: torch.Tensor,
    bias: torch.Tensor | None = None,
    target: torch.Tensor | None = None,
    *,
    h_mod: torch.Tensor | None = None,
    mode: str | None = None,
    reduction: str = "mean",
    backend: str = "auto",
) -> DeltaProbeOutput:
    """Linear-probe predictions (and MSE loss against ``target``) from hidden states.

    Args:
        h_x: [N, D] hidden states of x.
        w: [P, D] weights of P probes.
        bias: optional [P].
        target: optional [N, P] (or [N] when P == 1) regression targets, e.g. fixed Δ labels.
        h_mod: [N, D] hidden states of x' (required for ``mode="difference"``).
        mode: ``"direct"`` or ``"difference"``; defaults to ``"difference"`` when ``h_mod`` is
            given, else ``"direct"``.
        reduction: ``"mean"`` (over N·P), ``"sum"``, or ``"per_probe"`` ([P], mean over N).
        backend: ``"auto"``, ``"reference"``, ``"cpp"``, ``"cuda"`` or ``"triton"``.

    Returns:
        ``DeltaProbeOutput(pred, loss)``; ``loss`` is ``None`` without a target.
    """
    mode = _check_mode(mode, h_mod, reduction)
    target = _check_shapes(h_x, w, bias, target, h_mod)
    N, D = h_x.shape
    P = w.shape[0]
    device = _checks.same_device(OP, h_x=h_x, h_mod=h_mod, w=w, bias=bias, target=target)

    _, impl = _registry.select(OP, backend, device, h_x.dtype, {"N": N, "D": D, "P": P})
    pred, sse = impl.fn(h_x, h_mod, w, bias, target)

    out_dtype = h_x.dtype
    for t in (w, bias, target):
        if t is not None:
            out_dtype = torch.promote_types(out_dtype, t.dtype)
    loss = None if sse is None else _reduce(sse, reduction, N, P).to(out_dtype)
    return DeltaProbeOutput(pred.to(out_dtype), loss)


def _check_mode(mode: str | None, h_mod: torch.Tensor | None, reduction: str) -> str:
    """The mode, defaulted from whether ``h_mod`` is given; one clear error for any mismatch."""
    mode = ("difference" if h_mod is not None else "direct") if mode is None else mode
    if mode not in ("direct", "difference"):
        raise ValueError(f"delta_probe: mode must be 'direct' or 'difference', got {mode!r}")
    if mode == "difference" and h_mod is None:
        raise ValueError("delta_probe: mode='difference' needs h_mod (hidden states of x')")
    if mode == "direct" and h_mod is not None:
        raise ValueError("delta_probe: mode='direct' predicts from h_x alone; do not pass h_mod")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"delta_probe: reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    return mode


def _check_shapes(h_x, w, bias, target, h_mod) -> torch.Tensor | None:
    """Checks every tensor's dtype and shape against h_x [N, D] and w [P, D]; returns the target
    as [N, P] (a [N] target is accepted when P == 1)."""
    _checks.floating(OP, "h_x", h_x, 2)
    _checks.floating(OP, "w", w, 2)
    N, D = h_x.shape
    P = w.shape[0]
    if w.shape[1] != D:
        raise ValueError(
            f"delta_probe: w must be [P, D] with D = {D} (from h_x [N, D] = {list(h_x.shape)}), "
            f"got {list(w.shape)}"
        )
    if h_mod is not None:
        _checks.floating(OP, "h_mod", h_mod, 2)
        if h_mod.shape != h_x.shape:
            raise ValueError(
                f"delta_probe: h_mod must have h_x's shape {list(h_x.shape)}, "
                f"got {list(h_mod.shape)}"
            )
        if h_mod.dtype != h_x.dtype:
            raise TypeError(
                f"delta_probe: h_x and h_mod must share a dtype, got {h_x.dtype} and {h_mod.dtype}"
            )
    if bias is not None:
        _checks.floating(OP, "bias", bias, 1)
        if bias.shape != (P,):
            raise ValueError(f"delta_probe: bias must be [P] = [{P}], got {list(bias.shape)}")
    if target is not None:
        _checks.floating(OP, "target", target, (1, 2))
        if target.dim() == 1 and P == 1 and target.shape[0] == N:
            target = target[:, None]
        if target.shape != (N, P):
            raise ValueError(
                f"delta_probe: target must be [N, P] = [{N}, {P}], got {list(target.shape)}"
            )
    return target


def _reduce(sse: torch.Tensor, reduction: str, N: int, P: int) -> torch.Tensor:
    """The per-probe sums of squared errors [P] reduced as ``reduction`` asks."""
    if reduction == "mean":
        return sse.sum() / (N * P)
    if reduction == "sum":
        return sse.sum()
    return sse / N
