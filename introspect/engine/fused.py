"""Fused elementwise kernels in the forward of a Llama-family model (CPU, inference).

``with fused_kernels(model):`` swaps in the fused ops of :mod:`introspect.ops.fused` for the
elementwise work between the matrix products: every RMS norm (``LlamaRMSNorm``'s formula), the
gated MLP's ``act_fn(gate_proj(x)) * up_proj(x)`` with a SiLU activation, and
``apply_rotary_pos_emb``; and every float32 ``torch.nn.Linear`` of the decoder runs oneDNN's GEMM
on a prepacked copy of its weight (:mod:`introspect.ops.linear`). Norms, MLPs and linear layers
get a ``forward`` of their own instance (the classes are untouched); the rotary function, which
the attention calls as a global of its modeling file, is replaced in that file's module for the
duration of the block. Everything is restored on exit, exceptions included.

What is swapped is decided by behaviour, not by class names: a module is swapped only if its
own forward gives, on a small probe, bit for bit what the PyTorch formula the fused op
implements gives. The model qualifies (Llama, Mistral, Qwen2, SmolLM2, ...) when every decoder
layer's ``input_layernorm`` and ``post_attention_layernorm`` pass; Gemma's norms (scaled by
``1 + weight``) and GPT-2's LayerNorm do not, and the block then changes nothing. It also
changes nothing on parameters off the CPU, with grad enabled, or without the compiled kernels.

The packed copies live as long as a :func:`packing_scope` of the model (one extraction, one
evaluation pass: the engine's entry points open one), or one ``fused_kernels`` block outside any
scope. Within a scope a copy is remade when its weight's storage or version changes; across scopes
nothing is kept, so a weight changed where no version counter sees it (``param.data.copy_(...)``)
is never served from a stale copy by a later call.

The residual add before each norm stays in the decoder layer's own forward (fusing it needs
that forward, which differs across transformers releases): :func:`introspect.ops.rms_norm` with
``residual`` implements it.
"""

from __future__ import annotations

import contextlib
import sys
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import ModuleType

import torch
import torch.nn.functional as F

from introspect import _native
from introspect.engine.forward import _base, decoder_layers
from introspect.ops import _registry
from introspect.ops import fused as ops
from introspect.ops.linear import (
    PackedWeight,
    linear,
    linear_onednn,
    onednn_unavailable,
    pack_linear_weight,
)

PACK_LINEARS = True
"""Whether :func:`fused_kernels` also runs the linear layers on prepacked oneDNN weights (off:
the benchmarks' ablation of that share)."""

_PATCHED = "__introspect_fused_original__"  # marks the rotary function this module put in


