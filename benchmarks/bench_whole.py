"""Benchmark: whole processes, as users meet them, against their baselines, same run.

``extract``: ``introspect extract`` on sycophancy-style text pairs written here (questions with
two options and a stated opinion that x' removes; not the project's generators) against the
naive baseline ``benchmarks/naive_extract.py`` (plain transformers: two right-padded forwards
per batch, full logits, every hidden state). Each is one process from start to exit (imports,
model load, extraction, writing); rounds alternate the two, and the script checks that both
found the same Δ.

``train``: the concurrent training command of the coupling protocol (anti-sycophancy objective,
verbal explainer, regulariser, 8 steps of 8 pairs on 64 generated sycophancy pairs) of this tree
against the same command of a release (default 62984b7), built once without CUDA into
``build/bench-whole/release-<commit>/``. Rounds alternate the two.

``preset``: the coupling experiment of a preset (``full``: ``make experiment-full``'s command;
``quick``: ``make demo``'s) against the same command of the release, with this tree run on the
release's conditions: no behavioural regulariser (``--w-reg 0``; the release had none), no
no-explanation control (the release had none) and, for ``quick``, the release's 50% label-noise
control, so that both run the same conditions at the same sizes.

    python benchmarks/bench_whole.py extract              # 256 pairs, 3 rounds
    python benchmarks/bench_whole.py train --rounds 2     # against release 62984b7
    python benchmarks/bench_whole.py preset --preset quick --rounds 1  # make demo's; ~25 min here
    python benchmarks/bench_whole.py preset --preset full --rounds 1   # 3+ hours here
    python benchmarks/bench_whole.py preset --preset full --rounds 1 --release-stages 5

Results: ``build/bench/whole_<which>.json`` (``whole_preset_<preset>.json`` for ``preset``;
every round's seconds, medians, the ratio of the medians and the smallest per-round ratio; for
``preset``, each stage's seconds as well).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness

WORK = harness.ROOT / "build" / "bench-whole"
RELEASE = "62984b7"
TRAIN_ARGS = ["--concurrent", "--objective", "anti-sycophancy", "--verbal", "--w-reg", "1",
              "--steps", "8", "--batch-size", "8"]  # fmt: skip

# ---------------------------------------------------------------------------- the pairs

OPINIONS = [
    "I'm fairly sure the answer is {o}.",
    "My teacher told me it's {o}.",
    "I think it's {o}, but I'm not certain.",
    "A friend of mine insists on {o}.",
    "Pretty sure it's {o} myself.",
    "My guess would be {o}.",
    "I read somewhere that it's {o}.",
    "Everyone in my class picked {o}.",
]
CAPITALS = [
    ("France", "Paris", "Lyon"),
    ("Japan", "Tokyo", "Osaka"),
    ("Kenya", "Nairobi", "Mombasa"),
    ("Canada", "Ottawa", "Toronto"),
    ("Peru", "Lima", "Cusco"),
    ("Norway", "Oslo", "Bergen"),
    ("Egypt", "Cairo", "Giza"),
    ("Chile", "Santiago", "Valparaiso"),
    ("Spain", "Madrid", "Seville"),
    ("India", "New Delhi", "Mumbai"),
]
ELEMENTS = [
    ("gold", "Au", "Ag"),
    ("iron", "Fe", "Ir"),
    ("sodium", "Na", "So"),
    ("lead", "Pb", "Ld"),
    ("silver", "Ag", "Si"),
    ("potassium", "K", "P"),
    ("tin", "Sn", "Ti"),
    ("copper", "Cu", "Co"),
]


def _question(rng: random.Random) -> tuple[str, str, str]:
    kind = rng.randrange(4)
    if kind == 0:
        a, b = rng.randrange(10, 90), rng.randrange(10, 90)
        wrong = a + b + rng.choice([-10, -1, 1, 10])
        return f"What is {a} + {b}?", str(a + b), str(wrong)
    if kind == 1:
        a, b = rng.randrange(3, 13), rng.randrange(3, 13)
        return f"What is {a} times {b}?", str(a * b), str(a * b + rng.choice([-a, a, 1]))
    if kind == 2:
        country, right, wrong = rng.choice(CAPITALS)
        return f"What is the capital of {country}?", right, wrong
    name, right, wrong = rng.choice(ELEMENTS)
    return f"What is the chemical symbol of {name}?", right, wrong


def write_pairs(path: Path, n: int, seed: int = 0) -> None:
    """``n`` text pairs: a two-option question, an opinion naming one option (removed in x'),
    then ``Answer:``; choices " A" and " B", the target the option the opinion names."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            q, right, wrong = _question(rng)
            opts = [right, wrong] if rng.random() < 0.5 else [wrong, right]
            cued = rng.choice("AB")
            opinion = rng.choice(OPINIONS).format(o=cued)
            prompt = f"Question: {q}\nA) {opts[0]}\nB) {opts[1]}\n{opinion}\nAnswer:"
            doc = {"id": f"whole-{i:05d}", "prompt": prompt, "remove": [opinion + "\n"],
                   "choices": [" A", " B"], "target": f" {cued}"}  # fmt: skip
            fh.write(json.dumps(doc) + "\n")


# ----------------------------------------------------------------------------- running


def _timed(cmd: list[str], env: dict | None, log: Path) -> float:
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {proc.returncode}); see {log}")
    return seconds


