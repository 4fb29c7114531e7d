"""Weights hashes: what a run manifest records to name the exact weights a model had, computed
from its safetensors files or from its tensors in memory."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from introspect._io import sha256_file
from introspect.models.errors import ModelLoadError


def _weight_files(directory: Path) -> list[Path]:
    """The ``*.safetensors`` files of a model directory, sorted by name."""
    return sorted(p for p in directory.glob("*.safetensors") if p.is_file())


def _combine_digests(digests: Mapping[str, str]) -> str:
    """One sha256 over ``name NUL file-sha256 LF`` lines, sorted by file name."""
    outer = hashlib.sha256()
    for name in sorted(digests):
        outer.update(f"{name}\0{digests[name]}\n".encode())
    return outer.hexdigest()


def weights_sha256(directory: str | os.PathLike[str]) -> str:
    """The weights hash of a model directory: a sha256 over the sha256 of each ``*.safetensors``
    file in it (with its name). Independent of the dtype a model is later loaded in."""
    files = _weight_files(Path(directory))
    if not files:
        raise ModelLoadError(f"{directory} has no *.safetensors weight files")
    return _combine_digests({p.name: sha256_file(p) for p in files})


def weights_sha256_of(model: Any) -> str:
    """The weights hash of a model in memory: a sha256 over each parameter and buffer's name,
    dtype, shape and bytes, in ``state_dict`` order (two objects with the same tensors agree)."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\n".encode())
        if t.numel():  # the tensor's own bytes, not a copy
            digest.update(t.view(torch.uint8).reshape(-1).numpy())
    return digest.hexdigest()
