"""Low-rank adapters (LoRA) for ``nn.Linear`` layers: inject, train, merge, save, remove.

A :class:`LoRALinear` wraps a frozen linear layer W (bias b) and adds a trainable low-rank update::

    y = x Wᵀ + b + (α / r) · x Aᵀ Bᵀ        A: [r, in], B: [out, r]

B starts at zero, so a freshly injected model computes exactly what the base model computes. A is
drawn uniformly in ±1/√in from a seeded generator, so injection is reproducible.
:func:`merge_lora` folds (α / r)·B A into W for inference without the extra matmuls and
:func:`unmerge_lora` takes it out again; only the adapter tensors (A and B of every wrapped layer)
are saved, as safetensors, with the rank, α and the wrapped layer names in the file's metadata.

Why not ``peft``: it is a heavy dependency (accelerate, a large API surface) for the ~200 lines
needed here; this module gives exact control over what is wrapped, how A is initialised and what is
saved (so results are bit-reproducible for a seed); and it couples to no peft version's
checkpoint layout or to its tracking of transformers internals.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "LoRALinear",
    "adapter_disabled",
    "base_fingerprint",
    "inject_lora",
    "load_lora",
    "lora_layers",
    "lora_state_dict",
    "merge_lora",
    "read_lora_file",
    "remove_lora",
    "save_lora",
    "set_lora_state_dict",
    "unmerge_lora",
]


class LoRALinear(nn.Module):
    """``base(x) + scaling · (x Aᵀ) Bᵀ`` with ``scaling = alpha / rank``; ``base`` is frozen."""

    def __init__(
        self,
        base: nn.Linear,
        rank: int,
        alpha: float,
        *,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}")
        if int(rank) < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        if not (math.isfinite(alpha) and alpha > 0):
            raise ValueError(f"LoRA alpha must be a positive number, got {alpha}")
        self.base = base
        self.rank = int(rank)
        self.alpha = float(alpha)
        self.scaling = self.alpha / self.rank
        w = base.weight
        for p in base.parameters():
            p.requires_grad_(False)
        bound = 1.0 / math.sqrt(base.in_features)
        a = (torch.rand(self.rank, base.in_features, generator=generator) * 2 - 1) * bound
        self.lora_A = nn.Parameter(a.to(device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(
            torch.zeros(base.out_features, self.rank, device=w.device, dtype=w.dtype)
        )
        self.merged = False
        self.enabled = True

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def weight(self) -> torch.Tensor:
        """The base layer's weight (merged or not), for code that reads ``.weight``."""
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def delta_weight(self) -> torch.Tensor:
        """(α / r)·B A, computed in float32 at least, in the weight's shape."""
        dt = torch.promote_types(self.lora_B.dtype, torch.float32)
        return (self.lora_B.to(dt) @ self.lora_A.to(dt)) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.merged or not self.enabled:
            return y
        z = nn.functional.linear(nn.functional.linear(x, self.lora_A), self.lora_B)
        return y + z * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Adds (α / r)·B A into the base weight; forward then skips the adapter path."""
        if self.merged:
            return
        w = self.base.weight
        w.copy_((w.to(self.delta_weight().dtype) + self.delta_weight()).to(w.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Takes the adapter back out of the base weight."""
        if not self.merged:
            return
        w = self.base.weight
        w.copy_((w.to(self.delta_weight().dtype) - self.delta_weight()).to(w.dtype))
        self.merged = False

    def extra_repr(self) -> str:
        return (
            f"in={self.in_features}, out={self.out_features}, rank={self.rank}, "
            f"alpha={self.alpha:g}, merged={self.merged}"
        )


# ------------------------------------------------------------------------------ injection


def _matches(name: str, targets: Sequence[str]) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Puts ``module`` at the dotted ``name`` of ``model``, in place of what is there."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """The wrapped layers by module name, in module order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def inject_lora(
    model: nn.Module,
    targets: Sequence[str],
    rank: int,
    alpha: float,
    *,
    seed: int = 0,
) -> list[str]:
    """Wraps every ``nn.Linear`` whose name is, or ends with ``"." +``, one of ``targets`` (e.g.
    ``("q_proj", "v_proj")``) in a :class:`LoRALinear`, in place. Every other parameter of the
    model is frozen. Returns the wrapped names (sorted). A is drawn per layer in module order from
    one generator seeded with ``seed``."""
    targets = tuple(targets)
    if not targets:
        raise ValueError("inject_lora needs at least one target module name")
    if lora_layers(model):
        raise ValueError("this model already carries LoRA adapters; remove_lora() them first")
    linear = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    chosen = [(n, m) for n, m in linear if _matches(n, targets)]
    if not chosen:
        suffixes = sorted({n.rsplit(".", 1)[-1] for n, _ in linear})
        raise ValueError(
            f"no nn.Linear module matches LoRA targets {list(targets)}; "
            f"linear module names end with: {suffixes}"
        )
    for p in model.parameters():
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(int(seed))
    for name, module in chosen:
        _set_module(model, name, LoRALinear(module, rank, alpha, generator=gen))
    return sorted(n for n, _ in chosen)


