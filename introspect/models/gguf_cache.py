"""The GGUF conversion cache: each GGUF model is converted once into float32 safetensors plus its
tokenizer, under ``<cache>/models/<name>-<first 12 hex digits of the GGUF's sha256>/``, written
to a hidden staging folder and renamed into place only when complete."""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from introspect._io import sha256_file, write_json_atomic
from introspect.models.errors import ModelLoadError, _first_line, _require_transformers
from introspect.models.weights import _combine_digests, _weight_files

logger = logging.getLogger(__name__)

_MANIFEST = "introspect-model.json"
_CACHE_FORMAT = 1
_STAGING_PREFIX = ".staging-"


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


def _gguf_file_source(path: Path) -> _GGUFSource:
    """A ``.gguf`` file as a source, its cache folder named after the file's stem."""
    path = path.resolve()
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", path.stem).strip("._") or "model"
    return _GGUFSource(name=stem[:64], origin=path, sha256=sha256_file(path), path=path)


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


# --------------------------------------------------------------------------------------------
# Manifests


def _file_record(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256_file(path)}


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
            digests[path.name] = sha256_file(path)
    return _combine_digests(digests)


def _dir_size(folder: Path) -> int:
    """The bytes of the regular files under ``folder`` (links not followed)."""
    total = 0
    for p in folder.rglob("*"):
        try:
            if p.is_file() and not p.is_symlink():
                total += p.stat().st_size
        except OSError:
            pass
    return total


# --------------------------------------------------------------------------------------------
# Staging


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


def _new_staging(dest: Path) -> Path:
    """A fresh staging folder for a conversion into ``dest``, named with this process's id (so
    that a later conversion can tell whether it was left by a process that died)."""
    models_dir = dest.parent
    models_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(models_dir, dest.name)
    staging = models_dir / f"{_STAGING_PREFIX}{dest.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    return staging


def _publish(staging: Path, dest: Path) -> None:
    """Rename a complete staging folder into place; where another process finished the same
    conversion first, its result is kept."""
    try:
        os.rename(staging, dest)
    except OSError:
        if _read_manifest(dest) is None:
            raise
        shutil.rmtree(staging, ignore_errors=True)


def _discard_entry(dest: Path) -> None:
    """Move an incomplete or outdated cache entry out of the way and remove it."""
    trash = dest.with_name(f"{_STAGING_PREFIX}{dest.name}.{os.getpid()}.old")
    try:
        os.rename(dest, trash)
    except FileNotFoundError:
        pass
    shutil.rmtree(trash, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Conversion


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


def _save_dequantized(tf: Any, src: _GGUFSource, staging: Path) -> None:
    """Load the GGUF model with transformers and save it into ``staging`` as float32
    safetensors plus its tokenizer (a chunked source is first assembled inside ``staging``)."""
    import torch

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


def _conversion_manifest(
    tf: Any, src: _GGUFSource, weights: Mapping[str, Mapping[str, Any]], elapsed: float
) -> dict[str, Any]:
    """What a cache entry records: its source, the versions that converted it, and the size,
    modification time and sha256 of each weights file."""
    import torch

    return {
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


def _convert_gguf(src: _GGUFSource, dest: Path) -> None:
    """Convert a GGUF model to safetensors + tokenizer at ``dest``, atomically."""
    tf = _require_transformers(gguf=True)
    staging = _new_staging(dest)
    logger.info(
        "converting %s (GGUF) to safetensors in %s; this happens once and can take a minute",
        src.origin,
        dest,
    )
    t0 = time.perf_counter()
    try:
        _save_dequantized(tf, src, staging)
        weights = {p.name: _file_record(p) for p in _weight_files(staging)}
        if not weights:
            raise ModelLoadError(f"converting {src.origin} wrote no safetensors files")
        manifest = _conversion_manifest(tf, src, weights, time.perf_counter() - t0)
        write_json_atomic(staging / _MANIFEST, manifest, indent=2)
        _publish(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("converted %s in %.1f s", src.origin, time.perf_counter() - t0)


def _cached_conversion(
    src: _GGUFSource, cache_dir: str | os.PathLike[str] | None
) -> tuple[Path, dict[str, Any]]:
    """The cache folder of ``src`` and its manifest, converting the GGUF first where the cache
    has no complete entry for it."""
    dest = resolve_cache_dir(cache_dir) / "models" / src.folder
    manifest = _read_manifest(dest)
    if manifest is not None:
        return dest, manifest
    if dest.exists():
        logger.warning("%s is an incomplete or outdated cache entry; converting again", dest)
        _discard_entry(dest)
    _convert_gguf(src, dest)
    manifest = _read_manifest(dest)
    if manifest is None:
        raise ModelLoadError(f"the conversion of {src.origin} left no usable cache at {dest}")
    return dest, manifest
