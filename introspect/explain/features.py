"""Where an explainer's inputs come from: hidden states in memory or in a run directory.

A source is a list of *blocks* (a run's shards, or fixed-size slices of in-memory arrays). Each
block knows the global row index of its rows and reads any subset of them on request, so that a
pass over a run touches one block's selected rows at a time and memory stays flat in N.
Features of several layers are concatenated along the feature axis, in the order given.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "ArraySource",
    "Block",
    "FeatureSource",
    "RunSource",
    "as_source",
    "row_indices",
    "row_mask",
]

CHUNK_ROWS = 8192
"""Rows read at once by full passes (statistics, prediction)."""


def _to_numpy(a: Any, what: str) -> np.ndarray:
    if hasattr(a, "detach") and hasattr(a, "cpu"):  # a torch tensor
        t = a.detach().cpu()
        if not t.is_floating_point():
            raise TypeError(f"{what} must hold floating-point values, got {t.dtype}")
        if str(t.dtype) not in ("torch.float16", "torch.float32", "torch.float64"):
            t = t.float()
        a = t.numpy()
    a = np.asarray(a) if not isinstance(a, np.ndarray) else a
    if a.dtype.kind != "f":
        raise TypeError(f"{what} must hold floating-point values, got {a.dtype}")
    if a.ndim != 2:
        raise ValueError(f"{what} must be 2-D [N, D], got shape {a.shape}")
    return a


@dataclass
class Block:
    """Rows of a source that are stored together."""

    rows: np.ndarray
    """[b] int64 global row index of each local row."""
    x: Sequence[np.ndarray]
    """Per feature group, [b, D_i] hidden states of x (memory-mapped or in memory)."""
    mod: Sequence[np.ndarray] | None
    """Per feature group, [b, D_i] hidden states of x', or None."""

    def __len__(self) -> int:
        return len(self.rows)

    def take(self, sel: Any, dtype: Any = np.float32) -> tuple[np.ndarray, np.ndarray | None]:
        """``(h_x, h_mod)`` of local rows ``sel`` as new C-contiguous ``dtype`` arrays [k, D]."""
        hx = _gather(self.x, sel, dtype)
        hm = _gather(self.mod, sel, dtype) if self.mod is not None else None
        return hx, hm


def _gather(parts: Sequence[np.ndarray], sel: Any, dtype: Any) -> np.ndarray:
    if len(parts) == 1:
        return np.array(parts[0][sel], dtype=dtype, order="C", copy=True)
    return np.concatenate([np.asarray(p[sel], dtype=dtype) for p in parts], axis=1)


