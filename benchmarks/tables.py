"""The docs' result tables, generated from result files rather than pasted by hand.

A generated table sits in a Markdown page between two marker comments:

    <!-- bench-table: KIND SOURCE [SOURCE ...] -->
    (generated: a table and the line saying where it comes from)
    <!-- /bench-table -->

KIND names one of the renderers in ``RENDERERS``; each SOURCE is a result name under the results
directory (``NAME`` stands for ``NAME.json``) or, for evaluation outputs, a folder there.
``python benchmarks/summary.py --markdown PAGE ...`` rewrites every block from the results
(``benchmarks/results/`` by default), and a test checks that the committed pages equal what this
module generates from the committed results.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# A block starts and ends on lines of their own (a marker quoted inside a sentence is no block).
BLOCK = re.compile(
    r"^<!-- bench-table: (?P<spec>[^>\n]*?) -->\n(?P<body>.*?)^<!-- /bench-table -->$", re.S | re.M
)
OPENING = re.compile(r"^<!-- bench-table:", re.M)
SHORT_DTYPE = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


class Source:
    """Where a block's results live: the results directory and the page that links to them."""

    def __init__(self, results: Path, page_dir: Path):
        self.results, self.page_dir = Path(results), Path(page_dir)

    def path(self, name: str) -> Path:
        return self.results / name

    def json(self, name: str) -> dict:
        path = self.path(f"{name}.json")
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such result file")
        return json.loads(path.read_text(encoding="utf-8"))

    def link(self, path: Path) -> str:
        """A Markdown link to ``path``, shown relative to the repository, relative to the page."""
        shown = _shown(path)
        return f"[`{shown}`]({Path(os.path.relpath(path, self.page_dir)).as_posix()})"


def _shown(path: Path) -> str:
    try:
        return Path(path).resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return Path(path).as_posix()


def read_jsonl(path: Path) -> list[dict]:
    """The objects of a JSONL file (an evaluation's metrics or behaviour)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# ------------------------------------------------------------------------ formatting


def md_table(header: list[str], rows: list[list[str]], right: str = "") -> str:
    """A Markdown table; ``right`` holds one character per column, ``r`` for right-aligned."""
    rule = "|" + "|".join("---:" if right[i : i + 1] == "r" else "---" for i in range(len(header)))
    body = ["| " + " | ".join(_cell(c) for c in cells) + " |" for cells in rows]
    return "\n".join(["| " + " | ".join(_cell(c) for c in header) + " |", rule + "|", *body])


def _cell(text: str) -> str:
    """A table cell's text with its bare ``|`` escaped (they would end the cell)."""
    return re.sub(r"(?<!\\)\|", r"\\|", text)


def _f(v, spec: str = ".2f") -> str:
    return "—" if v is None else format(v, spec)


def _when(meta: dict) -> str:
    t = meta.get("time_utc", "")
    return f"{t[:10]} {t[11:16]} UTC" if len(t) >= 16 else t


def _ceilings(meta: dict) -> str:
    """The machine limits a run measured, as they are stored in its ``meta``."""
    roof = meta.get("roofline") or {}
    gemm = roof.get("gemm_GFLOPs") or meta.get("gemm_GFLOPs")
    if gemm is None and meta.get("gemm_fp32_GFLOPs") is not None:
        gemm = {"float32": meta["gemm_fp32_GFLOPs"]}
    parts = [f"{SHORT_DTYPE.get(d, d)} GEMM {v:,.0f} GFLOP/s" for d, v in (gemm or {}).items()]
    bw = roof.get("memory_bandwidth") or meta.get("memory_bandwidth")
    if bw:
        parts.append(f"read bandwidth {bw['read_GBps']:.1f} GB/s")
    return "; ".join(parts)


def provenance(src: Source, names: list[str], meta: dict) -> str:
    """The line under a table: its files, the command, when and where it ran, the limits."""
    files = ", ".join(src.link(src.path(f"{n}.json")) for n in names)
    line = f"From {files}: `{meta.get('command', '?')}`, {_when(meta)}, {meta.get('cpu', '?')}"
    line += f" ({meta.get('cores', '?')} cores, {meta.get('torch_threads', '?')} torch threads)"
    line += f", torch {meta.get('torch', '?')}"
    if meta.get("cuda_device"):
        line += f", GPU {meta['cuda_device']}"
    ceilings = _ceilings(meta)
    return line + (f". Measured in the same run: {ceilings}." if ceilings else ".")


