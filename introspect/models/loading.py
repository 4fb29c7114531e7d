"""Loading a causal LM and its tokenizer as one :class:`LoadedModel`: from an alias, a local
directory, a ``.gguf`` file, a hub id, or a model object already in memory."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from introspect.errors import UsageError
from introspect.models.aliases import ALIASES, _locate_alias
from introspect.models.errors import ModelLoadError, _first_line, _require_transformers
from introspect.models.gguf_cache import (
    _cached_conversion,
    _cached_weights_hash,
    _gguf_file_source,
    _GGUFSource,
)
from introspect.models.weights import _weight_files, weights_sha256, weights_sha256_of

if TYPE_CHECKING:
    import torch


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


# --------------------------------------------------------------------------------------------
# Dtype and device


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
    """A floating-point ``torch.dtype`` from a dtype, its name or a short alias (``bf16``)."""
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
    raise UsageError(f"unsupported dtype {dtype!r}; use e.g. torch.float32, 'bfloat16', 'float16'")


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
        raise UsageError(f"unknown device {device!r}: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {device!r} asked for, but no CUDA GPU is visible here")
    return name


# --------------------------------------------------------------------------------------------
# Building a LoadedModel


def _shape_of(model: Any) -> tuple[int, int, int | None]:
    """Layers, hidden size and context length from the model's (text) config."""
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


def _finish(
    model: Any,
    tokenizer: Any,
    *,
    model_id: str,
    source: Path | str,
    weights_hash: str,
    cache_path: Path | None = None,
) -> LoadedModel:
    """The :class:`LoadedModel` of a loaded model, its shape read from its config."""
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
# Loading from a directory, a GGUF source or the hub


def _read_pretrained(
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


def _load_from_dir(
    model_id: str, directory: Path, dtype: torch.dtype, device: Any, trust_remote_code: bool
) -> LoadedModel:
    """A model directory (a local one, or a hub snapshot), hashed from its safetensors files."""
    model, tokenizer = _read_pretrained(directory, dtype, device, trust_remote_code)
    return _finish(
        model,
        tokenizer,
        model_id=model_id,
        source=directory,
        weights_hash=weights_sha256(directory),
    )


def _load_from_gguf(
    model_id: str, src: _GGUFSource, dtype: torch.dtype, device: Any, cache_dir: Any
) -> LoadedModel:
    """A GGUF model, read from its cached conversion (converted first if need be)."""
    dest, manifest = _cached_conversion(src, cache_dir)
    model, tokenizer = _read_pretrained(dest, dtype, device, trust_remote_code=False)
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


def _load_from_hub(
    repo_id: str, dtype: torch.dtype, device: Any, trust_remote_code: bool
) -> LoadedModel:
    """A Hugging Face hub id, downloaded (or found in the hub's own cache) and loaded."""
    try:
        _require_transformers()
        directory = _download_from_hub(repo_id, trust_remote_code)
    except ImportError:
        raise
    except Exception as e:
        raise ModelLoadError(
            f"could not load model {repo_id!r}: it is not an alias ({', '.join(ALIASES)}) nor "
            f"an existing directory or .gguf file, and fetching it as a Hugging Face hub id "
            f"failed ({_first_line(e)}). Without access to the hub, use an alias or a local path."
        ) from e
    return _load_from_dir(repo_id, directory, dtype, device, trust_remote_code)


# --------------------------------------------------------------------------------------------
# What a model name means


def _looks_like_path(spec: str) -> bool:
    return (
        spec.startswith(("/", ".", "~"))
        or "\\" in spec
        or spec.lower().endswith((".gguf", ".safetensors", ".json"))
        or spec.count("/") > 1
        or not re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", spec)
    )


def _resolve_spec(spec: str) -> _GGUFSource | Path | None:
    """What a model name stands for, in the order tried: an alias's GGUF source, a model
    directory (resolved), a ``.gguf`` file's source, or None for a hub id. Raises
    :class:`ModelLoadError` for a path that exists but is not a model, or does not exist."""
    key = spec.lower()
    if key in ALIASES:
        return _locate_alias(key)
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"{path} is a directory without config.json; expected a saved model directory "
                "(config.json, *.safetensors and tokenizer files)"
            )
        return path.resolve()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelLoadError(
                f"{path} is a file but not a .gguf; give a .gguf file or a model directory"
            )
        return _gguf_file_source(path)
    if _looks_like_path(spec):
        raise ModelLoadError(
            f"model {spec!r} not found: no such file or directory, and it is not an alias "
            f"({', '.join(ALIASES)})"
        )
    return None


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

    >>> lm = load_model("smollm2-135m")  # doctest: +SKIP
    >>> lm.n_layers, lm.hidden_size, lm.weights_hash[:12]  # doctest: +SKIP
    >>> mine = load_model(model, tokenizer=tok)  # an object you hold: wrapped, not copied
    """
    if isinstance(model, LoadedModel):
        return model if tokenizer is None else dataclasses.replace(model, tokenizer=tokenizer)
    if not isinstance(model, (str, os.PathLike)):
        return wrap_model(model, tokenizer)
    spec = os.fspath(model).strip()
    if not spec:
        raise ModelLoadError("no model given: name an alias, a directory, a .gguf file or a hub id")
    torch_dtype = _resolve_dtype(dtype)
    source = _resolve_spec(spec)
    if isinstance(source, _GGUFSource):
        return _load_from_gguf(spec, source, torch_dtype, device, cache_dir)
    if isinstance(source, Path):
        return _load_from_dir(spec, source, torch_dtype, device, trust_remote_code)
    return _load_from_hub(spec, torch_dtype, device, trust_remote_code)
