"""Faults survived: a disk that fills during an extraction, a training run killed at a random
step, and NaN or inf values refused by pair id. Everything runs on a tiny model in seconds."""

from __future__ import annotations

import json
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from safetensors.torch import load_file
from tiny import tiny_llama, tiny_tokenizer

import introspect
from introspect import open_run
from introspect.cli import main
from introspect.errors import EXIT_BAD_INPUT, EXIT_WRITE


def _pairs(n: int, *, poisoned: int | None = None) -> list[dict]:
    rows = []
    for i in range(n):
        said = f"my friend says {i % 9 + 1} ."
        tail = " bake bread" if i == poisoned else ""
        rows.append(
            {
                "id": f"q{i:02d}",
                "prompt": [
                    {"role": "system", "content": "I think the answer is what my friend says ."},
                    {"role": "user", "content": f"what is {i % 7} + {i % 5} ? {said}{tail}"},
                ],
                "remove": [said],
                "choices": [" yes", " no"] if i % 2 else ["( A )", "( B )"],
                "target": " yes" if i % 2 else "( B )",
            }
        )
    return rows


def _write_pairs(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    tiny_llama().save_pretrained(root / "tiny")
    tiny_tokenizer().save_pretrained(root / "tiny")
    _write_pairs(root / "pairs.jsonl", _pairs(16))
    return root


def _cli(argv, **kw):
    """The command line in a child process computing with this process's thread count, so that
    its results can be compared bit for bit with runs made here."""
    import torch

    threads = str(torch.get_num_threads())
    return subprocess.Popen(
        [sys.executable, "-m", "introspect", *argv],
        cwd=tempfile.gettempdir(),
        env={**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads},
        **kw,
    )


# ------------------------------------------------------------------ a disk that fills


def _extract_argv(ws, out, *extra):
    return ["extract", "--model", str(ws / "tiny"), "--pairs", str(ws / "pairs.jsonl"),
            "--out", str(out), "--layers", "1", "--shard-rows", "2", "--batch-tokens", "64",
            *extra]  # fmt: skip


def _file_size_limit(limit: int):
    """For the child: writes past ``limit`` bytes fail with EFBIG (SIGXFSZ, which would kill the
    process instead, is ignored), as on a disk that has filled up."""

    def limit_writes():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return limit_writes


def _manifest_bytes(manifest: dict, shards: int) -> int:
    """Bytes of ``manifest`` rewritten with its first ``shards`` shards (the writer's layout)."""
    part = {**manifest, "shards": manifest["shards"][:shards]}
    return len(json.dumps(part, indent=1) + "\n")


def test_a_full_disk_stops_the_extraction_with_one_error_and_resume_completes_it(ws, tmp_path):
    full = tmp_path / "full"
    assert main(_extract_argv(ws, full)) == 0
    want = json.loads((full / "manifest.json").read_text())
    assert len(want["shards"]) == 8
    # Room for the manifest listing two shards, not three: the third shard's manifest update
    # is the write that fails. Every shard file fits.
    limit = _manifest_bytes(want, 2) + 64
    assert max(f["bytes"] for s in want["shards"] for f in s["files"].values()) < limit
    assert _manifest_bytes(want, 3) - 120 > limit  # the in-progress manifest is a little shorter

    cut = tmp_path / "cut"
    proc = _cli(
        _extract_argv(ws, cut),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_file_size_limit(limit),
    )
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == EXIT_WRITE, err[-2000:]
    errors = [line for line in err.splitlines() if line.startswith("introspect: error:")]
    assert len(errors) == 1 and "Traceback" not in err, err[-2000:]
    assert f"cannot write {cut / 'manifest.json'}" in errors[0] and "--resume" in errors[0]
    kept = json.loads((cut / "manifest.json").read_text())
    assert not kept["complete"] and kept["rows_done"] == 4
    assert not [p.name for p in cut.iterdir() if p.name.endswith(".tmp")]

    assert main([*_extract_argv(ws, cut), "--resume"]) == 0
    got = json.loads((cut / "manifest.json").read_text())
    assert got["complete"] and [s["files"] for s in got["shards"]] == [
        s["files"] for s in want["shards"]
    ]  # the same bytes, shard by shard
    a, b = open_run(full), open_run(cut)
    assert a.ids == b.ids
    for x, y in ((a.f_x, b.f_x), (a.f_mod, b.f_mod), (a.hidden(1, "x"), b.hidden(1, "x")),
                 (a.hidden(1, "mod"), b.hidden(1, "mod"))):  # fmt: skip
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ------------------------------------------------------------------ a training run killed


@pytest.fixture(scope="module")
def labels_run(ws):
    out = ws / "m0"
    assert main(_extract_argv(ws, out)) == 0
    return out


STEPS, EVERY = 8, 2


def _train_argv(ws, labels, out, *extra):
    return ["train", "--model", str(ws / "tiny"), "--pairs", str(ws / "pairs.jsonl"),
            "--labels", str(labels), "--out", str(out), "--layer", "1", "--concurrent",
            "--lr", "1e-3", "--batch-size", "4", "--w-reg", "0.5", "--steps", str(STEPS),
            "--checkpoint-every", str(EVERY), *extra]  # fmt: skip


def _log(out) -> list[dict]:
    doc = json.loads((out / "train.json").read_text())
    assert doc["complete"] and doc["step"] == STEPS
    return [{k: v for k, v in rec.items() if k != "seconds"} for rec in doc["log"]]


def _kill_after_step(argv, step: int) -> None:
    """Runs ``introspect train`` and kills it with SIGKILL once step ``step`` is logged."""
    proc = _cli(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if line.startswith(f"step {step}/"):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL, (step, "".join(seen)[-2000:])


def _same_training(a, b, step: int) -> None:
    """The same log (times aside) and, bitwise, the same last checkpoint."""
    assert _log(a) == _log(b), step
    last = f"ckpt-{STEPS:06d}"
    for name in ("model/model.safetensors", "state.safetensors", "optimizer.safetensors"):
        ta, tb = load_file(str(a / last / name)), load_file(str(b / last / name))
        assert ta.keys() == tb.keys(), name
        for key in ta:
            if key != "rng.torch":
                assert torch.equal(ta[key], tb[key]), (step, name, key)


@pytest.fixture(scope="module")
def straight(ws, labels_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "train"
    assert main(_train_argv(ws, labels_run, out)) == 0
    return out


def test_training_killed_at_a_random_step_resumes_to_the_same_run(ws, labels_run, straight,
                                                                  tmp_path):  # fmt: skip
    # Killed after a random step past the first checkpoint (possibly while a checkpoint is
    # being written); the resumed run must end where the straight one did.
    step = random.randint(EVERY + 1, STEPS - 1)
    killed = tmp_path / "killed"
    _kill_after_step(_train_argv(ws, labels_run, killed), step)
    assert main(_train_argv(ws, labels_run, killed, "--resume")) == 0, step
    _same_training(straight, killed, step)


def test_training_killed_before_its_first_checkpoint_starts_over(ws, labels_run, straight,
                                                                 tmp_path, capsys):  # fmt: skip
    killed = tmp_path / "killed"
    _kill_after_step(_train_argv(ws, labels_run, killed), 1)
    assert main(_train_argv(ws, labels_run, killed, "--resume")) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "no checkpoint to resume from" in err and "without --resume" in err
    assert main(_train_argv(ws, labels_run, killed)) == 0  # over the partial files it left
    _same_training(straight, killed, 1)


# ------------------------------------------------------------------ NaN and inf


def _poisoned_model(seed: int = 0):
    """The tiny model whose embedding of "bread" is infinite: every sequence with that word gets
    NaN hidden states from the first layer on."""
    model = tiny_llama(seed)
    bread = tiny_tokenizer().convert_tokens_to_ids("bread")
    with torch.no_grad():
        model.get_input_embeddings().weight[bread] = float("inf")
    return model


def test_non_finite_hidden_states_are_refused_by_pair_id(ws, tmp_path):
    pairs = _pairs(8, poisoned=5)
    with pytest.raises(introspect.IntrospectError, match=r"pair 'q05'.*not finite") as info:
        introspect.extract(_poisoned_model(), tiny_tokenizer(), pairs, tmp_path / "run",
                           layers=[1], shard_rows=2, batch_tokens=48)  # fmt: skip
    assert info.value.exit_code == EXIT_BAD_INPUT
    kept = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert not kept["complete"] and kept["rows_done"] < 5  # nothing of q05 was written


def test_non_finite_labels_are_refused_by_pair_id(ws, tmp_path, capsys):
    from introspect.run import RunWriter

    ids = [r["id"] for r in _pairs(16)]
    run = tmp_path / "labels"
    with RunWriter(run, model_id="m", weights_hash="0", config={}, input_hash="0", layers=[],
                   positions=["last"], hidden_size=0) as w:  # fmt: skip
        f_mod = np.zeros(len(ids))
        f_mod[3], f_mod[11] = np.nan, np.inf
        w.add(ids, np.zeros(len(ids)), f_mod, {})
    assert main(_train_argv(ws, run, tmp_path / "train")) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "not finite" in err and "'q03'" in err and "'q11'" in err


def test_non_finite_hidden_states_of_the_training_model_are_refused_by_pair_id(
    ws, labels_run, tmp_path, capsys
):
    poisoned = tmp_path / "poisoned"
    _poisoned_model().save_pretrained(poisoned)
    tiny_tokenizer().save_pretrained(poisoned)
    pairs = _write_pairs(tmp_path / "pairs.jsonl", _pairs(16, poisoned=7))
    argv = _train_argv(ws, labels_run, tmp_path / "train")
    argv[argv.index("--model") + 1] = str(poisoned)
    argv[argv.index("--pairs") + 1] = str(pairs)
    argv.remove("--concurrent")
    assert main(argv) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "hidden states" in err and "not finite" in err and "'q07'" in err


def test_a_loss_that_diverges_stops_training_naming_the_step_and_pairs(ws, labels_run, tmp_path,
                                                                       capsys):  # fmt: skip
    # A learning rate of 1e30: the first update sends the weights to inf, the next loss is NaN.
    out = tmp_path / "train"
    argv = _train_argv(ws, labels_run, out)
    argv[argv.index("--lr") + 1] = "1e30"
    assert main(argv) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    line = next(ln for ln in err.splitlines() if "not finite" in ln)
    assert "step 2: the loss is not finite" in line and "'q" in line
    assert "nothing was updated" in line
    assert "Traceback" not in err
