"""``introspect info``: the native build and which op backends this machine can run."""

from __future__ import annotations

import argparse

from introspect._args import add_json_argument, write_json_output


def build_info() -> dict:
    """The versions, the native build and each backend's state (``"available"`` or why not)."""
    import torch

    from introspect import __version__, _native
    from introspect.ops import BACKENDS, unavailable_reason

    return {
        "introspect": __version__,
        "torch": torch.__version__,
        "native_build": _native.build_info() or None,
        "native_reason": None if _native.build_info() else _native.unavailable_reason(),
        "cuda_versions": _native.cuda_versions(),
        "backends": {b: unavailable_reason(b) or "available" for b in BACKENDS},
    }


def _cmd_info(args: argparse.Namespace) -> int:
    from introspect import _native

    report = build_info()
    if write_json_output(args.json, report) and args.json == "-":
        return 0
    print(f"introspect {report['introspect']}  (torch {report['torch']})")
    build = report["native_build"]
    if build:
        cuda = f"yes ({build['cuda_archs']}: {build['cuda_kernels']})" if build["cuda"] else "no"
        print(f"native extension: {build['compiler']}; CUDA kernels: {cuda}")
        versions = report["cuda_versions"]
        if versions:
            driver = versions["driver"]
            print(
                f"CUDA runtime compiled in: {_native.cuda_version_str(versions['runtime'])}; "
                + (
                    f"driver: CUDA {_native.cuda_version_str(driver)}"
                    if driver
                    else "no NVIDIA driver found"
                )
            )
    else:
        print(f"native extension: not loaded ({report['native_reason']})")
    print("backends:")
    for name, state in report["backends"].items():
        print(f"  {name:<10} {state}")
    return 0


def add_info_parser(sub) -> None:
    info = sub.add_parser(
        "info",
        help="show the build, the backends this machine can run, and why others cannot",
        description="Show the native build and which op backends are available here.",
    )
    add_json_argument(info, "the build and backend report")
    info.set_defaults(func=_cmd_info)