def remove_lora(model: nn.Module, *, merge: bool = False) -> list[str]:
    """Puts the original ``nn.Linear`` layers back (with the adapters merged into them when
    ``merge``; otherwise the base weights as they were). Returns the names restored."""
    names = []
    for name, layer in lora_layers(model).items():
        if merge:
            layer.merge()
        else:
            layer.unmerge()
        _set_module(model, name, layer.base)
        names.append(name)
    return names


def merge_lora(model: nn.Module) -> None:
    for layer in lora_layers(model).values():
        layer.merge()


def unmerge_lora(model: nn.Module) -> None:
    for layer in lora_layers(model).values():
        layer.unmerge()


@contextlib.contextmanager
def adapter_disabled(model: nn.Module) -> Iterator[None]:
    """Within the block the model computes as its base model (merged adapters are taken out and
    put back afterwards)."""
    layers = list(lora_layers(model).values())
    state = [(layer.enabled, layer.merged) for layer in layers]
    try:
        for layer in layers:
            layer.unmerge()
            layer.enabled = False
        yield
    finally:
        for layer, (enabled, merged) in zip(layers, state, strict=True):
            layer.enabled = enabled
            if merged:
                layer.merge()


def base_fingerprint(model: nn.Module) -> str:
    """A cheap fingerprint of the base weights: names, shapes, dtypes and a strided sample of up to
    4096 values of every tensor (adapters excluded, wrapped layers named as unwrapped), so that
    adapters can refuse a base model other than the one they were trained on."""
    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_" in name:
                continue
            h.update(name.replace(".base.", ".").encode())
            h.update(f"{tuple(p.shape)}|{p.dtype}".encode())
            flat = p.detach().reshape(-1)
            step = max(1, flat.numel() // 4096)
            h.update(flat[::step].to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------- files


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{"<module>.lora_A": A, "<module>.lora_B": B}`` for every wrapped layer (detached
    copies, contiguous)."""
    out = {}
    for name, layer in lora_layers(model).items():
        out[f"{name}.lora_A"] = layer.lora_A.detach().clone().contiguous()
        out[f"{name}.lora_B"] = layer.lora_B.detach().clone().contiguous()
    return out


@torch.no_grad()
def set_lora_state_dict(model: nn.Module, tensors: Mapping[str, torch.Tensor]) -> None:
    """Copies adapter tensors into the wrapped layers; the names and shapes must match exactly
    (merged layers are unmerged, updated and merged again)."""
    layers = lora_layers(model)
    want = {f"{n}.lora_{k}" for n in layers for k in "AB"}
    missing, unexpected = sorted(want - set(tensors)), sorted(set(tensors) - want)
    if missing or unexpected:
        raise ValueError(
            f"adapter tensors do not fit this model: missing {missing[:6]}, "
            f"unexpected {unexpected[:6]}"
        )
    for name, layer in layers.items():
        merged = layer.merged
        layer.unmerge()
        for key, param in (("A", layer.lora_A), ("B", layer.lora_B)):
            t = tensors[f"{name}.lora_{key}"]
            if tuple(t.shape) != tuple(param.shape):
                raise ValueError(
                    f"adapter tensor {name}.lora_{key} has shape {tuple(t.shape)}, "
                    f"the layer needs {tuple(param.shape)}"
                )
            param.copy_(t.to(device=param.device, dtype=param.dtype))
        if merged:
            layer.merge()


def _lora_meta(model: nn.Module) -> dict[str, str]:
    layers = lora_layers(model)
    if not layers:
        raise ValueError("this model carries no LoRA adapters")
    first = next(iter(layers.values()))
    return {
        "format": "introspect-lora",
        "rank": str(first.rank),
        "alpha": repr(first.alpha),
        "modules": json.dumps(sorted(layers)),
    }


def save_lora(model: nn.Module, path: str | os.PathLike, metadata: Mapping[str, str] = ()) -> Path:
    """Writes only the adapter tensors to the safetensors file ``path`` (atomically)."""
    from safetensors.torch import save

    from introspect._io import write_atomic

    path = Path(path)
    meta = {**dict(metadata), **_lora_meta(model)}
    write_atomic(path, save(lora_state_dict(model), meta))
    return path


def read_lora_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The adapter tensors and metadata of a file written by :func:`save_lora`."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no adapter file here")
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return tensors, meta


def load_lora(model: nn.Module, path: str | os.PathLike, *, seed: int = 0) -> list[str]:
    """Injects adapters as recorded in ``path`` (rank, α, modules) into a plain model and loads
    their tensors. Returns the wrapped names."""
    tensors, meta = read_lora_file(path)
    if meta.get("format") != "introspect-lora":
        raise ValueError(f"{path}: not an adapter file written by save_lora")
    modules = json.loads(meta["modules"])
    names = inject_lora(model, modules, int(meta["rank"]), float(meta["alpha"]), seed=seed)
    if names != sorted(modules):
        remove_lora(model)
        raise ValueError(f"{path}: adapters for {modules}, but this model has {names}")
    set_lora_state_dict(model, tensors)
    return names
