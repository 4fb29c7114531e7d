"""Synthetic hidden states and run directories for the explainer tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from introspect.run import RunWriter, open_run


def linear_data(n: int, d: int, seed: int = 0, noise: float = 0.3, offset: float = 2.0):
    """Features with uneven scales and an offset, and labels linear in them plus noise
    (signal variance 1, noise variance ``noise**2``). Returns ``(x float32 [n, d], y, w)``."""
    rng = np.random.default_rng(seed)
    scales = rng.uniform(0.5, 3.0, size=d)
    x = (rng.normal(size=(n, d)) * scales + offset).astype(np.float32)
    w = rng.normal(size=d)
    signal = (x.astype(np.float64) - offset) @ w
    signal /= signal.std()
    return x, signal + noise * rng.normal(size=n), w


def run_data(n: int, d: int, layers=(1, 3), seed: int = 0) -> dict:
    """Hidden states of x and x' per layer, f(x), f(x') and ids, as in-memory arrays."""
    rng = np.random.default_rng(seed)
    hx = {la: (rng.normal(size=(n, d)) + la).astype(np.float32) for la in layers}
    hm = {la: (hx[la] + 0.5 * rng.normal(size=(n, d))).astype(np.float32) for la in layers}
    f_x = rng.normal(size=n)
    return {
        "ids": [f"pair-{i:04d}" for i in range(n)],
        "layers": list(layers),
        "d": d,
        "hx": hx,
        "hm": hm,
        "f_x": f_x,
        "f_mod": f_x + rng.normal(size=n),
    }


def write_run(path: Path, data: dict, *, shard_rows: int = 64, world_size: int = 1, order=None):
    """Writes ``data`` as a run directory (``order``: row permutation to store; ``world_size``
    ranks with strided rows) and opens it."""
    n = len(data["ids"])
    order = np.arange(n) if order is None else np.asarray(order)
    for rank in range(world_size):
        w = RunWriter(
            path,
            model_id="synthetic",
            weights_hash="00" * 32,
            config={"behaviour": "logodds"},
            input_hash="11" * 32,
            layers=data["layers"],
            positions=["last"],
            hidden_size=data["d"],
            shard_rows=shard_rows,
            rank=rank,
            world_size=world_size,
        )
        mine = order[rank::world_size]
        for lo in range(0, len(mine), 37):
            sel = mine[lo : lo + 37]
            hidden = {}
            for la in data["layers"]:
                hidden[(la, "last", "x")] = data["hx"][la][sel]
                hidden[(la, "last", "mod")] = data["hm"][la][sel]
            w.add([data["ids"][i] for i in sel], data["f_x"][sel], data["f_mod"][sel], hidden)
        w.close()
    return open_run(path)


def pearson_by_hand(a, b) -> float:
    a = [float(v) for v in a]
    b = [float(v) for v in b]
    n = len(a)
    ma, mb = sum(a) / n, sum(b) / n
    sab = sum((x - ma) * (y - mb) for x, y in zip(a, b, strict=True))
    saa = sum((x - ma) ** 2 for x in a)
    sbb = sum((y - mb) ** 2 for y in b)
    return sab / (saa * sbb) ** 0.5