def _probe(*shape: int, dtype: torch.dtype, device, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(device, dtype)


def _same(fn, *args, expected) -> bool:
    """Whether ``fn(*args)`` runs and equals ``expected`` bit for bit."""
    try:
        got = fn(*args)
    except Exception:  # a module that cannot run the probe is not one this swaps
        return False
    if isinstance(expected, tuple):
        return isinstance(got, tuple) and all(map(torch.equal, got, expected))
    return isinstance(got, torch.Tensor) and torch.equal(got, expected)


def is_llama_rms_norm(module: torch.nn.Module) -> bool:
    """``module`` computes ``LlamaRMSNorm``'s formula with its ``weight`` and
    ``variance_epsilon`` (checked on a probe, bit for bit)."""
    w, eps = getattr(module, "weight", None), getattr(module, "variance_epsilon", None)
    if not isinstance(w, torch.Tensor) or w.dim() != 1 or not isinstance(eps, (int, float)):
        return False
    x = _probe(3, w.shape[0], dtype=w.dtype, device=w.device)
    return _same(type(module).forward, module, x, expected=ops.rms_norm_reference(x, w, eps))


def is_gated_silu_mlp(module: torch.nn.Module) -> bool:
    """``module(x)`` is ``down_proj(silu(gate_proj(x)) * up_proj(x))`` (checked on a probe)."""
    parts = [getattr(module, n, None) for n in ("gate_proj", "up_proj", "down_proj")]
    width = getattr(parts[0], "in_features", None)
    w = getattr(parts[0], "weight", None)
    if not all(isinstance(p, torch.nn.Module) for p in parts) or not isinstance(width, int):
        return False
    if not isinstance(w, torch.Tensor):
        return False
    x = _probe(3, width, dtype=w.dtype, device=w.device)
    gate, up, down = parts
    with torch.no_grad():
        expected = down(F.silu(gate(x)) * up(x))
    return _same(type(module).forward, module, x, expected=expected)


def _rotary_home(layer: torch.nn.Module) -> ModuleType | None:
    """The modeling file whose ``apply_rotary_pos_emb`` the layer's attention calls, if that
    function is the Hugging Face formula (checked on a probe)."""
    attn = getattr(layer, "self_attn", None)
    home = sys.modules.get(type(attn).__module__) if attn is not None else None
    fn = getattr(home, "apply_rotary_pos_emb", None)
    if fn is None or hasattr(fn, _PATCHED):
        return None
    q = _probe(2, 3, 5, 8, dtype=torch.float32, device="cpu", seed=1)
    k = _probe(2, 1, 5, 8, dtype=torch.float32, device="cpu", seed=2)
    cos = _probe(2, 5, 8, dtype=torch.float32, device="cpu", seed=3)
    sin = _probe(2, 5, 8, dtype=torch.float32, device="cpu", seed=4)
    return home if _same(fn, q, k, cos, sin, expected=ops.rope_reference(q, k, cos, sin)) else None


@dataclass
class FusedPlan:
    """The modules of one model that :func:`fused_kernels` swaps."""

    norms: list[torch.nn.Module] = field(default_factory=list)
    mlps: list[torch.nn.Module] = field(default_factory=list)
    rotary: list[ModuleType] = field(default_factory=list)
    linears: list[torch.nn.Linear] = field(default_factory=list)


_Packed = dict[int, PackedWeight]  # id(linear) -> its weight's packed copy

# model -> [open scopes, its packed copies]; the entry goes when the last scope closes.
_SCOPES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def packing_scope(model) -> Iterator[None]:
    """Keeps the packed copies of ``model``'s linear weights from one ``fused_kernels`` block to
    the next inside it (nested scopes share them); they are dropped when the model's outermost
    scope closes."""
    entry = _SCOPES.get(model)
    if entry is None:
        entry = _SCOPES[model] = [0, {}]
    entry[0] += 1
    try:
        yield
    finally:
        entry[0] -= 1
        if entry[0] == 0:
            _SCOPES.pop(model, None)


def _packed_weight(store: _Packed, module: torch.nn.Linear) -> PackedWeight:
    """``module``'s packed weight from ``store``, packed on first use and when it changed."""
    known = store.get(id(module))
    if known is None or not known.current(module.weight):
        known = store[id(module)] = pack_linear_weight(module.weight)
    return known


# model -> (its modules' identities, its plan): the probes run their matrix products once per
# model, not once per forward. A module replaced since makes a new plan.
_PLANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def fused_plan(model) -> FusedPlan | None:
    """What :func:`fused_kernels` would swap in ``model``, or ``None`` if it is not a
    Llama-family model (see the module docstring)."""
    key = tuple(map(id, model.modules()))
    known = _PLANS.get(model)
    if known is None or known[0] != key:
        known = _PLANS[model] = (key, _make_plan(model))
    return known[1]


@contextlib.contextmanager
def _one_thread():
    """The probes' small matrix products on one thread: with busy cores, each parallel region
    of a small op can wait milliseconds for a second thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _make_plan(model) -> FusedPlan | None:
    try:
        layers, base = decoder_layers(model), _base(model)
    except ValueError:
        return None
    with torch.inference_mode(), _one_thread():
        for layer in layers:
            for name in ("input_layernorm", "post_attention_layernorm"):
                norm = getattr(layer, name, None)
                if not isinstance(norm, torch.nn.Module) or not is_llama_rms_norm(norm):
                    return None
        plan = FusedPlan(norms=[m for m in base.modules() if is_llama_rms_norm(m)])
        plan.mlps = [
            layer.mlp for layer in layers if is_gated_silu_mlp(getattr(layer, "mlp", None))
        ]
        for layer in layers:
            home = _rotary_home(layer)
            if home is not None and home not in plan.rotary:
                plan.rotary.append(home)
    if onednn_unavailable() is None:
        plan.linears = [
            m for m in base.modules()
            if type(m) is torch.nn.Linear and m.weight.dtype == torch.float32
        ]  # fmt: skip
    return plan


def _picks(op: str, backend: str, sizes: dict) -> bool:
    """Whether ``auto`` runs ``op`` on ``backend`` for float32 CPU inputs that need no grad.
    Asked once per block: calls that fit then go straight to that backend's kernel, without
    the per-call checks and backend selection of the op's public function (which the others
    still take)."""
    try:
        name, _ = _registry.select(op, "auto", torch.device("cpu"), torch.float32, sizes)
    except (_registry.BackendUnavailableError, ValueError):
        return False
    return name == backend


def _direct(*tensors: torch.Tensor) -> bool:
    """float32 inputs that need no grad (the case the block's own choice was made for)."""
    grad = torch.is_grad_enabled()
    return all(t.dtype == torch.float32 and not (grad and t.requires_grad) for t in tensors)


def _norm_forward(norm: torch.nn.Module, cpp: bool):
    def forward(hidden_states: torch.Tensor) -> torch.Tensor:
        if cpp and _direct(hidden_states, norm.weight):
            return ops.rms_norm_cpp(hidden_states, norm.weight, norm.variance_epsilon)
        return ops.rms_norm(hidden_states, norm.weight, norm.variance_epsilon)

    return forward


def _mlp_forward(mlp: torch.nn.Module, cpp: bool):
    def forward(x: torch.Tensor) -> torch.Tensor:
        gate, up = mlp.gate_proj(x), mlp.up_proj(x)
        if cpp and gate.shape == up.shape and _direct(gate, up):
            return mlp.down_proj(ops.silu_mul_cpp(gate, up))
        return mlp.down_proj(ops.silu_mul(gate, up))

    return forward


def _linear_forward(store: _Packed, module: torch.nn.Linear, onednn: bool):
    def forward(x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32:  # autocast or a caller's own dtype: the module's own path
            return F.linear(x, module.weight, module.bias)
        packed = _packed_weight(store, module)
        bias = module.bias
        if onednn and _direct(x, module.weight) and (bias is None or _direct(bias)):
            return linear_onednn(x, module.weight, bias, packed)
        return linear(x, module.weight, bias, packed=packed)

    return forward


def _rope_fits(q, k, cos, sin) -> bool:
    """The shapes ``rope`` takes (HF's call with ``unsqueeze_dim=1``); anything else, such as a
    partial rotary dimension, goes to the original function."""
    if q.dim() != 4 or k.dim() != 4 or cos.dim() != 3 or sin.shape != cos.shape:
        return False
    B, _, S, D = q.shape
    return (
        k.shape[0] == B and k.shape[2:] == (S, D) and cos.shape[1:] == (S, D)
        and cos.shape[0] in (1, B) and q.device.type == "cpu"
    )  # fmt: skip


def _fused_rope(original, cpp: bool = False):
    def apply_rotary_pos_emb(q, k, cos, sin, *args, **kwargs):
        if args or kwargs or not _rope_fits(q, k, cos, sin):
            return original(q, k, cos, sin, *args, **kwargs)
        if cpp and q.shape[-1] % 2 == 0 and _direct(q, k, cos, sin):
            return ops.rope_cpp(q, k, cos, sin)
        return ops.rope(q, k, cos, sin)

    setattr(apply_rotary_pos_emb, _PATCHED, original)
    return apply_rotary_pos_emb


def _override_forward(stack: contextlib.ExitStack, module: torch.nn.Module, forward) -> None:
    own = module.__dict__.get("forward")

    def restore():
        if own is not None:
            module.forward = own
        else:
            module.__dict__.pop("forward", None)

    module.forward = forward
    stack.callback(restore)


def fused_kernels_unavailable(model) -> str | None:
    """Why :func:`fused_kernels` would leave ``model`` alone here (device, grad, build), or
    ``None``; whether the model is of the Llama family is :func:`fused_plan`'s question."""
    C = _native.load()
    if C is None or not hasattr(C, "rms_norm_cpu"):
        return _native.unavailable_reason() or "introspect._C has no fused kernels: rebuild it"
    if torch.is_grad_enabled():
        return "grad is enabled (the fused kernels run inference only)"
    if any(p.device.type != "cpu" for p in model.parameters()):
        return "the model is not on the CPU"
    return None


@contextlib.contextmanager
def fused_kernels(model, enabled: bool = True) -> Iterator[bool]:
    """Runs ``model``'s norms, MLP activations and rotary embedding through the fused CPU
    kernels inside the block (yields whether it did; see the module docstring)."""
    plan = fused_plan(model) if enabled and fused_kernels_unavailable(model) is None else None
    if plan is None:
        yield False
        return
    no_grad = {"grad": False, "why": None}
    with contextlib.ExitStack() as stack:
        cpp = _picks(ops.RMS_NORM, "cpp", no_grad)
        for norm in plan.norms:
            _override_forward(stack, norm, _norm_forward(norm, cpp))
        cpp = _picks(ops.SILU_MUL, "cpp", no_grad)
        for mlp in plan.mlps:
            _override_forward(stack, mlp, _mlp_forward(mlp, cpp))
        for home in plan.rotary:
            original = home.apply_rotary_pos_emb
            home.apply_rotary_pos_emb = _fused_rope(original, _picks(ops.ROPE, "cpp", no_grad))
            stack.callback(setattr, home, "apply_rotary_pos_emb", original)
        if PACK_LINEARS:
            scope = _SCOPES.get(model)
            store: _Packed = scope[1] if scope is not None else {}
            onednn = _picks("linear", "onednn", {**no_grad, "packed": True})
            for module in plan.linears:
                _override_forward(stack, module, _linear_forward(store, module, onednn))
        yield True