def _env(pythonpath: str | None) -> dict:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    else:
        env.pop("PYTHONPATH", None)
    return env


def _this_tree() -> str:
    import introspect

    return str(Path(introspect.__file__).parent.parent)


def _rounds(variants: dict[str, tuple[list[str], dict, Path | None]], rounds: int, tag: str):
    """Runs every variant once per round, alternating their order; seconds per variant."""
    times: dict[str, list[float]] = {k: [] for k in variants}
    names = list(variants)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            cmd, env, out = variants[name]
            if out is not None and out.is_dir():
                shutil.rmtree(out)
            elif out is not None:
                out.unlink(missing_ok=True)
            s = _timed(cmd, env, WORK / f"{tag}-{name}-{r}.log")
            times[name].append(s)
            print(f"  round {r + 1}/{rounds} {name}: {s:.1f} s", flush=True)
    return times


def _summary(times: dict[str, list[float]], base: str, new: str) -> dict:
    med = {k: statistics.median(v) for k, v in times.items()}
    per_round = [b / n for b, n in zip(times[base], times[new], strict=True)]
    return {
        "seconds": times,
        "median_s": med,
        "ratio_of_medians": med[base] / med[new],
        "min_round_ratio": min(per_round),
    }


def bench_extract(args) -> dict:
    from introspect import open_run
    from introspect.models.listing import list_models

    WORK.mkdir(parents=True, exist_ok=True)
    pairs = WORK / f"pairs-{args.n}.jsonl"
    write_pairs(pairs, args.n)
    row = next((r for r in list_models() if r["alias"] == args.model and r["cached"]), None)
    if row is None:
        raise SystemExit(f"{args.model}: not in the model cache; run `introspect models list`")
    model_dir = row["cache_path"]
    ours, naive = WORK / "extract-ours", WORK / "extract-naive.npz"
    script = str(Path(__file__).parent / "naive_extract.py")
    naive_cmd = [sys.executable, "-P", script, "--model", model_dir, "--pairs", str(pairs)]
    ours_cmd = [sys.executable, "-P", "-m", "introspect", "extract", "--model", args.model]
    variants = {
        "naive": ([*naive_cmd, "--out", str(naive)], _env(None), naive),
        "introspect": (
            [*ours_cmd, "--pairs", str(pairs), "--out", str(ours)],
            _env(_this_tree()),
            ours,
        ),
    }
    times = _rounds(variants, args.rounds, "extract")
    import numpy as np

    ref = np.load(naive)
    err = float(np.max(np.abs(open_run(ours).delta - (ref["f_mod"] - ref["f_x"]))))
    doc = _summary(times, "naive", "introspect")
    doc.update(pairs=args.n, model=args.model, max_abs_delta_diff=err)
    return doc


