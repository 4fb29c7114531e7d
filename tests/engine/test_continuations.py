"""continuation_logprobs against one plain transformers forward per prompt and continuation, on
every architecture the engine supports; and a head carrying adapters, in extraction too."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from asserts import plain_logprob
from test_engine import MODELS, _pairs
from tiny import WORDS

from introspect.behaviour import measure
from introspect.engine import ExtractConfig, extract_pairs
from introspect.engine.continuations import continuation_logprobs


def _data(seed: int = 0):
    """Prompts of mixed lengths (some past a sliding window of 8) with 1 to 4 continuations of
    1 to 5 tokens, some sharing their first tokens."""
    rng = np.random.default_rng(seed)
    v = len(WORDS)
    prompts, conts = [], []
    for n in (3, 12, 7, 20, 1, 9):
        prompts.append(rng.integers(4, v, n).tolist())
        stem = rng.integers(4, v, 2).tolist()
        k = int(rng.integers(1, 5))
        conts.append(
            [
                stem[: int(rng.integers(0, 3))]
                + rng.integers(4, v, int(rng.integers(1, 4))).tolist()
                for _ in range(k)
            ]
        )
    return prompts, conts


@pytest.mark.parametrize("arch", sorted(MODELS))
@pytest.mark.parametrize("batch_tokens", [16, 4096])
@pytest.mark.parametrize("attention", ["auto", "mask"])
def test_equals_plain_forwards(arch, batch_tokens, attention):
    model = MODELS[arch]()
    prompts, conts = _data()
    got = continuation_logprobs(
        model, prompts, conts, batch_tokens=batch_tokens, row_tokens=32, attention=attention
    )
    assert len(got) == len(prompts)
    for p, cs, lp in zip(prompts, conts, got, strict=True):
        assert lp.dtype == torch.float64 and lp.shape == (len(cs),)
        want = [plain_logprob(model, p, c) for c in cs]
        np.testing.assert_allclose(lp.numpy(), want, rtol=0, atol=1e-4)


def test_bad_input_is_refused():
    model = MODELS["llama"]()
    with pytest.raises(ValueError, match="prompt 1 has no tokens"):
        continuation_logprobs(model, [[5], []], [[[6]], [[6]]])
    with pytest.raises(ValueError, match="prompt 0: every continuation"):
        continuation_logprobs(model, [[5]], [[[6], []]])
    with pytest.raises(ValueError, match="2 continuation lists for 1 prompts"):
        continuation_logprobs(model, [[5]], [[[6]], [[7]]])


class _Adapted(torch.nn.Module):
    """A head with an extra low-rank path, as adapters add one: its ``weight`` is the base
    layer's, not what it computes."""

    def __init__(self, base: torch.nn.Linear):
        super().__init__()
        self.base = base
        torch.manual_seed(1)
        self.a = torch.nn.Parameter(torch.randn(2, base.in_features) * 0.5)
        self.b = torch.nn.Parameter(torch.randn(base.out_features, 2) * 0.5)

    @property
    def weight(self):
        return self.base.weight

    def forward(self, x):
        return self.base(x) + (x @ self.a.T) @ self.b.T


def test_a_head_with_adapters_is_run_not_read():
    from tiny import tiny_tokenizer

    model = MODELS["llama"]()
    model.lm_head = _Adapted(model.lm_head)
    prompts, conts = _data(1)
    got = continuation_logprobs(model, prompts, conts)
    for p, cs, lp in zip(prompts, conts, got, strict=True):
        np.testing.assert_allclose(lp.numpy(), [plain_logprob(model, p, c) for c in cs], atol=1e-4)
    tok, pairs = tiny_tokenizer(), _pairs()
    ref = measure(model, tok, pairs, batch_size=4)
    res = list(extract_pairs(model, tok, pairs, ExtractConfig(batch_tokens=64)))
    np.testing.assert_allclose(np.concatenate([r.f_x for r in res]), ref.f_x, atol=1e-4)
    np.testing.assert_allclose(np.concatenate([r.f_mod for r in res]), ref.f_mod, atol=1e-4)


def test_objective_logprob_equals_the_padded_forward():
    """The objective's log-probability, from packed tries, against one padded forward of every
    x followed by the objective's choice (``target_forward``)."""
    from tiny import tiny_llama, tiny_tokenizer

    from introspect.data.tasks import generate
    from introspect.training.objectives import (
        encode_pairs,
        objective_logprob,
        sft_targets,
        target_forward,
    )

    model, tok = tiny_llama(hidden=64), tiny_tokenizer()
    pairs = generate("sycophancy", 7, seed=1)
    with torch.no_grad():
        got = objective_logprob(model, tok, pairs, "anti-sycophancy")
        targets = sft_targets(pairs, "anti-sycophancy")
        want, _ = target_forward(model, encode_pairs(tok, pairs), targets)
    assert got == pytest.approx(float(want.double().mean()), abs=1e-5)
