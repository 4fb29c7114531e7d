"""Digests of what `introspect extract` and `introspect experiment coupling` write on a tiny
model, and their comparison.

A digest records every result file: its sha256, and what it holds in a form that can be compared
across machines (tensors by dtype, shape, sums and leading values; JSON and JSONL by their parsed
values, with times, versions and paths taken out). On the machine that made the committed digest
(the same CPU generation, instruction set, torch and thread count: :func:`machine`) results must
be the same bytes; elsewhere CPU kernels may round differently, so numbers must agree within a
tight tolerance (reported statistics to 1e-3 absolute: on the tiny model they are near-degenerate;
the coupling index only where it is determined) and everything else exactly.

``python digest.py OUT.json`` writes the digests of the installed code into OUT.json;
``tests/test_golden.py`` compares the code under test with the digests committed here: the
extraction's made by the release before the library driver (commit 62984b7), the coupling
experiment's by the release that gave the experiment its settings (its protocol changed there:
new controls, the regulariser, rank-matched verbal bins), so that later changes that should not
move a number are checked against them.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

TIMES = {"created_at", "updated_at", "completed_at", "introspect", "seconds", "wall_s"}
# Files whose bytes hold times, versions or absolute paths; their content is covered by the
# arrays and logs digested elsewhere.
SKIP = {"state.json", "eval.json", "report.md", "results.json", "config.json",
        "generation_config.json", "tokenizer.json", "tokenizer_config.json",
        "special_tokens_map.json", "chat_template.jinja"}  # fmt: skip
# Bytes that follow from the arrays: equal on the recording machine, not compared elsewhere.
BYTES_KEYS = {"sha256"}
RTOL, ATOL = 1e-4, 1e-5
# The tiny model's statistics are near-degenerate (gaps of 0.005 from two training steps): a
# last-bit change of a kernel moves them by about 1e-5 absolute, a real change by far more.
STAT_ATOL = 1e-3
# The coupling index c = a/(a + b) is ill-determined where a + b is near 0, as it is here
# (values in the thousands, bootstrap bounds moving by a factor): compared only where it is
# determined (|c| <= C_DETERMINED), to STAT_ATOL.
C_DETERMINED = 10.0
# Weights solved from few, correlated features (the ridge probe) move more than what they
# predict: tensors get a looser tolerance than the numbers the results report.
TENSOR_RTOL, TENSOR_ATOL = 2e-3, 1e-4
HEAD = 16
# Settings added since the digests were recorded, whose values here reproduce the recorded runs
# (``packed_step``: the prefix-shared training step, equal to the separate forwards up to float
# rounding; ``no_explanation_control``: on, as the quick preset then ran it); a record without
# them is compared as if they were absent.
ADDED_KEYS = {"packed_step", "no_explanation_control"}
# Settings whose recorded default changed on purpose, (then, now): ``row_tokens`` is now chosen
# per batch (one row where attention runs per trie, else 256), which moves no number.
CHANGED_DEFAULTS = {"row_tokens": (256, None)}


def machine() -> dict:
    """What decides the rounding of CPU kernels: the CPU (its name, family and model: one name
    covers several generations), the instruction set torch dispatches to, torch's version and
    its thread count."""
    import torch

    info = {"model name": platform.processor(), "cpu family": "?", "model": "?"}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key = line.split(":", 1)[0].strip()
            if key in info and info[key] in ("?", platform.processor()):
                info[key] = line.split(":", 1)[1].strip()
            if line.strip() == "":
                break
    except OSError:
        pass
    return {
        "cpu": info["model name"],
        "cpu_id": f"family {info['cpu family']} model {info['model']}",
        "isa": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def _scrub(value, root: str):
    if isinstance(value, dict):
        return {k: _scrub(v, root) for k, v in value.items() if k not in TIMES}
    if isinstance(value, list):
        return [_scrub(v, root) for v in value]
    if isinstance(value, str):
        return value.replace(root, "<root>")
    return value


def _tensors(path: Path) -> dict:
    from safetensors.numpy import load_file

    out = {}
    for name, a in sorted(load_file(str(path)).items()):
        flat = a.astype("float64").ravel() if a.dtype.kind in "fiub" else None
        entry = {"dtype": str(a.dtype), "shape": list(a.shape)}
        if flat is not None:
            entry["stats"] = [float(abs(flat).sum()), float((flat**2).sum())]  # no cancellation
            entry["head"] = [float(v) for v in flat[:HEAD]]
        out[name] = entry
    return out


def _file(path: Path, root: Path) -> dict:
    data = path.read_bytes()
    doc: dict = {"sha256": hashlib.sha256(data).hexdigest()}
    if path.suffix == ".safetensors":
        doc["tensors"] = _tensors(path)
    elif path.suffix == ".json":
        doc["json"] = _scrub(json.loads(data), str(root))
    elif path.suffix == ".jsonl":
        doc["jsonl"] = [_scrub(json.loads(line), str(root)) for line in data.splitlines()]
    if path.name in ("manifest.json", "train.json", "labels.json", "verbal.json"):
        del doc["sha256"]  # they hold times and paths; their values are compared instead
    return doc


def digest_tree(out: Path, root: Path) -> dict:
    """``{relative path: digest}`` for every file under ``out`` that carries results."""
    doc = {}
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        rel = path.relative_to(out).as_posix()
        if path.name in SKIP or path.suffix == ".png" or path.name.startswith("."):
            continue
        doc[rel] = _file(path, root)
    return doc


def differences(got, want, *, exact: bool, where: str = "") -> list[str]:
    """Where ``got`` differs from ``want``: numbers beyond the tolerance (or at all when
    ``exact``), anything else at all; ``sha256`` values only when ``exact``."""
    if isinstance(want, dict) and isinstance(got, dict):
        out = []
        extra = set(got) - set(want)
        if extra <= ADDED_KEYS:
            got = {k: v for k, v in got.items() if k not in extra}
        for k, (then, now) in CHANGED_DEFAULTS.items():
            if k in got and k in want and want[k] == then and got[k] is now:
                got = {**got, k: then}
        if sorted(got) != sorted(want):
            out.append(f"{where}: keys {sorted(set(got) ^ set(want))} differ")
        for k in want:
            if k in got and (exact or k not in BYTES_KEYS):
                out += differences(got[k], want[k], exact=exact, where=f"{where}/{k}")
        return out
    if isinstance(want, list) and isinstance(got, list):
        if len(got) != len(want):
            return [f"{where}: {len(got)} items, not {len(want)}"]
        out = []
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            out += differences(g, w, exact=exact, where=f"{where}[{i}]")
        return out
    numbers = (int, float)
    if (isinstance(want, numbers) and isinstance(got, numbers)
            and not isinstance(want, bool) and not isinstance(got, bool)):  # fmt: skip
        if isinstance(want, int) and isinstance(got, int):
            return [] if got == want else [f"{where}: {got} != {want}"]
        if exact:
            return (
                []
                if got == want or (got != got and want != want)
                else [f"{where}: {got!r} != {want!r}"]
            )
        if math.isnan(want) and math.isnan(got):
            return []
        if "/tensors/" in where:
            rtol, atol = TENSOR_RTOL, TENSOR_ATOL
        elif where.endswith("/c") or "/c/" in where:
            if abs(got) > C_DETERMINED and abs(want) > C_DETERMINED:
                return []
            rtol, atol = RTOL, STAT_ATOL
        else:
            rtol, atol = RTOL, STAT_ATOL if _is_statistic(where) else ATOL
        if math.isclose(got, want, rel_tol=rtol, abs_tol=atol):
            return []
        return [f"{where}: {got!r} != {want!r} (beyond rtol {rtol}, atol {atol})"]
    if isinstance(want, str) and isinstance(got, str) and not exact:
        # Prose quoting rounded numbers (a verdict's interval): the numbers are compared as
        # numbers where they are stored as such.
        return (
            []
            if _NUMBER.sub("#", got) == _NUMBER.sub("#", want)
            else [f"{where}: {got!r} != {want!r}"]
        )
    return [] if got == want else [f"{where}: {got!r} != {want!r}"]


_NUMBER = re.compile(r"[-+]?\d+\.\d+")


def _is_statistic(where: str) -> bool:
    """Whether ``where`` names a reported statistic (metrics, verdicts, results) rather than
    a logged value (losses, behaviour), which keeps the tight tolerance."""
    return "metrics.jsonl" in where or "verdicts.json" in where


def make_model(root: Path) -> Path:
    from tiny import tiny_llama, tiny_tokenizer

    model = root / "model"
    tiny_llama().save_pretrained(model)
    tiny_tokenizer().save_pretrained(model)
    return model


def run_all(root: Path) -> dict:
    """Runs both commands in ``root`` (the working directory) and digests what they wrote."""
    import os

    from introspect.cli import main

    cwd = os.getcwd()
    os.chdir(root)
    try:
        make_model(root)
        pairs = ["pairs", "--task", "sycophancy", "--n", "24", "--seed", "0",
                 "--out", "pairs.jsonl"]  # fmt: skip
        extract = ["extract", "--model", "model", "--pairs", "pairs.jsonl", "--out", "run",
                   "--layers", "0,1", "--positions", "last,span", "--shard-rows", "8"]  # fmt: skip
        coupling = ["experiment", "coupling", "--model", "model", "--tasks", "sycophancy",
                    "--out", "exp", "--n-train", "12", "--n-held", "12", "--steps", "2",
                    "--checkpoint-every", "1", "--n-boot", "50", "--seed", "0",
                    # the quick preset's controls when the record was made
                    "--noise-levels", "0.5", "--no-explanation-control", "yes"]  # fmt: skip
        for argv in (pairs, extract, coupling):
            assert main(argv) == 0, argv
    finally:
        os.chdir(cwd)
    return {
        "machine": machine(),
        "extract": digest_tree(root / "run", root),
        "coupling": digest_tree(root / "exp", root),
    }


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        doc = run_all(Path(tmp))
    Path(sys.argv[1]).write_text(json.dumps(doc, indent=0, sort_keys=True) + "\n")