class FeatureSource(abc.ABC):
    """Rows of hidden states, in blocks. ``n`` rows, ``dim`` features, optional ``ids``."""

    n: int
    dim: int
    ids: list[str] | None
    has_mod: bool

    @abc.abstractmethod
    def blocks(self) -> list[Block]:
        """The blocks, in storage order; together they hold every row once."""

    def chunks(
        self, mask: np.ndarray | None = None, *, dtype: Any = np.float32, rows: int = CHUNK_ROWS
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
        """``(global rows, h_x, h_mod)`` for the rows selected by ``mask`` (all when None), in
        block order, at most ``rows`` rows at a time."""
        for block in self.blocks():
            local = np.arange(len(block)) if mask is None else np.flatnonzero(mask[block.rows])
            for s in range(0, len(local), rows):
                sel = local[s : s + rows]
                if len(sel) == len(block):
                    sel = slice(None)
                hx, hm = block.take(sel, dtype)
                yield block.rows[sel], hx, hm


class ArraySource(FeatureSource):
    """Hidden states in memory: ``h_x`` [N, D] (or a list of [N, D_i] arrays, concatenated),
    optional ``h_mod`` of the same shape(s), optional pair ``ids``.

    ``block_rows`` cuts the rows into blocks of that many rows (default: one block); training
    shuffles blocks, then rows within a block, so a source cut like a run's shards trains exactly
    like that run.
    """

    def __init__(
        self,
        h_x: Any,
        h_mod: Any = None,
        *,
        ids: Sequence[str] | None = None,
        block_rows: int | None = None,
    ):
        xs = [h_x] if not isinstance(h_x, list | tuple) else list(h_x)
        self._x = [_to_numpy(a, "h_x") for a in xs]
        if not self._x:
            raise ValueError("h_x: no arrays given")
        n = self._x[0].shape[0]
        if any(a.shape[0] != n for a in self._x):
            raise ValueError(f"h_x: arrays have different row counts {[len(a) for a in self._x]}")
        self._mod = None
        if h_mod is not None:
            ms = [h_mod] if not isinstance(h_mod, list | tuple) else list(h_mod)
            self._mod = [_to_numpy(a, "h_mod") for a in ms]
            if [a.shape for a in self._mod] != [a.shape for a in self._x]:
                raise ValueError(
                    f"h_mod must have the shapes of h_x {[a.shape for a in self._x]}, "
                    f"got {[a.shape for a in self._mod]}"
                )
        self.n = int(n)
        self.dim = int(sum(a.shape[1] for a in self._x))
        self.has_mod = self._mod is not None
        if ids is not None:
            ids = [str(i) for i in ids]
            if len(ids) != self.n:
                raise ValueError(f"ids: {len(ids)} ids for {self.n} rows")
        self.ids = ids
        if block_rows is not None and int(block_rows) < 1:
            raise ValueError(f"block_rows must be >= 1, got {block_rows}")
        self.block_rows = int(block_rows) if block_rows else max(self.n, 1)

    def blocks(self) -> list[Block]:
        out = []
        for lo in range(0, self.n, self.block_rows):
            hi = min(lo + self.block_rows, self.n)
            out.append(
                Block(
                    np.arange(lo, hi, dtype=np.int64),
                    [a[lo:hi] for a in self._x],
                    [a[lo:hi] for a in self._mod] if self._mod is not None else None,
                )
            )
        return out


class RunSource(FeatureSource):
    """Hidden states of a run directory at ``layers`` (concatenated) and ``position``, read shard
    by shard from the memory-mapped files; ``with_mod`` also reads the x' side."""

    def __init__(
        self,
        run: Any,
        layers: Sequence[int] = (),
        position: str | None = None,
        *,
        with_mod: bool = False,
    ):
        self.run = run
        self.layers = [int(x) for x in layers] if layers else list(run.layers)
        if not self.layers:
            raise ValueError(f"{run.path}: the run captured no layers")
        missing = [x for x in self.layers if x not in run.layers]
        if missing:
            raise ValueError(f"layer(s) {missing} were not captured; this run has {run.layers}")
        if position is None:
            if not run.positions:
                raise ValueError(f"{run.path}: the run captured no hidden-state positions")
            position = run.positions[0]
        if position not in run.positions:
            raise ValueError(
                f"position {position!r} was not captured; this run has {run.positions}"
            )
        self.position = position
        if with_mod and "mod" not in run.sides:
            raise ValueError(
                f"{run.path}: the run holds no hidden states of x' (sides {run.sides})"
            )
        if "x" not in run.sides:
            raise ValueError(f"{run.path}: the run holds no hidden states of x (sides {run.sides})")
        self.has_mod = bool(with_mod)
        self.n = len(run)
        self.dim = len(self.layers) * int(run.hidden_size)
        self.ids = list(run.ids)

    def blocks(self) -> list[Block]:
        k = self.run.world_size

        def shards(side: str):
            return [list(self.run.hidden_shards(la, side, self.position)) for la in self.layers]

        xs = shards("x")
        ms = shards("mod") if self.has_mod else None
        out = []
        for j, (rank, local, _) in enumerate(xs[0]):
            rows = np.arange(local.start, local.stop, dtype=np.int64) * k + rank
            out.append(
                Block(
                    rows,
                    [per_layer[j][2] for per_layer in xs],
                    [per_layer[j][2] for per_layer in ms] if ms is not None else None,
                )
            )
        return out


def as_source(
    data: Any, *, layers: Sequence[int] = (), position: str | None = None, with_mod: bool = False
) -> FeatureSource:
    """A :class:`FeatureSource` for ``data``: a source (returned as is), a run (a ``Run``
    object), an [N, D] array or tensor, or a pair ``(h_x, h_mod)``."""
    from introspect.run import Run

    if isinstance(data, FeatureSource):
        return data
    if isinstance(data, Run):
        return RunSource(data, layers, position, with_mod=with_mod)
    if isinstance(data, tuple) and len(data) == 2:
        return ArraySource(data[0], data[1])
    return ArraySource(data)


def row_indices(n: int, rows: Any) -> np.ndarray:
    """The int64 row indices ``rows`` selects, in its order (the true entries of a boolean mask,
    in row order); every row when ``rows`` is None."""
    if rows is None:
        return np.arange(n)
    r = np.asarray(rows)
    if r.dtype == bool:
        if r.shape != (n,):
            raise ValueError(f"rows: a boolean mask must have shape ({n},), got {r.shape}")
        return np.flatnonzero(r)
    if r.ndim != 1 or (r.size and r.dtype.kind not in "iu"):
        raise ValueError("rows must be a 1-D array of row indices or a boolean mask")
    if r.size and (r.min() < 0 or r.max() >= n):
        raise ValueError(f"rows: indices must lie in [0, {n}), got {r.min()}..{r.max()}")
    return r.astype(np.int64)


def row_mask(n: int, rows: Any) -> np.ndarray:
    """A boolean [n] mask from row indices (or a boolean mask); all rows when ``rows`` is None."""
    mask = np.zeros(n, dtype=bool)
    mask[row_indices(n, rows)] = True
    return mask
