"""`introspect extract`: the run directory, resume after SIGKILL, and two processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

pytest.importorskip("transformers")

from tiny import tiny_llama, tiny_tokenizer

from introspect import open_run
from introspect.cli import main
from introspect.data import read_pairs
from introspect.engine import ExtractConfig, extract_pairs


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("extract")
    model_dir = root / "tiny"
    tiny_llama().save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    rows = []
    for a in range(10):
        for b in range(10):
            for c in range(6):
                said = f"my friend says {c} ."
                choices = ["( A )", "( B )"] if (a + b) % 2 else [" yes", " no"]
                rows.append(
                    {
                        "id": f"q{a}{b}{c}",
                        "prompt": [{"role": "user", "content": f"what is {a} + {b} ? {said}"}],
                        "remove": [said],
                        "choices": choices,
                        "target": choices[c % 2],
                    }
                )
    pairs = root / "pairs.jsonl"
    pairs.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return root, model_dir, pairs


def _extract_argv(model_dir, pairs, out, *extra):
    return [
        "extract",
        "--model",
        str(model_dir),
        "--pairs",
        str(pairs),
        "--out",
        str(out),
        "--layers",
        "0,1",
        "--shard-rows",
        "50",
        "--batch-tokens",
        "256",
        *extra,
    ]


def test_run_directory_holds_the_engine_results(workspace, tmp_path):
    _, model_dir, pairs = workspace
    out = tmp_path / "run"
    assert main(_extract_argv(model_dir, pairs, out)) == 0
    run = open_run(out)
    assert run.complete and len(run) == 600
    want = list(
        extract_pairs(
            tiny_llama(),
            tiny_tokenizer(),
            read_pairs(pairs)[0],
            ExtractConfig(layers=(0, 1), batch_tokens=256),
            boundary_every=50,
        )
    )
    assert run.ids == [i for r in want for i in r.ids]
    np.testing.assert_array_equal(run.delta, np.concatenate([r.f_mod - r.f_x for r in want]))
    h = np.concatenate([r.hidden[(1, "last", "mod")] for r in want])
    np.testing.assert_array_equal(np.asarray(run.hidden(1, "mod")), h)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["id"] == str(model_dir) and manifest["complete"]


def _cli(*argv, env=None):
    return subprocess.Popen(
        [sys.executable, "-m", "introspect", *argv],
        cwd=tempfile.gettempdir(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )


def _same_run(a, b, *, exact=True):
    """Bitwise equal (same batches) or equal to float32 rounding (other batch compositions)."""
    ra, rb = open_run(a), open_run(b)
    assert ra.ids == rb.ids

    def same(x, y):
        if exact:
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        else:
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-5)

    same(ra.f_x, rb.f_x)
    same(ra.f_mod, rb.f_mod)
    for layer in (0, 1):
        for side in ("x", "mod"):
            same(ra.hidden(layer, side), rb.hidden(layer, side))


def test_sigkill_then_resume_equals_an_uninterrupted_run(workspace, tmp_path):
    _, model_dir, pairs = workspace
    full = tmp_path / "full"
    assert main(_extract_argv(model_dir, pairs, full, "--batch-tokens", "64")) == 0
    killed = tmp_path / "killed"
    proc = _cli(*_extract_argv(model_dir, pairs, killed, "--batch-tokens", "64"))
    manifest = killed / "manifest.json"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if manifest.exists() and len(json.loads(manifest.read_text()).get("shards", [])) >= 2:
            break
        time.sleep(0.01)
    if proc.poll() is not None:
        pytest.fail("the extraction finished before it could be killed; make the workload larger")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not json.loads(manifest.read_text())["complete"]
    assert main(_extract_argv(model_dir, pairs, killed, "--batch-tokens", "64", "--resume")) == 0
    _same_run(full, killed)


def test_two_processes_equal_one(workspace, tmp_path):
    _, model_dir, pairs = workspace
    one = tmp_path / "one"
    assert main(_extract_argv(model_dir, pairs, one)) == 0
    two = tmp_path / "two"
    proc = _torchrun(_extract_argv(model_dir, pairs, two), 2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "torchrun: 2 process(es), gloo on cpu" in proc.stderr
    assert open_run(two).manifest["world_size"] == 2
    # Each process batches its own share of the pairs: equal up to float32 rounding.
    _same_run(one, two, exact=False)


def _torchrun(argv, nproc: int):
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
         str(nproc), "-m", "introspect", *argv],
        cwd=tempfile.gettempdir(),
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip


def test_process_group_backend_follows_the_device():
    import torch.distributed as dist

    from introspect.engine.driver import process_group_backend

    assert process_group_backend("cpu") == "gloo"
    assert process_group_backend("cuda:0") == ("nccl" if dist.is_nccl_available() else "gloo")


@pytest.mark.cuda
def test_torchrun_on_a_gpu_uses_nccl(workspace, tmp_path):
    """One process under torchrun on the GPU: NCCL with the process's GPU as the current
    device, and the same run as a plain process on that GPU."""
    _, model_dir, pairs = workspace
    plain = tmp_path / "plain"
    assert main(_extract_argv(model_dir, pairs, plain, "--device", "cuda")) == 0
    nccl = tmp_path / "nccl"
    proc = _torchrun(_extract_argv(model_dir, pairs, nccl, "--device", "cuda"), 1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "torchrun: 1 process(es), nccl on cuda" in proc.stderr
    assert open_run(nccl).manifest["world_size"] == 1
    _same_run(plain, nccl, exact=False)


def test_existing_run_without_resume_is_refused(workspace, tmp_path, capsys):
    _, model_dir, pairs = workspace
    out = tmp_path / "run"
    assert main(_extract_argv(model_dir, pairs, out)) == 0
    assert main(_extract_argv(model_dir, pairs, out)) == 3
    assert "resume" in capsys.readouterr().err


def test_reduced_precision_records_its_measured_fidelity(workspace, tmp_path, capsys):
    _, model_dir, pairs = workspace
    out = tmp_path / "bf16"
    argv = _extract_argv(model_dir, pairs, out, "--dtype", "autocast-bf16", "--calibrate", "16")
    assert main(argv) == 0
    assert "--dtype autocast-bf16 is approximate" in capsys.readouterr().err
    run = open_run(out)
    fid = run.info["fidelity"]
    assert fid["mode"] == "autocast-bf16" and fid["pairs"] == 16
    assert fid["reference"] == "float32" and 0 < fid["max_abs_error"] < 1
    assert -1 <= fid["pearson"] <= 1
    assert run.config["dtype"] == "autocast-bf16"
    # The recorded figure is what a float32 run of those pairs gives.
    exact = tmp_path / "fp32"
    assert main(_extract_argv(model_dir, pairs, exact)) == 0
    ref = open_run(exact).delta[:16]
    got = run.delta[:16]
    assert np.abs(ref - got).max() == pytest.approx(fid["max_abs_error"], rel=1e-6, abs=1e-12)
    # A resumed run keeps the measurement instead of measuring again.
    (out / "manifest.json").write_text(
        (out / "manifest.json").read_text().replace('"complete": true', '"complete": false')
    )
    assert main([*argv, "--resume"]) == 0
    assert open_run(out).info["fidelity"] == fid


def test_span_positions_and_paths_layout(workspace, tmp_path):
    _, model_dir, pairs = workspace
    tree = tmp_path / "tree"
    paths = tmp_path / "paths"
    common = ("--positions", "last,span")
    assert main(_extract_argv(model_dir, pairs, tree, *common)) == 0
    assert main(_extract_argv(model_dir, pairs, paths, *common, "--layout", "paths")) == 0
    a, b = open_run(tree), open_run(paths)
    assert a.positions == ["last", "span"] and a.config["layout"] == "tree"
    assert b.config["layout"] == "paths"
    np.testing.assert_allclose(a.delta, b.delta, atol=1e-5)
    for side in ("x", "mod"):
        np.testing.assert_allclose(
            np.asarray(a.hidden(1, side, "span")), np.asarray(b.hidden(1, side, "span")),
            rtol=1e-4, atol=1e-5,
        )  # fmt: skip
    # "my friend says c ." removed: the span mean differs from the last token's state.
    assert not np.allclose(np.asarray(a.hidden(1, "x", "span")), np.asarray(a.hidden(1, "x")))


def test_cli_precisions_match_the_engine():
    from introspect.engine.commands import PRECISIONS
    from introspect.engine.precision import PRECISIONS as ENGINE

    assert PRECISIONS == ENGINE


def test_no_fused_kernels_flag_runs_the_models_own_modules(workspace, tmp_path, monkeypatch):
    from introspect.ops import fused

    _, model_dir, pairs = workspace
    few = tmp_path / "few.jsonl"
    few.write_text("".join(pairs.read_text().splitlines(keepends=True)[:12]))
    calls = []
    real = fused._rms_op
    monkeypatch.setattr(fused, "_rms_op", lambda *a: calls.append(1) or real(*a))
    assert main(_extract_argv(model_dir, few, tmp_path / "off", "--no-fused-kernels")) == 0
    assert not calls
    assert main(_extract_argv(model_dir, few, tmp_path / "on")) == 0
    assert calls or "cpp" not in fused._registry.available_backends("rms_norm")
    _same_run(tmp_path / "on", tmp_path / "off", exact=False)
