"""The benchmark harness, the suite summary, the docs' generated tables and the publishing of
results (correctness only; no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
if not (BENCH / "harness.py").is_file():  # pragma: no cover - an installed copy without the repo
    pytest.skip("benchmarks/ is not beside tests/", allow_module_level=True)
sys.path.insert(0, str(BENCH))

import harness  # noqa: E402
import publish  # noqa: E402
import summary  # noqa: E402
import tables  # noqa: E402


def test_measure_reports_order_statistics():
    calls = []
    m = harness.measure(lambda: calls.append(1), warmup=2, repeats=5)
    assert len(calls) == 7 and m["repeats"] == 5
    assert 0 <= m["p10_s"] <= m["median_s"] <= m["p90_s"]


def test_roofline_has_a_ceiling_per_dtype():
    r = harness.gemm_flops(torch.float32, shapes=((64, 32, 48),))
    assert r > 0
    roof = {"gemm_GFLOPs": {"float32": 100.0, "bfloat16": 400.0}, "memory_bandwidth":
            {"read_GBps": 20.0, "copy_GBps": 15.0}}  # fmt: skip
    text = harness.describe_roofline(roof)
    assert "float32 100" in text and "bfloat16 400" in text and "read 20.0 GB/s" in text


def test_summary_names_the_ceiling_of_each_rows_dtype():
    data = {"meta": {}, "rows": [
        {"task": "sycophancy", "pairs": 8, "variant": "engine", "dtype": dtype, "speedup": 2.0,
         "max_abs_delta_diff": 1e-5, "fraction_of_gemm_peak": frac, "roofline_dtype": roof}
        for dtype, frac, roof in (("float32", 0.5, "float32"), ("bfloat16", 0.1, "bfloat16"))
    ]}  # fmt: skip
    out = summary.lines("extract_x", data)
    assert [o["ceiling"] for o in out] == ["0.50 of float32 GEMM", "0.10 of bfloat16 GEMM"]
    assert out[0]["value"].startswith("2.00×")


def test_summary_lists_the_fused_ops_against_their_reference():
    rows = [
        {"device": "cpu", "op": "choice_logprobs", "variant": "reference", "M": 4, "V": 8,
         "speedup_vs_naive": 1.5, "memory_vs_naive": 0.25, "fraction_of_gemm_peak": 0.3},
        {"device": "cpu", "op": "silu_mul", "variant": "reference", "T": 256, "dtype": "float32",
         "speedup_vs_reference": 1.0, "fraction_of_read_bw": 0.2},
        {"device": "cpu", "op": "silu_mul", "variant": "cpp", "T": 256, "dtype": "float32",
         "speedup_vs_reference": 1.7, "fraction_of_read_bw": 0.34},
        {"device": "cpu", "op": "paired_attention", "variant": "cpp", "T": 540,
         "dtype": "float32", "speedup_vs_reference": 4.9, "fraction_of_gemm_peak": 0.11},
        {"device": "cpu", "op": "paired_attention", "skipped": "no cpp backend"},
    ]  # fmt: skip
    out = summary.lines("kernels_quick", {"meta": {}, "rows": rows})
    assert [o["what"] for o in out] == [
        "choice_logprobs reference M=4 V=8: vs naive",
        "silu_mul cpp float32 T=256: vs reference",
        "paired_attention cpp float32 T=540: vs reference",
    ]
    assert out[1]["value"] == "1.70×" and out[1]["ceiling"] == "0.34 of read bw"
    assert out[2]["value"] == "4.90×" and out[2]["ceiling"] == "0.11 of fp32 GEMM"


def test_summary_writes_markdown(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(harness, "RESULTS", tmp_path)
    harness.write_rows("kernels_t", [{"device": "cpu", "variant": "reference", "M": 4, "V": 8,
                                      "speedup_vs_naive": 1.5, "memory_vs_naive": 0.25,
                                      "fraction_of_gemm_peak": 0.3,
                                      "fraction_of_read_bw": 0.01}], {})  # fmt: skip
    out = tmp_path / "summary.md"
    assert summary.main(["kernels_t", "missing_one", "--elapsed", "90", "--out", str(out)]) == 0
    text = out.read_text()
    assert (
        "| kernels_t | choice_logprobs reference M=4 V=8: vs naive | 1.50× time, 0.250× memory"
        in text
    )
    assert "0.30 of fp32 GEMM, 0.010 of read bw" in text
    assert "| missing_one | missing |" in text and "suite wall time: 1.5 min" in text


# ---------------------------------------------------------------- the docs' generated tables

ROOT = BENCH.parent
DOCS = ROOT / "docs"
MARKER = "<!-- bench-table: "


def _pages() -> list[Path]:
    return [p for p in sorted(DOCS.glob("*.md")) if MARKER in p.read_text(encoding="utf-8")]


def test_committed_docs_tables_are_generated_from_the_committed_results():
    # What `python benchmarks/summary.py --markdown PAGE` writes from benchmarks/results/ is
    # exactly what each page holds: no table is edited by hand, none is stale.
    pages = _pages()
    assert {p.name for p in pages} >= {"benchmarks.md", "extraction.md", "training.md"}
    for page in pages:
        text = page.read_text(encoding="utf-8")
        assert tables.render(text, harness.PUBLISHED, page.parent) == text, page.name
        assert summary.main(["--markdown", str(page), "--check"]) == 0
    # `make publish-results` regenerates exactly these pages.
    make = (ROOT / "Makefile").read_text(encoding="utf-8")
    listed = next(ln for ln in make.splitlines() if ln.startswith("DOC_TABLES :="))
    assert listed.split(":=", 1)[1].split() == [p.relative_to(ROOT).as_posix() for p in pages]


def test_every_committed_result_is_published_in_the_docs():
    # Each result file kept in benchmarks/results/ feeds a generated table (or the suite
    # summary), and each figure kept there is shown.
    text = "".join(p.read_text(encoding="utf-8") for p in [ROOT / "README.md", *_pages()])
    specs = " ".join(line.split(MARKER, 1)[1] for line in text.splitlines() if MARKER in line)
    cited = set(specs.split())
    for path in sorted(harness.PUBLISHED.rglob("*")):
        rel = path.relative_to(harness.PUBLISHED)
        if path.suffix == ".json" and rel.parent == Path("."):
            assert path.stem in cited, f"{rel} feeds no table"
        elif path.suffix == ".png":
            assert f"benchmarks/results/{rel.as_posix()}" in text, f"{rel} is shown nowhere"
        elif path.is_file() and rel.parts[0] == "probe_control":
            assert rel.parent.as_posix() in cited, f"{rel} feeds no table"
    assert not list(harness.PUBLISHED.rglob("*.csv")), "the CSV copies of the JSON stay untracked"


def test_readme_speed_headline_is_the_committed_one():
    rows = json.loads((harness.PUBLISHED / "delta_probe.json").read_text())["rows"]
    head = next(r for r in rows if (r["N"], r["D"], r["P"], r["dtype"]) == (65536, 576, 4,
                                                                          "float32"))  # fmt: skip
    text = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())  # lines joined
    assert f"{head['speedup']:.2f}× faster" in text
    assert f"at {head['fraction_of_read_bw']:.2f} of the measured memory bandwidth" in text
    assert "benchmarks/results/delta_probe.png" in text


def test_readme_whole_process_figures_are_the_committed_ones():
    text = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    for name, phrase in [("whole_train", "runs {}× faster than the same command of release"),
                         ("whole_extract", "on 256 text pairs {}× faster"),
                         ("whole_preset_quick", "quick preset runs {}× faster")]:  # fmt: skip
        ratio = json.loads((harness.PUBLISHED / f"{name}.json").read_text())["ratio_of_medians"]
        assert phrase.format(f"{ratio:.2f}") in text, name
    # The full preset: the stages both the release and this tree ran (the release's first few).
    doc = json.loads((harness.PUBLISHED / "whole_preset_full.json").read_text())
    old, now = doc["stage_s"]["release 62984b7"], doc["stage_s"]["this tree"]
    both = [st for st in now if st in old]
    ratio = sum(old[st] for st in both) / sum(now[st] for st in both)
    assert f"the full preset's first {len(both)} stages" in text
    assert f"({ratio:.2f}×)" in text


def _delta_probe_rows(speedup: float) -> list[dict]:
    return [{"N": 8, "D": 4, "P": 1, "dtype": "float32", "backend": "cpp", "reference_ms": 2.0,
             "fused_ms": 1.0, "speedup": speedup, "fused_GBps": 3.0, "fraction_of_read_bw": 0.5,
             "fraction_of_gemm_peak": 0.25}]  # fmt: skip


def test_tables_rewrite_a_stale_block_and_refuse_bad_markers(tmp_path, monkeypatch):
    monkeypatch.setattr(harness, "RESULTS", tmp_path / "results")
    harness.write_rows("dp", _delta_probe_rows(2.0), {"command": "cmd", "time_utc": "2026-01-02T"
                       "03:04:05+00:00", "gemm_fp32_GFLOPs": 100.0})  # fmt: skip
    page = tmp_path / "docs" / "page.md"
    page.parent.mkdir()
    page.write_text(
        "intro\n<!-- bench-table: delta_probe dp -->\nold\n<!-- /bench-table -->\nend\n"
    )
    assert summary.main(["--markdown", str(page), "--results", str(tmp_path / "results"),
                         "--check"]) == 1  # fmt: skip
    assert "old" in page.read_text()  # --check changes nothing
    assert tables.render_page(page, tmp_path / "results") is True
    text = page.read_text()
    assert "| 8 | 4 | 1 | float32 | 2.00 | 1.00 | **2.00×** | 3.0 | 0.50 | 0.25 |" in text
    assert "[`" in text and "(../results/dp.json)" in text and "fp32 GEMM 100 GFLOP/s" in text
    assert text.startswith("intro\n") and text.endswith("<!-- /bench-table -->\nend\n")
    assert tables.render_page(page, tmp_path / "results") is False  # now up to date
    with pytest.raises(ValueError, match="unknown table kind 'nope'"):
        tables.render("<!-- bench-table: nope dp -->\n<!-- /bench-table -->\n", tmp_path, tmp_path)
    with pytest.raises(ValueError, match="no matching"):
        tables.render("<!-- bench-table: delta_probe dp -->\nno end\n", tmp_path, tmp_path)
    with pytest.raises(FileNotFoundError, match=r"missing\.json"):
        tables.render("<!-- bench-table: delta_probe missing -->\n<!-- /bench-table -->\n",
                      tmp_path / "results", tmp_path)  # fmt: skip


def test_preset_stage_table_sums_the_stages_both_ran(tmp_path):
    base, new = "release 62984b7", "this tree"
    doc = {
        "seconds": {base: [100.0], new: [40.0]},
        "median_s": {base: 100.0, new: 40.0},
        "preset": "full",
        "stage_s": {
            base: {
                "a/pairs": 0.1,
                "a/train-concurrent": 30.0,
                "a/train-noise-0.2": 20.0,
                "a/eval-concurrent": 10.0,
                "report": 0.2,
            },
            new: {
                "a/pairs": 0.1,
                "a/train-concurrent": 10.0,
                "a/train-noise-0.2": 15.0,
                "a/eval-concurrent": 4.0,
                "a/labels-m0": 3.0,
                "report": 0.2,
            },
        },
        "meta": {"command": "cmd", "time_utc": "2026-01-02T03:04:05+00:00", "cpu": "c"},
    }
    (tmp_path / "wp.json").write_text(json.dumps(doc))

    def rows():
        out = tables.preset_stages(tables.Source(tmp_path, tmp_path), ["wp"])
        return {ln.split(" | ")[1]: ln for ln in out.splitlines() if ln.startswith("| full")}

    got = rows()
    assert got["train"] == "| full | train | 2 | 50.0 | 25.0 | 2.00× |"
    assert got["eval"] == "| full | eval | 1 | 10.0 | 4.0 | 2.50× |"
    assert got["pairs"].endswith("| 0.1 | 0.1 | — |")  # too short to compare
    assert got["**stages both ran**"].endswith("| 5 | 60.3 | 29.3 | **2.06×** |")
    assert got["stages this tree ran alone"].endswith("| 1 | — | 3.0 | — |")
    assert got["whole process"].endswith("| 100.0 | 40.0 | 2.50× |")
    # The release stopped after its first stages: the stages compared are those it ran.
    doc["stage_s"][base] = {"a/pairs": 0.1, "a/train-concurrent": 30.0}
    doc["seconds"], doc["median_s"] = {new: [40.0]}, {new: 40.0}
    (tmp_path / "wp.json").write_text(json.dumps(doc))
    got = rows()
    assert got["**stages both ran**"].endswith("| 2 | 30.1 | 10.1 | **2.98×** |")
    assert got["whole process"] == "| full | whole process |  | — | 40.0 | — |"
    assert tables.stage_kind("refusal/eval-label-gemma3-270m") == "eval"


def test_table_cells_escape_pipes():
    out = tables.md_table(["a |x|", "b"], [["max|d| 1", "\\|ok\\|"]], "-r")
    assert out.splitlines() == ["| a \\|x\\| | b |", "|---|---:|", "| max\\|d\\| 1 | \\|ok\\| |"]


def test_benchmarks_write_under_build_by_default(monkeypatch):
    assert harness.RESULTS == ROOT / "build" / "bench"
    assert harness.PUBLISHED == BENCH / "results"
    monkeypatch.setattr(harness, "RESULTS", harness.RESULTS)
    assert harness.use_out_dir(None) == ROOT / "build" / "bench"
    assert harness.use_out_dir(Path("/tmp/elsewhere")) == Path("/tmp/elsewhere")
    assert harness.RESULTS == Path("/tmp/elsewhere")
    for script in sorted(BENCH.glob("bench_*.py")):
        text = script.read_text(encoding="utf-8")
        assert "harness.add_out_dir(" in text and "harness.use_out_dir(" in text, script.name
        assert "benchmarks/results" not in text, script.name


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def test_publish_copies_the_curated_benchmark_results(tmp_path):
    from introspect.evaluation import read_jsonl

    bench, dest = tmp_path / "bench", tmp_path / "published"
    bench.mkdir()
    for name in ("delta_probe.json", "delta_probe.csv", "delta_probe.png", "delta_probe_2.png",
                 "bench_summary.md", "unknown.json"):  # fmt: skip
        (bench / name).write_text(name)
    preds = [{"checkpoint": 0, "explainer": "probe", "id": str(i), "pred": i, "current": i,
              "label": -i} for i in range(5)]  # fmt: skip
    _write_jsonl(bench / "probe_control" / "real" / "predictions.jsonl", preds)
    for name in ("metrics.jsonl", "behaviour.jsonl", "eval.json", "self_vs_orig.png"):
        (bench / "probe_control" / "real" / name).write_text("{}\n")
    assert publish.publish_bench(bench, dest, dry_run=True) and not dest.exists()
    publish.publish_bench(bench, dest)
    got = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert got == ["bench_summary.md", "delta_probe.json", "delta_probe.png",
                   "probe_control/real/behaviour.jsonl", "probe_control/real/eval.json",
                   "probe_control/real/metrics.jsonl",
                   "probe_control/real/predictions.jsonl.gz"]  # fmt: skip
    assert read_jsonl(dest / "probe_control" / "real" / "predictions.jsonl.gz") == preds
    # Compressing twice gives the same bytes (nothing of the time or name in the header).
    first = (dest / "probe_control" / "real" / "predictions.jsonl.gz").read_bytes()
    publish.publish_bench(bench, dest)
    assert (dest / "probe_control" / "real" / "predictions.jsonl.gz").read_bytes() == first


def test_publish_replaces_a_coupling_run_with_its_curated_files(tmp_path):
    run, dest = tmp_path / "run", tmp_path / "docs" / "coupling-full"
    completed = ["syc/pairs", "syc/train-concurrent", "syc/eval-concurrent", "report"]
    state = {"complete": True, "completed": completed, "stages": {}}
    _write_jsonl(run / "state.json", [state])
    tr, ev = "syc/train-concurrent", "syc/eval-concurrent"
    for name in ("results.json", "report.md", "figures/summary.png", f"{tr}/train.json",
                 f"{tr}/verbal.json", f"{tr}/ckpt-000001/model.bin", f"{ev}/eval.json",
                 f"{ev}/metrics.jsonl", f"{ev}/behaviour.jsonl", f"{ev}/self_vs_orig.png",
                 "syc/labels-m0/manifest.json"):  # fmt: skip
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text(name)
    _write_jsonl(run / "syc" / "eval-concurrent" / "predictions.jsonl", [{"a": 1}])
    figures = f"# R\n\n![s](figures/summary.png)\n\n![c]({ev}/self_vs_orig.png)\n\n## T\n"
    (run / "report.md").write_text(figures)
    (dest / "stale").mkdir(parents=True)
    (dest / "stale" / "old.png").write_text("old")
    publish.publish_coupling(run, dest)
    got = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    kept = ["behaviour.jsonl", "eval.json", "metrics.jsonl", "predictions.jsonl.gz"]
    assert got == [
        "figures/summary.png",
        "report.md",
        "results.json",
        "state.json",
        *(f"{ev}/{n}" for n in kept),
        f"{tr}/train.json",
        f"{tr}/verbal.json",
    ]
    # The report keeps its links to the published figures only.
    assert (dest / "report.md").read_text() == "# R\n\n![s](figures/summary.png)\n\n## T\n"
    _write_jsonl(run / "state.json", [{**state, "complete": False}])
    with pytest.raises(SystemExit, match="has not finished"):
        publish.publish_coupling(run, dest)


def test_tracked_result_files_stay_small():
    # Results are summaries: at most 2 MB tracked under benchmarks/results and docs/results.
    if not (ROOT / ".git").exists():  # pragma: no cover - a copy without git
        pytest.skip("not a git checkout")
    out = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "benchmarks/results",
                          "docs/results"], capture_output=True, check=True).stdout  # fmt: skip
    files = [ROOT / f for f in out.decode().split("\0") if f and "coupling-map/" not in f]
    assert files, "no tracked results"
    assert sum(f.stat().st_size for f in files if f.exists()) <= 2_000_000


def test_op_profile_names_the_operators_a_call_runs():
    import bench_extract

    a, b = torch.randn(128, 128), torch.randn(128, 128)

    def work():
        for _ in range(5):
            torch.mm(a, b).relu_()
        return sum(range(20000))  # Python time, outside any operator

    prof = bench_extract.op_profile(work, top=3)
    names = {r["op"]: r for r in prof["ops"]}
    assert "aten::mm" in names and names["aten::mm"]["calls"] == 5
    assert len(prof["ops"]) <= 3
    total = sum(r["self_s"] for r in prof["ops"]) + prof["other_ops_s"]
    assert total + prof["outside_ops_s"] == pytest.approx(prof["wall_s"], rel=1e-6)
    assert prof["other_ops_s"] >= 0


def test_peak_rss_sees_a_block_allocation_without_a_sampling_thread():
    import threading

    import bench_extract
    import numpy as np

    before = np.ones(300_000_000 // 8)  # the level at the start does not count
    del before
    threads = threading.active_count()
    with bench_extract.PeakRSS() as peak:
        busy = threading.active_count()
        block = np.ones(200_000_000 // 8)  # touched: resident
        del block
    if peak.extra_mb is None:
        pytest.skip("no /proc here")
    assert 170 <= peak.extra_mb <= 260
    if peak._hwm:  # the kernel's own peak: nothing runs beside the block
        assert busy == threads
    with bench_extract.PeakRSS() as quiet:
        np.ones(1000).sum()
    assert quiet.extra_mb < 50