# ------------------------------------------------------------------------ renderers


def delta_probe(src: Source, names: list[str]) -> str:
    """``bench_delta_probe.py``: the fused training step against the reference, per size."""
    data = src.json(names[0])
    backend = data["rows"][0]["backend"] if data["rows"] else "fused"
    rows = [
        [f"{r['N']:,}", str(r["D"]), str(r["P"]), r["dtype"], f"{r['reference_ms']:.2f}",
         f"{r['fused_ms']:.2f}", f"**{r['speedup']:.2f}×**", f"{r['fused_GBps']:.1f}",
         f"{r['fraction_of_read_bw']:.2f}", f"{r['fraction_of_gemm_peak']:.2f}"]
        for r in data["rows"]
    ]  # fmt: skip
    head = ["N", "D", "P", "dtype", "reference ms", f"{backend} ms", "speed-up", "GB/s",
            "of read bw", "of GEMM rate"]  # fmt: skip
    return md_table(head, rows, "rrr-rrrrrr") + "\n\n" + provenance(src, names, data["meta"])


def extract(src: Source, names: list[str]) -> str:
    """``bench_extract.py``: the engine and its ablations against the naive two-pass baseline."""
    data = src.json(names[0])
    rows = []
    for r in data["rows"]:
        speedup = f"{r['speedup']:.2f}×"
        rows.append([
            f"{r['task']} ({r['pairs']})", r["variant"], r["dtype"],
            f"{r['naive_pairs_per_s']:.2f}", f"{r['engine_pairs_per_s']:.2f}",
            f"**{speedup}**" if r["variant"] == "engine" else speedup,
            f"{r['slowdown_vs_engine']:.2f}", f"{r['unique_tokens']:,} / {r['naive_tokens']:,}",
            f"{r['fraction_of_gemm_peak']:.2f}", _f(r.get("fraction_of_model_bound")),
            f"{r['max_abs_delta_diff']:.1e}",
            f"{r['max_hidden_rel_err']:.1e}", f"{r['pearson_vs_fp32']:.4f}",
            f"{r['max_abs_err_vs_fp32']:.3f}",
            f"{_f(r['engine_peak_mb'], '.0f')} / {_f(r['naive_peak_mb'], '.0f')}",
        ])  # fmt: skip
    head = ["task", "variant", "dtype", "naive pairs/s", "engine pairs/s", "speed-up vs naive",
            "time vs full engine", "tokens computed (engine / naive)", "of GEMM",
            "of the model-shaped bound", "max |Δ − Δ_naive|", "max hidden rel. err.",
            "Δ Pearson vs fp32", "max |Δ − Δ_fp32|", "peak MB engine / naive"]  # fmt: skip
    return md_table(head, rows, "---rrrrrrrrrrrr") + "\n\n" + provenance(src, names, data["meta"])


def extract_memory(src: Source, names: list[str]) -> str:
    """``bench_extract.py --memory``: peak resident memory of ``introspect extract`` runs."""
    data = src.json(names[0])
    rows = [
        [f"{r['pairs']:,}", f"{r['peak_rss_mb']:.0f}", f"{r['peak_vs_smallest']:.2f}×",
         f"{r['pairs_per_s']:.1f}", str(r["shards"])]
        for r in data["rows"]
    ]  # fmt: skip
    head = ["pairs", "peak RSS (MB)", "vs smallest", "pairs/s", "shards"]
    meta = data["meta"]
    note = f" Model: {meta['model']}." if meta.get("model") else ""
    return md_table(head, rows, "rrrrr") + "\n\n" + provenance(src, names, meta) + note


def _kernel_label(r: dict) -> str:
    if r["variant"] == "naive":
        return "naive (`h @ Wᵀ`, `log_softmax`, gather)"
    if r["variant"] == "naive_compiled":
        return "naive under `torch.compile`"
    if r["variant"] == "reference" and "chunk" in r:
        tiles = f"{r['chunk']} × {r['row_chunk']} rows"
        return f"`choice_logprobs` reference (vocabulary tiles of {tiles})"
    return f"`{r['variant']}`"


