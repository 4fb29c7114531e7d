"""Prints one summary table of the result files a benchmark suite run wrote, or regenerates the
docs' result tables from the result files.

    python benchmarks/summary.py delta_probe_quick kernels_quick extract_bench peers_bench \
        scaling_quick [--elapsed SECONDS] [--out FILE]        # from build/bench/
    python benchmarks/summary.py --markdown docs/benchmarks.md [--check]  # benchmarks/results/

Every figure is a ratio or a fraction measured within one script's run (absolute times on a
shared machine are not comparable across runs). The docs' tables sit between
``<!-- bench-table: KIND SOURCE... -->`` and ``<!-- /bench-table -->`` (see ``tables.py``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness


def _load(name: str, results: Path | None = None) -> dict | None:
    path = (results or harness.RESULTS) / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _fmt(v, spec=".2f"):
    return "—" if v is None else format(v, spec)


def lines(name: str, data: dict) -> list[dict]:
    rows, out = data["rows"], []

    def add(what, value, of_ceiling=None):
        out.append({"file": name, "what": what, "value": value, "ceiling": of_ceiling})

    if name.startswith("delta_probe"):
        for r in rows:
            add(f"delta_probe step N={r['N']} D={r['D']} P={r['P']} {r['dtype']}: fused vs "
                "reference", f"{r['speedup']:.2f}×",
                f"{r['fraction_of_read_bw']:.2f} of read bw, "
                f"{r['fraction_of_gemm_peak']:.3f} of {r['dtype']} GEMM")  # fmt: skip
    elif name.startswith("kernels"):
        for r in rows:
            if r.get("op", "choice_logprobs") != "choice_logprobs":
                if "skipped" in r or r["variant"] != "cpp":
                    continue
                ceiling = (
                    f"{r['fraction_of_gemm_peak']:.2f} of fp32 GEMM"
                    if r["op"] == "paired_attention"
                    else f"{r['fraction_of_read_bw']:.2f} of read bw"
                )
                add(f"{r['op']} cpp {r['dtype']} T={r['T']}: vs reference",
                    f"{r['speedup_vs_reference']:.2f}×", ceiling)  # fmt: skip
            elif r.get("device") == "cpu" and "skipped" not in r:
                add(f"choice_logprobs {r['variant']} M={r['M']} V={r['V']}: vs naive",
                    f"{r['speedup_vs_naive']:.2f}× time, {_fmt(r.get('memory_vs_naive'), '.3f')}"
                    "× memory", f"{r['fraction_of_gemm_peak']:.2f} of fp32 GEMM"
                    + (f", {r['fraction_of_read_bw']:.3f} of read bw"
                       if r.get("fraction_of_read_bw") is not None else ""))  # fmt: skip
    elif name.startswith("extract"):
        for r in rows:
            add(f"extract {r['task']} ({r['pairs']}) {r['variant']} {r['dtype']}: vs naive",
                f"{r['speedup']:.2f}×, max|ΔΔ| {r['max_abs_delta_diff']:.1e}",
                f"{r['fraction_of_gemm_peak']:.2f} of "
                f"{r.get('roofline_dtype', 'float32')} GEMM")  # fmt: skip
    elif name.startswith("peers"):
        agree = data["meta"].get("agreement", {})
        for r in rows:
            if "skipped" in r:
                add(f"peer {r['what']}", f"skipped: {r['skipped']}")
            elif r.get("engine_speedup") is not None:
                add(f"{r['what']}: engine speed-up over it", f"{r['engine_speedup']:.2f}×",
                    f"{_fmt(r.get('of_gemm'))} of fp32 GEMM")  # fmt: skip
            elif r["section"] == "op":
                add(f"{r['what']} {r['mode']}: vs eager reference",
                    f"{r['speedup_vs_first']:.2f}×",
                    f"{r['of_gemm']:.2f} of GEMM, {r['of_read_bw']:.2f} of read bw")  # fmt: skip
            else:
                add(f"{r['what']} {r['dtype']}", f"{r['pairs_per_s']:.1f} pairs/s",
                    f"{_fmt(r.get('of_gemm'))} of {r['dtype']} GEMM")  # fmt: skip
        if "pearson_attr_vs_minus_delta_logprob" in agree:
            add("Captum attribution vs −Δ (logprob)",
                f"r = {agree['pearson_attr_vs_minus_delta_logprob']:.6f}, max|diff| "
                f"{agree['max_abs_attr_plus_delta_logprob']:.1e}")  # fmt: skip
    elif name.startswith("scaling"):
        for curve in ("N", "length", "prefix"):
            for model in ("tiny", "smollm2"):
                rs = [r for r in rows if r["curve"] == curve and r["model"] == model]
                if len(rs) >= 2:
                    a, b = rs[0], rs[-1]
                    add(f"scaling {curve} {model}: x {a['x']:.3g} → {b['x']:.3g}",
                        f"pairs/s {a['pairs_per_s']:.1f} → {b['pairs_per_s']:.1f}, peak MB "
                        f"{_fmt(a['peak_mb'], '.0f')} → {_fmt(b['peak_mb'], '.0f')}",
                        f"{b['of_gemm_fp32']:.3f} of fp32 GEMM")  # fmt: skip
    return out


def _markdown(pages: list[str], results: Path, check: bool) -> int:
    """Regenerates (or with ``check`` compares) the tables of ``pages`` from ``results``."""
    import tables

    stale = []
    for page in pages:
        changed = tables.render_page(Path(page), results, check=check)
        if changed:
            stale.append(page)
        print(f"{page}: {'differs from' if check else 'regenerated from'} {results}"
              if changed else f"{page}: up to date with {results}")  # fmt: skip
    return 1 if check and stale else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help="result names (NAME.json in the results directory)")
    ap.add_argument(
        "--results",
        type=Path,
        default=None,
        metavar="DIR",
        help="the results directory (default: build/bench/ for the suite summary, "
        "benchmarks/results/ for --markdown)",
    )
    ap.add_argument("--elapsed", type=float, help="wall time of the suite, seconds")
    ap.add_argument("--out", help="also write the summary (markdown, with the machine) here")
    ap.add_argument(
        "--markdown",
        nargs="+",
        metavar="PAGE",
        help="instead: regenerate the tables between bench-table markers in these pages",
    )
    ap.add_argument(
        "--check",
        action="store_true",
        help="with --markdown: change nothing; exit 1 if a page's tables differ from the results",
    )
    args = ap.parse_args(argv)
    if args.markdown:
        return _markdown(args.markdown, args.results or harness.PUBLISHED, args.check)
    if not args.names:
        ap.error("name at least one result file, or give --markdown")
    rows = []
    for name in args.names:
        data = _load(name, args.results)
        if data is None:
            rows.append({"file": name, "what": "missing", "value": "—", "ceiling": None})
            continue
        rows += lines(name, data)
    text = "\n## Benchmark suite summary\n\n" + harness.table(rows, [
        ("file", "results", "s"), ("what", "measurement", "s"),
        ("value", "same-run ratio / value", "s"), ("ceiling", "of machine limit", "s"),
    ])  # fmt: skip
    if args.elapsed is not None:
        text += f"\n\nsuite wall time: {args.elapsed / 60:.1f} min"
    print(text)
    if args.out:
        stamp = harness.machine_stamp()
        head = (f"Written {stamp['time_utc']} on {stamp['cpu']}, {stamp['cores']} cores, "
                f"torch {stamp['torch']} ({stamp['torch_threads']} threads), introspect "
                f"{stamp['introspect']}; from {', '.join(args.names)}.\n")  # fmt: skip
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(head + text + "\n", encoding="utf-8")
        print(f"\nsummary: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
