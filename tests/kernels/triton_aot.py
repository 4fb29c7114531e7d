"""Ahead-of-time compile of the Triton paired-attention kernel for GPUs that are not here.

``triton.compile`` with a ``GPUTarget`` needs no GPU: it lowers the kernel to PTX and runs
Triton's bundled ptxas. The shared memory a program needs comes from the compiled metadata, the
registers and stack (spills) from the bundled cuobjdump. Run in a process without
``TRITON_INTERPRET`` (the interpreter replaces the kernels)::

    python triton_aot.py '[["fp32", 128, 86], ...]'   # (dtype, head dim, compute capability)

prints one JSON object per entry: its launch configuration at the largest BLOCK_M and what the
compiled kernel uses (``shared`` bytes, ``reg`` per thread, ``stack`` bytes; ``reg``/``stack``
are null where cuobjdump is missing), or ``error``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

assert os.environ.get("TRITON_INTERPRET") != "1", "run without the Triton interpreter"

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from introspect.kernels import paired_attention as kpa  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_CONSTEXPRS = ("GROUP", "BLOCK_M", "BLOCK_N", "BLOCK_D", "INTERPRET_BF16", "DOT_PRECISION")
_CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/cuobjdump")


def _signature(fn, dtype: str) -> dict[str, str]:
    sig = {}
    for name in fn.arg_names:
        if name in ("Q_ptr", "K_ptr", "V_ptr", "O_ptr"):
            sig[name] = "*" + dtype
        elif name.endswith("_ptr"):
            sig[name] = "*i32"
        elif name in _CONSTEXPRS:
            sig[name] = "constexpr"
        else:
            sig[name] = "fp32" if name == "qk_scale" else "i32"
    return sig


def _resources(cubin: bytes) -> dict:
    if not os.path.exists(_CUOBJDUMP):
        return {"reg": None, "stack": None}
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([_CUOBJDUMP, "-res-usage", f.name], capture_output=True, text=True)
    line = next(x for x in out.stdout.splitlines() if "REG:" in x)
    fields = dict(x.split(":", 1) for x in line.split() if ":" in x)
    return {"reg": int(fields["REG"]), "stack": int(fields["STACK"])}


def compile_entry(dtype: str, head_dim: int, capability: int, block_m: int | None = None) -> dict:
    """Compiles the kernel as ``paired_attention_fwd`` would launch it on that GPU."""
    fn = kpa._paired_attention_fwd_kernel
    cap_m, block_n, warps, stages = kpa.gpu_config(DTYPES[dtype], head_dim)
    consts = {
        "GROUP": 1, "BLOCK_M": block_m or cap_m, "BLOCK_N": block_n,
        "BLOCK_D": kpa.block_d_for(head_dim), "INTERPRET_BF16": False,
        "DOT_PRECISION": "ieee" if dtype == "fp32" else "tf32",
    }  # fmt: skip
    src = ASTSource(
        fn=fn, signature=_signature(fn, dtype),
        constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()},
    )  # fmt: skip
    compiled = triton.compile(
        src, target=GPUTarget("cuda", capability, 32),
        options={"num_warps": warps, "num_stages": stages},
    )  # fmt: skip
    return {
        "dtype": dtype, "head_dim": head_dim, "capability": capability,
        "config": [consts["BLOCK_M"], block_n, warps, stages],
        "shared": compiled.metadata.shared, **_resources(compiled.asm["cubin"]),
    }  # fmt: skip


if __name__ == "__main__":
    for entry in json.loads(sys.argv[1]):
        try:
            print(json.dumps(compile_entry(*entry)), flush=True)
        except Exception as exc:  # reported, so the caller says which entry failed
            print(json.dumps({"entry": entry, "error": f"{type(exc).__name__}: {exc}"}), flush=True)