def _is_head_row(r: dict) -> bool:
    return r.get("op", "choice_logprobs") == "choice_logprobs"


def kernels(src: Source, names: list[str]) -> str:
    """``bench_kernels.py``: ``choice_logprobs`` against the full-logits path (CPU, and GPU),
    and the fused elementwise ops against their PyTorch reference."""
    data = src.json(names[0])
    done = [r for r in data["rows"] if "skipped" not in r]
    cpu = [
        [_kernel_label(r), f"{r['median_ms']:.1f}", f"{r['speedup_vs_naive']:.2f}×",
         _f(r["peak_extra_MiB"], ".1f"), _f(r["memory_vs_naive"], ".3f"),
         f"{r['fraction_of_gemm_peak']:.2f}", _f(r.get("max_abs_diff_vs_naive"), ".1e")]
        for r in done if r["device"] == "cpu" and _is_head_row(r)
    ]  # fmt: skip
    head = ["variant", "median ms", "speed vs naive", "peak extra memory (MiB)",
            "memory vs naive", "of fp32 GEMM", "max |diff| vs naive"]  # fmt: skip
    out = [md_table(head, cpu, "-rrrrrr")]
    fused = [
        [f"`{r['op']}`", r["dtype"], f"`{r['variant']}`", f"{r['median_ms']:.2f}",
         f"{r['speedup_vs_reference']:.2f}×", f"{r['fraction_of_read_bw']:.2f}",
         _f(r.get("max_abs_diff_vs_reference"), ".1e")]
        for r in done if not _is_head_row(r) and r["op"] != "paired_attention"
    ]  # fmt: skip
    attention = [
        [f"`{r['variant']}`", f"{r['median_ms']:.2f}", f"{r['speedup_vs_reference']:.2f}×",
         f"{r['fraction_of_gemm_peak']:.2f}", _f(r.get("max_abs_diff_vs_reference"), ".1e")]
        for r in done if r.get("op") == "paired_attention"
    ]  # fmt: skip
    if fused:
        head = ["op", "dtype", "backend", "median ms", "speed vs reference", "of read bw",
                "max |diff| vs reference"]  # fmt: skip
        note = "Fused elementwise ops of a Llama-family forward against the PyTorch formulas:"
        out.append(note + "\n\n" + md_table(head, fused, "---rrrr"))
    if attention:
        r = next(r for r in done if r.get("op") == "paired_attention")
        note = (
            f"`paired_attention` over {r['rows']} rows of {r['tries']} pair tries each (a "
            f"{r['prefix']}-token prefix, {r['x']}- and {r['mod']}-token suffixes; T = {r['T']}), "
            f'{r["Hq"]} query / {r["Hk"]} key-value heads of {r["D"]}, float32; "of fp32 '
            'GEMM" counts only the products over the keys each query sees:'
        )
        head = ["backend", "median ms", "speed vs reference", "of fp32 GEMM",
                "max |diff| vs reference"]  # fmt: skip
        out.append(note + "\n\n" + md_table(head, attention, "-rrrr"))
    gpu = [
        [r["dtype"], f"`{r['variant']}`", f"{r['median_ms']:.3f}", f"{r['TFLOPs']:.1f}",
         f"{r['speedup_vs_naive']:.2f}×", f"{r['peak_extra_MiB']:.1f}",
         _f(r.get("max_abs_diff_vs_naive"), ".1e")]
        for r in done if r["device"] != "cpu"
    ]  # fmt: skip
    if gpu:
        head = ["dtype", "backend", "median ms", "TFLOP/s", "speed vs torch", "peak extra MiB",
                "max |diff| vs torch"]  # fmt: skip
        out.append(f"On {data['meta'].get('cuda_device') or 'the GPU'}:\n\n"
                   + md_table(head, gpu, "--rrrrr"))  # fmt: skip
    skipped = [f"{r['device']} {r.get('variant', r['op'])}: skipped: {r['skipped']}"
               for r in data["rows"] if "skipped" in r]  # fmt: skip
    if skipped:
        out.append("Not measured in this run: " + "; ".join(skipped) + ".")
    size = data["meta"].get("size", {})
    dims = " ".join(f"{k}={v}" for k, v in size.items())
    tail = provenance(src, names, data["meta"]) + (f" Size: {dims}." if dims else "")
    return "\n\n".join([*out, tail])


