"""Forward compatibility with transformers: no deprecated argument on any path the package
runs, the cache argument found by feature detection, and the declared version bounds."""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from tiny import tiny_llama, tiny_tokenizer

import introspect
from introspect.engine.cache import cache_argument, cache_kwargs, output_cache

ROOT = Path(__file__).resolve().parents[1]


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def no_deprecations():
    """FutureWarning and DeprecationWarning raised as errors, and transformers' own
    ``logger.warning_once`` deprecation notes (its once-cache cleared first) collected and
    refused at the end."""
    import transformers.utils.logging as tf_logging

    once = getattr(logging.Logger, "warning_once", None)
    if hasattr(once, "cache_clear"):
        once.cache_clear()
    handler = _Records()
    logger = tf_logging.get_logger("transformers")
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)
            warnings.simplefilter("error", DeprecationWarning)
            yield
    finally:
        logger.removeHandler(handler)
    deprecated = [m for m in handler.messages if "deprecat" in m.lower()]
    assert not deprecated, deprecated


def test_extraction_uses_no_deprecated_transformers_argument(tmp_path):
    from introspect.data.tasks import generate

    model, tok = tiny_llama(), tiny_tokenizer()
    pairs = generate("sycophancy", 4, seed=0)
    with no_deprecations():
        run = introspect.extract(
            model, tok, pairs, tmp_path / "run", layers=[1], positions="last,span"
        )
    assert run.ids == [p.id for p in pairs]
    assert torch.isfinite(torch.as_tensor(run.delta)).all()
    assert run.manifest["config"]["prefix_tokens"] > 0  # the cached prefix was passed


def _plain_greedy(model, prompt: list[int], steps: int) -> list[int]:
    ids = list(prompt)
    for _ in range(steps):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits
        ids.append(int(logits[0, -1].argmax()))
    return ids[len(prompt) :]


def test_verbal_decoding_uses_no_deprecated_transformers_argument():
    from introspect.explain.verbal.decoding import greedy, score_candidates

    model, tok = tiny_llama(seed=3), tiny_tokenizer()
    prompts = [tok("what is 1 + 2 ?")["input_ids"], tok("hello world")["input_ids"]]
    cands = [[("a", [14, 15]), ("b", [16])], [("a", [17, 18, 19])]]
    pad = tok.pad_token_id
    with no_deprecations(), torch.no_grad():
        new = greedy(model, prompts, pad, eos=[], max_new_tokens=3)
        scores = score_candidates(model, prompts, cands, pad)
    # The cached decoding against plain forwards without a cache.
    assert new == [_plain_greedy(model, p, 3) for p in prompts]
    for prompt, cand, got in zip(prompts, cands, scores, strict=True):
        for label, sent in cand:
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([prompt + sent[:-1]])).logits[0]
            logp = torch.log_softmax(logits.double(), -1)
            want = sum(float(logp[len(prompt) - 1 + j, t]) for j, t in enumerate(sent))
            assert got[label] == pytest.approx(want, abs=1e-6)


# ------------------------------------------------------------------ the cache argument


class _Old(torch.nn.Module):
    def forward(self, input_ids=None, past_key_values=None, use_cache=None):
        return input_ids


class _New(torch.nn.Module):
    def forward(self, input_ids=None, cache=None, use_cache=None):
        return input_ids


class _KwargsOnly(torch.nn.Module):
    def forward(self, **kwargs):
        return kwargs


def test_cache_argument_follows_the_forward_signature():
    assert cache_argument(_Old()) == "past_key_values"
    assert cache_argument(_New()) == "cache"
    assert cache_argument(_KwargsOnly()) == "past_key_values"
    assert cache_kwargs(_New(), "c") == {"cache": "c"}
    model = tiny_llama()
    # Whichever name this transformers takes, it is one its models accept without warning.
    name = cache_argument(model.model)
    import inspect

    assert name in inspect.signature(type(model.model).forward).parameters


def test_output_cache_reads_the_declared_field():
    @dataclass
    class NewOut:
        cache: str = "new"

    @dataclass
    class OldOut:
        past_key_values: str = "old"

    assert output_cache(NewOut()) == "new"
    assert output_cache(OldOut()) == "old"


# ------------------------------------------------------------------ declared bounds


def _declared_bounds() -> tuple[str, str]:
    text = (ROOT / "pyproject.toml").read_text()
    m = re.search(r'"transformers>=([0-9.]+),<([0-9.]+)"', text)
    assert m, "pyproject.toml must declare transformers>=X,<Y"
    return m.group(1), m.group(2)


def _version(v: str) -> tuple[int, int, int]:
    parts = [int(p) for p in re.findall(r"\d+", v)[:3]]
    return (*parts, 0, 0, 0)[:3]


def test_declared_transformers_bounds_match_the_compat_targets():
    lo, hi = _declared_bounds()
    make = (ROOT / "Makefile").read_text()
    oldest = re.search(r"^TF_OLDEST \?= (\S+)", make, re.M).group(1)
    newest = re.search(r"^TF_NEWEST \?= (\S+)", make, re.M).group(1)
    # make test-compat runs the oldest declared and the newest tested release.
    assert _version(oldest) == _version(lo)
    assert _version(lo) <= _version(newest) < _version(hi)


def test_installed_transformers_is_within_the_declared_bounds():
    import transformers

    lo, hi = _declared_bounds()
    assert _version(lo) <= _version(transformers.__version__) < _version(hi)
