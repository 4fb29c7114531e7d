"""Import safety: `import introspect` never fails and never initialises CUDA."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import textwrap


def _python(code: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, **(env_extra or {})}
    env.pop("INTROSPECT_BACKEND", None)
    # Run outside the source tree so the installed package (with its extension) is imported.
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=tempfile.gettempdir(),
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip


def test_import_does_not_initialise_cuda_or_load_torch():
    res = _python(
        """
        import sys
        import introspect
        assert "torch" not in sys.modules, "import introspect pulled in torch"
        import torch
        import introspect.ops
        introspect.ops.available_backends()
        assert not torch.cuda.is_initialized(), "CUDA was initialised"
        print("ok")
        """
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"


def test_import_without_the_extension_warns_and_falls_back():
    res = _python(
        """
        import sys
        sys.modules["introspect._C"] = None  # makes `from introspect import _C` raise ImportError
        import torch, introspect
        from introspect.ops import available_backends, delta_probe, unavailable_reason
        assert "cpp" not in available_backends(), available_backends()
        assert "reference" in available_backends()
        out = delta_probe(torch.randn(4, 3), torch.randn(2, 3))
        assert out.pred.shape == (4, 2)
        print(unavailable_reason("cpp"))
        """
    )
    assert res.returncode == 0, res.stderr
    assert "introspect._C is not importable" in res.stderr
    assert "'cpp' and 'cuda' backends are disabled" in res.stderr


def test_mismatched_extension_is_refused_with_a_clear_warning():
    res = _python(
        """
        import introspect._C as C
        C.__version__ = "0.0.1-other"
        from introspect.ops import available_backends
        assert "cpp" not in available_backends()
        print("ok")
        """
    )
    if "No module named 'introspect._C'" in res.stderr:
        import pytest

        pytest.skip("extension not built")
    assert res.returncode == 0, res.stderr
    assert "was built for introspect 0.0.1-other" in res.stderr
    assert "native backends are disabled" in res.stderr


def test_import_without_triton():
    res = _python(
        """
        import sys
        sys.modules["triton"] = None
        import torch, introspect
        from introspect.ops import available_backends, unavailable_reason
        assert "triton" not in available_backends()
        print(unavailable_reason("triton"))
        """,
        {"TRITON_INTERPRET": "1"},
    )
    assert res.returncode == 0, res.stderr
    assert "triton" in res.stdout


def test_the_command_line_and_its_help_import_no_torch():
    res = _python(
        """
        import sys
        from introspect.cli import build_parser, main
        build_parser()
        try:
            main(["--help"])
        except SystemExit:
            pass
        assert "torch" not in sys.modules, "building the command line pulled in torch"
        assert "transformers" not in sys.modules
        print("ok")
        """
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().endswith("ok")


def test_missing_torch_gives_a_clear_error():
    res = _python(
        """
        import sys
        sys.modules["torch"] = None
        import introspect  # the package itself imports without torch
        try:
            import introspect.ops
        except ImportError as exc:
            print(exc)
        """
    )
    assert res.returncode == 0, res.stderr
    assert "introspect.ops needs PyTorch" in res.stdout