def peers(src: Source, names: list[str]) -> str:
    """``bench_peers.py``, extraction section: the engine against Captum and TransformerLens."""
    data = src.json(names[0])
    rows = [r for r in data["rows"] if r.get("section") in ("extraction", "peer")]
    first = next((r["seconds"] for r in rows if "skipped" not in r), None)
    table = []
    for r in rows:
        if "skipped" in r:
            continue
        speedup = r.get("engine_speedup")
        tool = r["what"] + (f" ({r['forwards']} forwards)" if r.get("forwards") else "")
        fid = (f"{r['pearson_vs_fp32']:.3f} / {r['max_abs_diff']:.2f}"
               if r.get("pearson_vs_fp32") is not None else "—")  # fmt: skip
        table.append([
            tool, r["dtype"], f"{r['seconds']:.2f}", f"{r['pairs_per_s']:.1f}",
            f"{r['seconds'] / first:.2f}", "—" if speedup is None else f"**{speedup:.2f}×**",
            _f(r.get("GFLOPs"), ".0f"), _f(r.get("of_gemm")), f"{r['peak_mb']:.0f}", fid,
        ])  # fmt: skip
    head = ["tool", "dtype", "s", "pairs/s", "time / first engine row", "engine speed-up over it",
            "GFLOP/s", "of its dtype's GEMM", "peak MB", "Δ vs fp32: r / max error"]  # fmt: skip
    out = [md_table(head, table, "--rrrrrrrr")]
    skipped = [f"{r['what']}: {r['skipped']}" for r in rows if "skipped" in r]
    if skipped:
        out.append("Skipped in this run: " + "; ".join(skipped) + ".")
    agree = data["meta"].get("agreement") or {}
    if "pearson_attr_vs_minus_delta_logprob" in agree:
        out.append(
            f"Agreement on the {data['meta'].get('pairs', '?')} pairs: Captum's attributions "
            f"against −Δ_logprob: Pearson {agree['pearson_attr_vs_minus_delta_logprob']:.9f}, "
            f"largest |attr + Δ_logprob| {agree['max_abs_attr_plus_delta_logprob']:.1e} "
            f"(mean |Δ_logprob| {agree['mean_abs_delta_logprob']:.2f}); against −Δ_logodds: "
            f"Pearson {agree['pearson_attr_vs_minus_delta_logodds']:.2f}, largest difference "
            f"{agree['max_abs_attr_plus_delta_logodds']:.2f}"
            + (f"; TransformerLens hidden states within "
               f"{agree['transformer_lens_hidden_rel_err']:.1e} relative of the engine's"
               if agree.get("transformer_lens_hidden_rel_err") is not None else "") + "."
        )  # fmt: skip
    return "\n\n".join([*out, provenance(src, names, data["meta"])])


def peers_ops(src: Source, names: list[str]) -> str:
    """``bench_peers.py``, ops section: eager against ``torch.compile``."""
    data = src.json(names[0])
    rows = [
        [r["what"], r["size"], r["mode"], f"{r['seconds'] * 1e3:.1f}", f"{r['first_call_s']:.2f}",
         f"{r['speedup_vs_first']:.2f}", f"{r['of_gemm']:.2f}", f"{r['of_read_bw']:.2f}"]
        for r in data["rows"] if r.get("section") == "op" and "skipped" not in r
    ]  # fmt: skip
    head = ["op", "size", "mode", "ms", "first call s", "vs the op's first row (eager)",
            "of fp32 GEMM", "of read bw"]  # fmt: skip
    return md_table(head, rows, "---rrrrr") + "\n\n" + provenance(src, names, data["meta"])


def _x(curve: str, x: float) -> str:
    return f"{x:,.0f}" if curve != "prefix" else f"{x:.2f}"


