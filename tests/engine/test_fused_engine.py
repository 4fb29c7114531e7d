"""The fused CPU kernels in a Llama-family forward: which models get them, results against the
model's own modules and a plain forward, and restoration of the model on exit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from test_engine import _pairs, _run, _system_pairs
from tiny import tiny_gemma3, tiny_gpt2, tiny_llama, tiny_qwen2, tiny_tokenizer

from introspect.behaviour import encode, measure
from introspect.engine import fused as engine_fused
from introspect.engine.forward import decoder_layers
from introspect.engine.fused import fused_kernels, fused_plan
from introspect.ops import available_backends, fused

pytestmark = pytest.mark.skipif(
    "cpp" not in available_backends("rms_norm"), reason="introspect._C with the fused kernels"
)


def _llama():
    return tiny_llama(layers=3, hidden=64)  # head dim 16, 4 query and 2 key-value heads


def _count_calls(monkeypatch) -> dict:
    """Counts the cpp kernels' and the packed linear layers' calls (a context that silently
    swapped nothing runs none)."""
    calls = {}
    real_linear = engine_fused.linear

    def linear_spy(*args, **kwargs):
        calls["linear"] = calls.get("linear", 0) + 1
        return real_linear(*args, **kwargs)

    monkeypatch.setattr(engine_fused, "linear", linear_spy)
    for name in ("_rms_op", "_silu_op", "_rope_op"):
        real = getattr(fused, name)

        def spy(*args, _real=real, _name=name):
            calls[_name] = calls.get(_name, 0) + 1
            return _real(*args)

        monkeypatch.setattr(fused, name, spy)
    return calls


def test_plan_takes_llama_family_models_only():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        plan = fused_plan(_llama())  # probes on one thread, then the count is restored
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert plan is not None
    assert len(plan.norms) == 2 * 3 + 1 and len(plan.mlps) == 3
    if "onednn" in available_backends("linear"):  # q, k, v, o, gate, up, down per layer
        assert len(plan.linears) == 7 * 3
    assert [m.__name__ for m in plan.rotary] == ["transformers.models.llama.modeling_llama"]
    qwen = fused_plan(tiny_qwen2())
    assert qwen is not None and len(qwen.mlps) == 2 and len(qwen.rotary) == 1
    assert fused_plan(tiny_gemma3()) is None  # its norm scales by 1 + weight
    assert fused_plan(tiny_gpt2()) is None  # LayerNorm, GELU MLP, no rotary


def test_plan_follows_replaced_modules():
    model = _llama()
    assert len(fused_plan(model).mlps) == 3
    model.model.layers[1].mlp.act_fn = torch.nn.GELU()  # no longer silu(gate) * up
    plan = fused_plan(model)
    assert len(plan.mlps) == 2 and model.model.layers[1].mlp not in plan.mlps
    model.model.layers[0].input_layernorm = torch.nn.LayerNorm(64)
    assert fused_plan(model) is None


@pytest.mark.parametrize("make", [_llama, tiny_qwen2], ids=["llama", "qwen2"])
def test_fused_engine_matches_unfused_and_plain_forwards(monkeypatch, make):
    model, tok = make(), tiny_tokenizer()
    pairs = _system_pairs(3) + _pairs(4)
    calls = _count_calls(monkeypatch)
    off = _run(model, tok, pairs, positions=("last", "span"), fused=False)
    assert not calls
    on = _run(model, tok, pairs, positions=("last", "span"))
    layers = len(decoder_layers(model))
    assert calls["_rms_op"] >= 2 * layers + 1 and calls["_silu_op"] >= layers
    assert calls["_rope_op"] >= layers
    if "onednn" in available_backends("linear"):
        assert calls["linear"] >= 7 * layers
    for key, value in off.items():
        if key != "unique":
            np.testing.assert_allclose(on[key], value, rtol=1e-5, atol=1e-6, err_msg=str(key))
    ref = measure(model, tok, pairs, batch_size=4)
    np.testing.assert_allclose(on["f_mod"] - on["f_x"], ref.delta, atol=1e-4)
    for i, p in enumerate(pairs):
        ids = torch.tensor([encode(tok, p.x, p.choices).prompt_ids])
        with torch.no_grad():
            hs = model(input_ids=ids, output_hidden_states=True).hidden_states
        # layer 0's output (HF reports the last layer's after the final norm)
        np.testing.assert_allclose(on[(0, "last", "x")][i], hs[1][0, -1], rtol=1e-5, atol=1e-5)


def test_context_restores_the_model():
    import transformers.models.llama.modeling_llama as modeling

    model = _llama()
    original_rope = modeling.apply_rotary_pos_emb
    ids = torch.tensor([[2, 5, 9, 14, 3, 7, 21, 30]])
    with torch.inference_mode():
        before = model(input_ids=ids).logits
        with fused_kernels(model) as on:
            assert on and modeling.apply_rotary_pos_emb is not original_rope
            inside = model(input_ids=ids).logits
        after = model(input_ids=ids).logits
        with pytest.raises(RuntimeError, match="inside"), fused_kernels(model):
            raise RuntimeError("inside")
        again = model(input_ids=ids).logits
    assert modeling.apply_rotary_pos_emb is original_rope
    assert not any("forward" in m.__dict__ for m in model.modules())
    assert torch.equal(before, after) and torch.equal(before, again)
    np.testing.assert_allclose(inside, before, rtol=1e-5, atol=1e-5)


def test_context_does_nothing_with_grad_or_when_off(monkeypatch):
    model = _llama()
    calls = _count_calls(monkeypatch)
    ids = torch.tensor([[2, 5, 9]])
    with fused_kernels(model) as on:  # grad enabled: autograd would need a backward
        assert not on
        model(input_ids=ids)
    with torch.inference_mode(), fused_kernels(model, enabled=False) as on:
        assert not on
        model(input_ids=ids)
    assert not calls
