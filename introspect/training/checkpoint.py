"""Checkpoint directories of a training run, written atomically, and the run's ``train.json``.

A training directory holds::

    train.json              settings, the per-step log and the checkpoint list (rewritten at
                            every checkpoint)
    init.safetensors        what was measured on the starting model M0: feature mean and scale
                            at the probe layer, the x' choice log-probabilities of the
                            regulariser
    labels.json             the fixed training labels as used (after noise or shuffling)
    ridge-m0/               a ridge probe fitted once on M0's hidden states (a frozen explainer)
    ckpt-{step:06d}/
        model/              the model (save_pretrained: safetensors + tokenizer); only when the
                            model trains
        probe/              the trained probe as an explainer (introspect.explain.load)
        state.safetensors   the probe's raw parameters and the torch RNG state
        optimizer.safetensors  the optimizer state (by default only in the latest checkpoint)
        state.json          the step, the log up to it, the settings

A checkpoint is written into a hidden temporary directory and renamed into place, so a listed
``ckpt-*`` directory is always complete.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from introspect._io import write_json_atomic

__all__ = [
    "CKPT_RE",
    "TRAIN_JSON",
    "checkpoint_name",
    "list_checkpoints",
    "load_optimizer",
    "read_json",
    "save_optimizer",
    "write_json",
]

TRAIN_JSON = "train.json"
CKPT_RE = re.compile(r"^ckpt-(\d{6,})$")


def checkpoint_name(step: int) -> str:
    return f"ckpt-{int(step):06d}"


def list_checkpoints(root: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(step, path)`` of the complete checkpoints under ``root``, by step."""
    root = Path(root)
    out = []
    if root.is_dir():
        for p in root.iterdir():
            m = CKPT_RE.match(p.name)
            if m and p.is_dir() and (p / "state.json").is_file():
                out.append((int(m.group(1)), p))
    return sorted(out)


def write_json(path: Path, obj: Any) -> None:
    """Writes ``obj`` as JSON through a temporary file and a rename."""
    write_json_atomic(path, obj, indent=1)


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file is missing") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def save_optimizer(opt: torch.optim.Optimizer, path: Path) -> None:
    """The per-parameter state of ``opt`` as safetensors (keys ``{index}.{name}``)."""
    from safetensors.torch import save_file

    tensors = {}
    for idx, state in opt.state_dict()["state"].items():
        for key, value in state.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"{idx}.{key}"] = t.detach().reshape(-1).cpu().contiguous()  # written now
    save_file(tensors, str(path))


def load_optimizer(opt: torch.optim.Optimizer, path: Path) -> None:
    """Restores a state written by :func:`save_optimizer` into ``opt`` (same parameters)."""
    from safetensors.torch import load_file

    flat = load_file(str(path))
    params = [p for g in opt.param_groups for p in g["params"]]
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in flat.items():
        idx, name = key.split(".", 1)
        i = int(idx)
        if not 0 <= i < len(params):
            raise ValueError(f"{path}: optimizer state for parameter {i} of {len(params)}")
        shape = params[i].shape if name != "step" else ()
        state.setdefault(i, {})[name] = value.reshape(shape)
    sd = opt.state_dict()
    sd["state"] = state
    opt.load_state_dict(sd)


def replace_dir(tmp: Path, final: Path) -> None:
    """Moves the finished directory ``tmp`` to ``final`` (replacing an older one)."""
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
