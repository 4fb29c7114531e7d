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
    for name in ("linear", "linear_onednn"):  # the op's public function, or oneDNN directly
        real_linear = getattr(engine_fused, name)

        def linear_spy(*args, _real=real_linear, **kwargs):
            calls["linear"] = calls.get("linear", 0) + 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(engine_fused, name, linear_spy)
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


@pytest.mark.skipif("onednn" not in available_backends("linear"), reason="oneDNN linear")
def test_packed_weights_live_one_extraction(monkeypatch):
    """Weights packed once per extraction (not once per batch), and never reused by a later
    extraction: a change made through ``.data`` bumps no version counter, yet the next run
    sees it."""
    model, tok = _llama(), tiny_tokenizer()
    pairs = _pairs(6)
    packs = []
    real_pack = engine_fused.pack_linear_weight

    def pack_spy(weight):
        packs.append(weight)
        return real_pack(weight)

    monkeypatch.setattr(engine_fused, "pack_linear_weight", pack_spy)
    first = _run(model, tok, pairs, batch_tokens=48)
    linears = len(fused_plan(model).linears)
    assert len(packs) == linears  # several batches, one packing
    assert not engine_fused._SCOPES  # nothing kept once the run ends

    proj = model.model.layers[1].mlp.down_proj.weight
    version = proj._version
    with torch.no_grad():
        proj.data.mul_(3.0)  # invisible to the version counter
    assert proj._version == version
    second = _run(model, tok, pairs, batch_tokens=48)
    unfused = _run(model, tok, pairs, batch_tokens=48, fused=False)
    assert not np.allclose(second["f_x"], first["f_x"], atol=1e-4)  # the change is seen
    np.testing.assert_allclose(second["f_x"], unfused["f_x"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(second["f_mod"], unfused["f_mod"], rtol=1e-5, atol=1e-6)


@pytest.mark.skipif("onednn" not in available_backends("linear"), reason="oneDNN linear")
def test_packing_scope_repacks_a_weight_changed_in_place():
    model = _llama()
    ids = torch.tensor([[2, 5, 9, 14, 3, 7, 21, 30]])
    proj = model.model.layers[0].self_attn.q_proj.weight
    with torch.inference_mode(), engine_fused.packing_scope(model):
        with fused_kernels(model):
            model(input_ids=ids)
        store = engine_fused._SCOPES[model][1]
        packed = store[id(model.model.layers[0].self_attn.q_proj)]
        with engine_fused.packing_scope(model):  # nested: the same copies
            assert engine_fused._SCOPES[model][1] is store
        proj.mul_(0.5)  # bumps the version: the copy is remade at the next call
        with fused_kernels(model):
            inside = model(input_ids=ids).logits
        assert store[id(model.model.layers[0].self_attn.q_proj)] is not packed
        plain = model(input_ids=ids).logits
    assert not engine_fused._SCOPES
    np.testing.assert_allclose(inside, plain, rtol=1e-5, atol=1e-5)