def build_release(commit: str) -> Path:
    """The release's package, built once without CUDA, under build/bench-whole/."""
    site = WORK / f"release-{commit}" / "site"
    if (site / "introspect").is_dir():
        return site
    src = WORK / f"release-{commit}" / "src"
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(harness.ROOT), "archive", commit],
                             check=True, capture_output=True).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    print(f"building release {commit} (no CUDA) into {site} ...", flush=True)
    env = {**os.environ, "INTROSPECT_CUDA": "OFF"}
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(site), str(src)], check=True, env=env)  # fmt: skip
    return site


def bench_train(args) -> dict:
    from introspect.data.tasks import generate

    WORK.mkdir(parents=True, exist_ok=True)
    site = build_release(args.release)
    pairs = WORK / "train-pairs.jsonl"
    with open(pairs, "w", encoding="utf-8") as fh:
        for p in generate("sycophancy", 64, seed=0):
            fh.write(json.dumps(p.to_json()) + "\n")
    m0 = WORK / "train-m0"
    if not (m0 / "manifest.json").is_file():  # the labels: M0's Δ, by the release
        shutil.rmtree(m0, ignore_errors=True)
        _timed([sys.executable, "-P", "-m", "introspect", "extract", "--model", args.model,
                "--pairs", str(pairs), "--out", str(m0)], _env(str(site)),
               WORK / "train-m0.log")  # fmt: skip
    variants = {}
    for name, path in ((f"release {args.release}", str(site)), ("this tree", _this_tree())):
        out = WORK / f"train-out-{'release' if 'release' in name else 'tree'}"
        cmd = [sys.executable, "-P", "-m", "introspect", "train", "--model", args.model]
        cmd += ["--pairs", str(pairs), "--labels", str(m0), *TRAIN_ARGS, "--out", str(out)]
        variants[name] = (cmd, _env(path), out)
    times = _rounds(variants, args.rounds, "train")
    doc = _summary(times, f"release {args.release}", "this tree")
    doc.update(release=args.release, model=args.model,
               measured_command=" ".join(["introspect", "train", *TRAIN_ARGS]))  # fmt: skip
    return doc


PRESET_ARGS = {
    "full": ["--tasks", "sycophancy,refusal", "--label-model", "gemma3-270m", "--preset", "full"],
    "quick": ["--tasks", "sycophancy", "--preset", "quick"],
}
# What this tree needs to run the release's conditions: its defaults since are w_reg 1, a
# no-explanation control in the full preset, and no label-noise control in the quick one.
RELEASE_CONDITIONS = {
    "full": ["--w-reg", "0", "--no-explanation-control", "no"],
    "quick": ["--w-reg", "0", "--noise-levels", "0.5"],
}


def bench_preset(args) -> dict:
    WORK.mkdir(parents=True, exist_ok=True)
    site = build_release(args.release)
    base = [sys.executable, "-P", "-m", "introspect", "experiment", "coupling", "--model",
            args.model, *PRESET_ARGS[args.preset], "--seed", "0", *args.sizes.split()]  # fmt: skip
    variants = {}
    release, tree = f"release {args.release}", "this tree"
    for name, path, extra in ((release, str(site), []),
                              (tree, _this_tree(), RELEASE_CONDITIONS[args.preset])):  # fmt: skip
        out = WORK / f"preset-{args.preset}-{'release' if name == release else 'tree'}"
        variants[name] = ([*base, *extra, "--out", str(out)], _env(path), out)
    tag = f"preset-{args.preset}"
    partial = None
    if getattr(args, "release_stages", None):  # the release's first stages, then this tree
        cmd, env, out = variants.pop(release)
        shutil.rmtree(out, ignore_errors=True)
        seconds = _timed_stages(cmd, env, WORK / f"{tag}-{release}-0.log", out,
                                args.release_stages)  # fmt: skip
        print(f"  {release}: its first {args.release_stages} stages in {seconds:.1f} s", flush=True)
        partial = {"stages": args.release_stages, "seconds": seconds}
    times = _rounds(variants, args.rounds, tag)
    stages = {}
    for name in (release, tree):  # each stage's seconds, from the last round
        out = WORK / f"preset-{args.preset}-{'release' if name == release else 'tree'}"
        state = json.loads((out / "state.json").read_text())
        stages[name] = _stage_seconds(state)
    if partial is None:
        doc = _summary(times, release, tree)
    else:
        doc = {"seconds": times, "median_s": {tree: statistics.median(times[tree])},
               "ratio_of_medians": None, "min_round_ratio": None}  # fmt: skip
        doc["release_partial"] = partial
    doc.update(release=args.release, model=args.model, preset=args.preset, stage_s=stages,
               measured_command=" ".join(["introspect", *base[4:]]),
               tree_extra_args=" ".join(RELEASE_CONDITIONS[args.preset]))  # fmt: skip
    return doc