def scaling(src: Source, names: list[str]) -> str:
    """``bench_scaling.py``: each curve's first and last point, per model."""
    data = src.json(names[0])
    what = {"N": "N (pairs)", "length": "prompt length (tokens of x)",
            "prefix": "shared-prefix fraction"}  # fmt: skip
    table = []
    for curve in dict.fromkeys(r["curve"] for r in data["rows"]):
        for model in dict.fromkeys(r["model"] for r in data["rows"]):
            rs = [r for r in data["rows"] if r["curve"] == curve and r["model"] == model]
            if len(rs) < 2:
                continue
            a, b = rs[0], rs[-1]
            table.append([
                what.get(curve, curve), model, f"{_x(curve, a['x'])} → {_x(curve, b['x'])}",
                str(len(rs)), f"{a['pairs_per_s']:.3g} → {b['pairs_per_s']:.3g}",
                f"{a['of_gemm_fp32']:.3f} → {b['of_gemm_fp32']:.3f}",
                f"{_f(a['peak_mb'], '.0f')} → {_f(b['peak_mb'], '.0f')}",
            ])  # fmt: skip
    head = ["curve", "model", "from → to", "points", "pairs/s", "of fp32 GEMM", "peak MB"]
    return md_table(head, table, "---rrrr") + "\n\n" + provenance(src, names, data["meta"])


def measure(src: Source, names: list[str]) -> str:
    """``introspect measure --json``: f(x), f(x') and Δ with bootstrap intervals."""
    data = src.json(names[0])

    def row(label: str, s: dict) -> list[str]:
        lo, hi = s["ci95"]
        return [label, str(s["n"]), f"{s['mean']:+.3f}", f"{s['std']:.3f}",
                f"{s['median']:+.3f}", f"[{lo:+.3f}, {hi:+.3f}]",
                f"{s['frac_negative']:.0%}"]  # fmt: skip

    rows = [row("f(x)", data["f_x"]), row("f(x')", data["f_mod"]),
            row("Δ = f(x') − f(x)", data["delta"])]  # fmt: skip
    by = data.get("delta_by") or {}
    for value, s in (by.get("groups") or {}).items():
        rows.append(row(f"Δ, `{by['key']}` = {value}", s))
    head = [data["behaviour"], "n", "mean", "sd", "median", "95% CI of the mean", "below 0"]
    link = src.link(src.path(names[0] + ".json"))
    tail = (f"From {link}: `introspect measure` on `{data['model']}`, pair file "
            f"`{data['pairs']}`, the first {data['n']} pairs.")  # fmt: skip
    return md_table(head, rows, "-rrrrrr") + "\n\n" + tail


def _ci(r: dict | None) -> str:
    if r is None or r.get("value") is None:
        return "—"
    return f"{r['value']:+.3f} [{_f(r['lo'], '+.2f')}, {_f(r['hi'], '+.2f')}]"


def _eval_provenance(src: Source, dirs: list[str], what: str) -> str:
    evals = [json.loads((src.path(d) / "eval.json").read_text(encoding="utf-8")) for d in dirs]
    files = ", ".join(src.link(src.path(d) / what) for d in dirs)
    sizes = sorted({(e["n"], e["n_boot"], e["seed"], e.get("layer")) for e in evals})
    said = "; ".join(f"{n} held-out pairs, {b} bootstrap resamples, seed {s}, layer {la}"
                     for n, b, s, la in sizes)  # fmt: skip
    return f"From {files} ({said})."


def probe_control(src: Source, dirs: list[str]) -> str:
    """``introspect eval`` outputs: Self, Orig and the gap (Pearson r) per checkpoint."""
    rows = []
    for d in dirs:
        metrics = read_jsonl(src.path(d) / "metrics.jsonl")
        by = {(r["checkpoint"], r["explainer"], r["metric"]): r for r in metrics}
        for ckpt, expl in dict.fromkeys((r["checkpoint"], r["explainer"]) for r in metrics):
            if (ckpt, expl, "self.pearson") not in by:
                continue
            rows.append([Path(d).name, expl, str(ckpt)] + [
                _ci(by.get((ckpt, expl, f"{k}.pearson"))) for k in ("self", "orig", "gap")
            ])  # fmt: skip
    head = ["run", "explainer", "checkpoint", "Self", "Orig", "gap (Self − Orig)"]
    return md_table(head, rows, "--r") + "\n\n" + _eval_provenance(src, dirs, "metrics.jsonl")


