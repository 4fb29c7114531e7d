"""Shared benchmark harness: timing, machine limits, result rows, tables and charts.

Every benchmark script in this folder uses it, so numbers are taken the same way everywhere:
warm-up runs, then repeats; medians with the 10th/90th percentiles; ratios against a baseline
measured in the same run (never compare absolute times across runs on a shared machine); each
row stamped with the machine, versions and time; rows written as JSON and CSV under
build/bench/ (or ``--out-dir``), charts as PNG beside them. ``make publish-results`` copies the
curated results the docs cite into benchmarks/results/ (tracked).
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
# Where a benchmark run writes (untracked; ``--out-dir`` replaces it for one run).
RESULTS = ROOT / "build" / "bench"
# The curated results the docs cite, copied here by ``make publish-results`` (tracked).
PUBLISHED = Path(__file__).resolve().parent / "results"


def add_out_dir(parser: argparse.ArgumentParser) -> None:
    """Adds ``--out-dir`` (where this run's results go) to a benchmark script's arguments."""
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="where the result files go (default: build/bench/ under the repository root; "
        "`make publish-results` copies the curated ones into benchmarks/results/)",
    )


def use_out_dir(out_dir: Path | None) -> Path:
    """Makes ``out_dir`` (when given) the directory this process writes results to."""
    global RESULTS
    if out_dir is not None:
        RESULTS = Path(out_dir)
    return RESULTS


def measure(fn: Callable[[], object], *, warmup: int = 2, repeats: int = 7) -> dict:
    """Times ``fn`` (seconds): median, p10, p90 over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    q = statistics.quantiles(times, n=10) if len(times) > 1 else [times[0]] * 9
    return {"median_s": statistics.median(times), "p10_s": q[0], "p90_s": q[-1], "repeats": repeats}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_stamp() -> dict:
    import introspect

    return {
        "time_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "introspect": introspect.__version__,
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def _best_s(fn: Callable[[], object], warmup: int, repeats: int) -> float:
    """The fastest of ``repeats`` timed runs: a ceiling is what the machine can do at best."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def memory_bandwidth(mbytes: int = 512) -> dict:
    """Measured memory bandwidth in GB/s (best of 7): a streaming read (sum) and a copy (read +
    write)."""
    x = torch.ones(mbytes * 2**20 // 4, dtype=torch.float32)
    y = torch.empty_like(x)
    read = _best_s(lambda: x.sum(), warmup=2, repeats=7)
    copy = _best_s(lambda: y.copy_(x), warmup=2, repeats=7)
    n = x.numel() * 4
    return {"read_GBps": n / read / 1e9, "copy_GBps": 2 * n / copy / 1e9}


# Square and transformer-shaped products (tokens x hidden x MLP width of a 135M model); the
# ceiling is the best rate over them.
GEMM_SHAPES = ((2048, 2048, 2048), (4096, 576, 1536), (4096, 1536, 576))


def gemm_flops(dtype: torch.dtype = torch.float32, shapes=GEMM_SHAPES) -> float:
    """Measured dense matmul throughput in GFLOP/s for ``dtype`` on the CPU: the best of 5 runs
    of each shape in ``shapes`` ((m, k, n) triples), the best shape's rate."""
    best = 0.0
    for m, k, n in shapes:
        a = torch.randn(m, k).to(dtype)
        b = torch.randn(k, n).to(dtype)
        t = _best_s(lambda a=a, b=b: a @ b, warmup=1, repeats=5)
        best = max(best, 2 * m * k * n / t / 1e9)
    return best


ROOFLINE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def roofline(dtypes=("float32", "bfloat16", "float16")) -> dict:
    """The machine's ceilings, measured now: GEMM GFLOP/s per dtype and memory GB/s. Every
    throughput a benchmark reports is also given as a fraction of these."""
    out = {"gemm_GFLOPs": {d: gemm_flops(ROOFLINE_DTYPES[d]) for d in dtypes}}
    out["memory_bandwidth"] = memory_bandwidth()
    return out


def describe_roofline(r: dict) -> str:
    gemm = ", ".join(f"{d} {v:.0f}" for d, v in r["gemm_GFLOPs"].items())
    bw = r["memory_bandwidth"]
    return f"GEMM {gemm} GFLOP/s; memory read {bw['read_GBps']:.1f} GB/s"


def write_rows(name: str, rows: list[dict], meta: dict) -> tuple[Path, Path]:
    """Writes ``rows`` to results/<name>.json (with ``meta``) and results/<name>.csv."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = RESULTS / f"{name}.json", RESULTS / f"{name}.csv"
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    os.replace(tmp, json_path)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    tmp = csv_path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, csv_path)
    return json_path, csv_path


def table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """Markdown table; ``columns`` are (key, header, format spec)."""
    head = "| " + " | ".join(h for _, h, _ in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = [
        "| "
        + " | ".join(format(r[k], f) if r.get(k) is not None else "—" for k, _, f in columns)
        + " |"
        for r in rows
    ]
    return "\n".join([head, rule, *body])


def bar_chart(
    path: Path,
    labels: list[str],
    series: dict[str, list[float]],
    *,
    ylabel: str,
    title: str,
    hline: float | None = None,
    hline_label: str = "",
) -> Path | None:
    """Grouped bar chart as PNG; returns None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(labels) + 2), 4.2))
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(labels))]
        ax.bar(xs, values, width, label=name)
    if hline is not None:
        ax.axhline(hline, color="black", linestyle="--", linewidth=1, label=hline_label)
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def line_panels(
    path: Path,
    panels: list[tuple[str, dict[str, tuple[list[float], list[float]]]]],
    *,
    xlabel: str,
    title: str,
    logx: bool = True,
    hlines: dict[int, float] | None = None,
) -> Path | None:
    """Side-by-side line charts: ``panels`` is a list of (y label, {series: (xs, ys)}).
    ``hlines`` maps a panel index to a dashed reference level. None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.0), squeeze=False)
    for i, (ax, (ylabel, series)) in enumerate(zip(axes[0], panels, strict=True)):
        for name, (xs, ys) in series.items():
            ax.plot(xs, ys, marker="o", label=name)
        if logx:
            ax.set_xscale("log")
        if hlines and i in hlines:
            ax.axhline(hlines[i], color="black", linestyle="--", linewidth=1)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


class GemmRecorder:
    """Records every matrix product a model's forward runs, at its shapes: each ``nn.Linear``
    call as (m, k, n) with its dtype, and each attention layer's score and value products as
    batched (heads x rows, query length, key length, head dim) shapes: each trie's queries
    over its keys where the engine runs attention per trie (``attention="blocks"``), else the
    packed rows' full length. Use as
    a context manager around untimed forwards, then :meth:`bound_s` times those products alone
    (same process, same threads): the model-shaped GEMM bound, the time a forward would take
    if it did nothing but its matrix products."""

    def __init__(self, model):
        self.model = model
        self.linear: dict[tuple, int] = {}  # (m, k, n, dtype) -> calls
        self.attention: dict[tuple, int] = {}  # (batch, q len, k len, head_dim, dtype) -> calls
        self.handles: list = []
        self._blocks_seen = False

    def __enter__(self):
        cfg = getattr(self.model.config, "get_text_config", lambda: self.model.config)()
        heads = cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        n_layers = cfg.num_hidden_layers

        def on_linear(mod, args, out):
            x = args[0]
            key = (x.numel() // x.shape[-1], mod.in_features, mod.out_features, str(out.dtype))
            self.linear[key] = self.linear.get(key, 0) + 1

        def on_model(mod, args, kwargs, out):
            ids = kwargs.get("input_ids", args[0] if args else None)
            if ids is None or ids.dim() != 2:
                return
            if self._blocks_seen:  # recorded per trie by the blocks function
                self._blocks_seen = False
                return
            rows, length = ids.shape
            key = (rows * heads, length, length, head_dim, str(next(mod.parameters()).dtype))
            self.attention[key] = self.attention.get(key, 0) + n_layers

        for m in self.model.modules():
            if isinstance(m, torch.nn.Linear):
                self.handles.append(m.register_forward_hook(on_linear))
        base = getattr(self.model, self.model.base_model_prefix, self.model)
        self.handles.append(base.register_forward_hook(on_model, with_kwargs=True))
        # The LM head on the read rows runs inside the choice_logprobs op, not as a module.
        import introspect.ops as ops

        self._op = ops.choice_logprobs

        def choice_logprobs(h, weight, *args, **kwargs):
            key = (h.shape[0], weight.shape[1], weight.shape[0], str(h.dtype))
            self.linear[key] = self.linear.get(key, 0) + 1
            return self._op(h, weight, *args, **kwargs)

        ops.choice_logprobs = choice_logprobs
        # Attention per trie (SDPA per trie group, or the C++ kernel over the same tries): one
        # product pair per non-padding block and layer.
        import introspect.engine.attention as engine_attention
        from introspect.ops.paired_attention import independent_blocks

        self._per_trie = {
            name: getattr(engine_attention, name)
            for name in ("paired_attention_blocks", "paired_attention_cpp")
        }

        def recorded(fn):
            def per_trie(q, k, v, meta, scale):
                found = independent_blocks(meta)
                if found is not None:
                    self._blocks_seen = True
                    for _, a, b, padding in found:
                        if not padding:
                            key = (
                                q.shape[1],
                                b - a,
                                meta.prefix_len + b - a,
                                q.shape[-1],
                                str(q.dtype),
                            )
                            self.attention[key] = self.attention.get(key, 0) + 1
                return fn(q, k, v, meta, scale)

            return per_trie

        for name, fn in self._per_trie.items():
            setattr(engine_attention, name, recorded(fn))
        return self

    def __exit__(self, *exc):
        import introspect.ops as ops

        ops.choice_logprobs = self._op
        import introspect.engine.attention as engine_attention

        for name, fn in self._per_trie.items():
            setattr(engine_attention, name, fn)
        for h in self.handles:
            h.remove()
        self.handles = []

    def bound_s(self, repeats: int = 5) -> dict:
        """Seconds of the recorded products run alone: ``linear``, ``attention`` (QK^T and PV)
        and ``total``, each the sum over calls of the best of ``repeats`` runs of its shape. A
        float32 linear shape counts at the faster of ``F.linear`` and oneDNN's GEMM on a
        prepacked weight (what the engine runs), so the bound is the best this process can do."""
        from introspect.ops.linear import linear as packed_linear
        from introspect.ops.linear import onednn_unavailable, pack_linear_weight

        dtypes = {"torch.float32": torch.float32, "torch.bfloat16": torch.bfloat16,
                  "torch.float16": torch.float16}  # fmt: skip
        lin = 0.0
        for (m, k, n, dt), calls in self.linear.items():
            a, w = torch.randn(m, k).to(dtypes[dt]), torch.randn(n, k).to(dtypes[dt])
            best = _best_s(lambda a=a, w=w: torch.nn.functional.linear(a, w), 1, repeats)
            if dt == "torch.float32" and onednn_unavailable() is None:
                p = pack_linear_weight(w)
                with torch.no_grad():
                    fast = _best_s(lambda a=a, w=w, p=p: packed_linear(a, w, packed=p), 1, repeats)
                best = min(best, fast)
            lin += calls * best
        att = 0.0
        for (b, lq, lk, d, dt), calls in self.attention.items():
            q = torch.randn(b, lq, d).to(dtypes[dt])
            k = torch.randn(b, d, lk).to(dtypes[dt])
            s = torch.randn(b, lq, lk).to(dtypes[dt])
            v = torch.randn(b, lk, d).to(dtypes[dt])
            att += calls * _best_s(lambda q=q, k=k, s=s, v=v: (q @ k, s @ v), 1, repeats)
        return {"linear": lin, "attention": att, "total": lin + att}