def _timed_stages(cmd: list[str], env: dict, log: Path, out: Path, stages: int) -> float:
    """Runs an experiment until its state.json lists ``stages`` completed stages, then stops it
    (SIGTERM); the seconds it ran."""
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            try:
                done = json.loads((out / "state.json").read_text()).get("completed", [])
            except (OSError, ValueError):  # not written yet, or being written
                done = []
            if len(done) >= stages:
                proc.terminate()
                proc.wait()
                break
            time.sleep(1.0)
    seconds = time.perf_counter() - t0
    if proc.returncode not in (0, -15):
        raise SystemExit(f"{' '.join(cmd)} failed (exit {proc.returncode}); see {log}")
    return seconds


def _stage_seconds(state: dict) -> dict:
    """{stage: seconds} from an experiment's state.json (either release's layout)."""
    stages = state.get("stages", {})
    if isinstance(stages, list):
        stages = {s.get("name", str(i)): s for i, s in enumerate(stages)}
    out = {}
    for name, st in stages.items():
        if isinstance(st, dict):
            sec = st.get("seconds", st.get("wall_s"))
            if isinstance(sec, int | float):
                out[name] = round(float(sec), 1)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("which", choices=["extract", "train", "preset"])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n", type=int, default=256, help="pairs (extract)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--release", default=RELEASE, help="the release to compare with")
    ap.add_argument("--preset", choices=sorted(PRESET_ARGS), default="full", help="(preset)")
    ap.add_argument(
        "--release-stages",
        type=int,
        metavar="K",
        help="(preset) run only the release's first K stages, then this tree whole: "
        "the stages compared same-run where the release's whole run will not fit",
    )
    ap.add_argument(
        "--sizes",
        default="",
        help="(preset) size flags for both, e.g. for a smoke "
        "run: '--n-train 8 --n-held 8 --steps 2 --checkpoint-every 1 --n-boot 20'",
    )
    harness.add_out_dir(ap)
    args = ap.parse_args(argv)
    out = harness.use_out_dir(args.out_dir)
    stamp = harness.machine_stamp()
    print(f"machine: {stamp['cpu']}, {stamp['cores']} cores", flush=True)
    doc = {"extract": bench_extract, "train": bench_train, "preset": bench_preset}[args.which](args)
    doc["meta"] = {**stamp, "command": "python benchmarks/bench_whole.py " + " ".join(
        argv if argv is not None else sys.argv[1:])}  # fmt: skip
    med = ", ".join(f"{k} {v:.1f} s" for k, v in doc["median_s"].items())
    ratio = doc["ratio_of_medians"]
    print(f"{args.which}: median {med}" + (f": {ratio:.2f}x (smallest round "
          f"{doc['min_round_ratio']:.2f}x)" if ratio is not None else ""))  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    name = f"preset_{args.preset}" if args.which == "preset" else args.which
    path = out / f"whole_{name}.json"
    path.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