def probe_behaviour(src: Source, dirs: list[str]) -> str:
    """``introspect eval`` outputs: the behaviour of the model at each checkpoint."""
    rows = [
        [Path(d).name, str(b["checkpoint"]), f"{b['mean_f_x']:+.3f}", f"{b['mean_delta']:+.3f}",
         _f(b.get("objective_logprob"), "+.2f"), f"{b['delta_vs_labels']:+.3f}"]
        for d in dirs for b in read_jsonl(src.path(d) / "behaviour.jsonl")
    ]  # fmt: skip
    head = ["run", "checkpoint", "mean f(x)", "mean Δ", "log p(objective)", "r(Δ now, labels)"]
    return md_table(head, rows, "-rrrrr") + "\n\n" + _eval_provenance(src, dirs, "behaviour.jsonl")


def suite(src: Source, names: list[str]) -> str:
    """``make bench``: one line per measurement of the suite's result files."""
    import summary

    rows = []
    for name in names:
        path = src.path(f"{name}.json")
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
        rows += summary.lines(name, data) if data else [{"file": name, "what": "missing"}]
    table = md_table(
        ["results", "measurement", "same-run ratio / value", "of machine limit"],
        [[r["file"], r["what"], r.get("value") or "—", r.get("ceiling") or "—"] for r in rows],
    )
    files = ", ".join(src.link(src.path(f"{n}.json")) for n in names)
    return f"{table}\n\nFrom {files}."


def whole(src: Source, names: list[str]) -> str:
    """``bench_whole.py``: whole processes against their baselines, rounds alternating."""
    rows, metas = [], []
    for name in names:
        d = src.json(name)
        base, new = list(d["median_s"])
        rounds = len(d["seconds"][new])
        what = (f"`introspect extract`, {d['pairs']} text pairs" if "pairs" in d
                else f"`{d['measured_command']}`")  # fmt: skip
        if d.get("tree_extra_args"):  # this tree run on the release's conditions
            what += f" (this tree with `{d['tree_extra_args']}`: the release's conditions)"
        rows.append([
            what, base, new, f"{d['median_s'][base]:.1f}", f"{d['median_s'][new]:.1f}",
            f"**{d['ratio_of_medians']:.2f}×**", f"{d['min_round_ratio']:.2f}×", str(rounds),
        ])  # fmt: skip
        metas.append((name, d["meta"]))
    head = ["workload", "baseline", "measured", "baseline s (median)", "measured s (median)",
            "speed-up", "smallest round", "rounds"]  # fmt: skip
    lines = [provenance(src, [n], m) for n, m in metas]
    return md_table(head, rows, "---rrrrr") + "\n\n" + "\n\n".join(lines)


def stage_kind(stage: str) -> str:
    """``sycophancy/train-noise-0.2`` -> ``train``: what a coupling experiment's stage does."""
    return stage.rsplit("/", 1)[-1].split("-", 1)[0]


def preset_stages(src: Source, names: list[str]) -> str:
    """``bench_whole.py preset``: the coupling experiment's stages that both the release and this
    tree ran (the last round of each), summed by kind of stage, and the whole processes."""
    rows, metas = [], []
    for name in names:
        d = src.json(name)
        base, new = list(d["stage_s"])
        old, now = d["stage_s"][base], d["stage_s"][new]
        both = [st for st in now if st in old]
        kinds: dict[str, list[float]] = {}
        for st in both:
            k = kinds.setdefault(stage_kind(st), [0, 0.0, 0.0])
            k[0] += 1
            k[1] += old[st]
            k[2] += now[st]
        for k, (n, b, t) in kinds.items():
            rows.append([d["preset"], k, str(n), f"{b:.1f}", f"{t:.1f}", _speedup(b, t)])
        b, t = sum(old[st] for st in both), sum(now[st] for st in both)
        rows.append([d["preset"], "**stages both ran**", str(len(both)), f"{b:.1f}", f"{t:.1f}",
                     f"**{_speedup(b, t)}**"])  # fmt: skip
        only = len(now) - len(both)
        if only:
            alone = sum(v for st, v in now.items() if st not in old)
            rows.append([d["preset"], "stages this tree ran alone", str(only), "—",
                         f"{alone:.1f}", "—"])  # fmt: skip
        whole = {k: v[-1] for k, v in d["seconds"].items()}
        b, t = whole.get(base), whole.get(new)
        rows.append([d["preset"], "whole process", "", _f(b, ".1f"), _f(t, ".1f"),
                     _speedup(b, t) if b else "—"])  # fmt: skip
        metas.append((name, d["meta"]))
    head = ["preset", "stages", "count", "release s", "this tree s", "speed-up"]
    lines = [provenance(src, [n], m) for n, m in metas]
    return md_table(head, rows, "--rrrr") + "\n\n" + "\n\n".join(lines)


def _speedup(before: float, after: float) -> str:
    return f"{before / after:.2f}×" if after >= 0.5 else "—"


def profile(src: Source, names: list[str]) -> str:
    """``bench_extract.py --profile``: one exact engine run per task by operator (self CPU time),
    beside the run's model-shaped bound."""
    data = src.json(names[0])
    bound = {r["task"]: r for r in data["rows"] if r["variant"] == "engine"}
    rows = []
    for task, prof in data["meta"]["op_profile"].items():
        wall = prof["wall_s"]
        items = [(r["op"], r["self_s"], str(r["calls"])) for r in prof["ops"]]
        items += [
            ("other operators", prof["other_ops_s"], ""),
            ("outside any operator (Python, tokenizer, packing)", prof["outside_ops_s"], ""),
        ]
        for op, sec, calls in items:
            rows.append(
                [task, f"`{op}`" if calls else op, f"{sec:.2f}", f"{sec / wall:.1%}", calls]
            )
        b = bound.get(task, {})
        rows.append([task, "**the run**", f"**{wall:.2f}**", "100%", ""])
        if b.get("model_bound_s") is not None:
            rows.append(
                [
                    task,
                    "its model-shaped bound (linear layers and LM head / all)",
                    f"{b['model_bound_linear_s']:.2f} / {b['model_bound_s']:.2f}",
                    "",
                    "",
                ]
            )
    head = ["task", "operator", "self s", "share", "calls"]
    return md_table(head, rows, "--rrr") + "\n\n" + provenance(src, names, data["meta"])


RENDERERS: dict[str, Callable[[Source, list[str]], str]] = {
    f.__name__: f
    for f in (delta_probe, extract, extract_memory, kernels, peers, peers_ops, scaling, measure,
              probe_control, probe_behaviour, suite, whole, preset_stages, profile)
}  # fmt: skip


# ------------------------------------------------------------------------ pages


def render(text: str, results: Path, page_dir: Path) -> str:
    """``text`` with every generated block rewritten from the results in ``results``."""
    src = Source(results, page_dir)

    def one(m: re.Match) -> str:
        kind, *sources = m["spec"].split()
        if kind not in RENDERERS:
            raise ValueError(f"unknown table kind {kind!r} (known: {', '.join(RENDERERS)})")
        if not sources:
            raise ValueError(f"table {kind!r} names no results")
        body = RENDERERS[kind](src, sources)
        return f"<!-- bench-table: {m['spec']} -->\n{body}\n<!-- /bench-table -->"

    if len(OPENING.findall(text)) != len(BLOCK.findall(text)):
        raise ValueError("a bench-table marker has no matching <!-- /bench-table -->")
    return BLOCK.sub(one, text)


def render_page(page: Path, results: Path, *, check: bool = False) -> bool:
    """Regenerates ``page``'s tables (or, with ``check``, only compares). True if it changed."""
    page = Path(page)
    text = page.read_text(encoding="utf-8")
    new = render(text, results, page.resolve().parent)
    if new != text and not check:
        tmp = page.with_name(page.name + ".tmp")
        tmp.write_text(new, encoding="utf-8")
        os.replace(tmp, page)
    return new != text
