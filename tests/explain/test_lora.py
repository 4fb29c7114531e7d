"""Low-rank adapters: exact identity at init, merge == unmerged, injection, files."""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_llama
from torch import nn

from introspect.explain.lora import (
    LoRALinear,
    adapter_disabled,
    inject_lora,
    load_lora,
    lora_layers,
    lora_state_dict,
    merge_lora,
    read_lora_file,
    remove_lora,
    save_lora,
    set_lora_state_dict,
    unmerge_lora,
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _randomize_b(model_or_layer, seed=1):
    g = torch.Generator().manual_seed(seed)
    layers = (
        [model_or_layer]
        if isinstance(model_or_layer, LoRALinear)
        else lora_layers(model_or_layer).values()
    )
    with torch.no_grad():
        for layer in layers:
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g))


@pytest.mark.parametrize("bias", [True, False])
def test_wrapper_at_init_equals_the_base_linear_exactly(bias):
    torch.manual_seed(0)
    lin = nn.Linear(12, 7, bias=bias)
    x = torch.randn(5, 3, 12)
    want = lin(x)
    layer = LoRALinear(lin, rank=4, alpha=8.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(layer(x), want)
    assert layer.scaling == 2.0
    assert not layer.base.weight.requires_grad
    assert layer.lora_A.requires_grad and layer.lora_B.requires_grad
    assert torch.count_nonzero(layer.lora_A) > 0 and torch.count_nonzero(layer.lora_B) == 0


def test_adapter_path_is_scaled_low_rank_update():
    torch.manual_seed(0)
    lin = nn.Linear(6, 4)
    layer = LoRALinear(lin, rank=2, alpha=3.0)
    _randomize_b(layer)
    x = torch.randn(3, 6)
    w = lin.weight + 1.5 * layer.lora_B @ layer.lora_A
    torch.testing.assert_close(layer(x), x @ w.T + lin.bias, rtol=1e-5, atol=1e-6)


def test_merge_equals_unmerged_forward_and_unmerge_restores():
    torch.manual_seed(0)
    lin = nn.Linear(16, 8)
    w0 = lin.weight.detach().clone()
    layer = LoRALinear(lin, rank=4, alpha=4.0)
    _randomize_b(layer)
    x = torch.randn(10, 16)
    unmerged = layer(x)
    assert not torch.allclose(unmerged, lin(x))  # the adapter does something
    layer.merge()
    assert layer.merged
    torch.testing.assert_close(layer(x), unmerged, rtol=1e-5, atol=1e-5)
    layer.merge()  # idempotent
    torch.testing.assert_close(layer(x), unmerged, rtol=1e-5, atol=1e-5)
    layer.unmerge()
    torch.testing.assert_close(lin.weight, w0, rtol=0, atol=1e-6)
    torch.testing.assert_close(layer(x), unmerged, rtol=1e-5, atol=1e-5)


def test_gradients_reach_only_the_adapter():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(5, 3), rank=2, alpha=2.0)
    layer(torch.randn(4, 5)).pow(2).sum().backward()
    assert layer.base.weight.grad is None
    assert layer.lora_B.grad is not None and torch.count_nonzero(layer.lora_B.grad) > 0
    assert torch.count_nonzero(layer.lora_A.grad) == 0  # B = 0 at init


def test_bad_arguments():
    with pytest.raises(ValueError, match="rank"):
        LoRALinear(nn.Linear(2, 2), rank=0, alpha=1.0)
    with pytest.raises(ValueError, match="alpha"):
        LoRALinear(nn.Linear(2, 2), rank=1, alpha=0.0)
    with pytest.raises(TypeError, match=r"nn\.Linear"):
        LoRALinear(nn.Conv1d(2, 2, 1), rank=1, alpha=1.0)


@pytest.fixture
def llama_and_ids():
    model = tiny_llama(seed=3)
    ids = torch.randint(
        0, model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0)
    )
    return model, ids


def test_inject_into_llama_is_exact_and_freezes_the_rest(llama_and_ids):
    model, ids = llama_and_ids
    with torch.no_grad():
        before = model(input_ids=ids).logits
    names = inject_lora(model, ("q_proj", "v_proj"), rank=4, alpha=8.0, seed=0)
    assert names == sorted(
        f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")
    )
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, before)
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable == sorted(f"{n}.lora_{k}" for n in names for k in "AB")

    _randomize_b(model)
    with torch.no_grad():
        adapted = model(input_ids=ids).logits
        assert not torch.allclose(adapted, before)
        with adapter_disabled(model):
            assert torch.equal(model(input_ids=ids).logits, before)
        merge_lora(model)
        torch.testing.assert_close(model(input_ids=ids).logits, adapted, rtol=1e-4, atol=1e-5)
        with adapter_disabled(model):  # takes merged adapters out, and back in afterwards
            torch.testing.assert_close(model(input_ids=ids).logits, before, rtol=1e-4, atol=1e-5)
        assert all(layer.merged for layer in lora_layers(model).values())
        unmerge_lora(model)
        torch.testing.assert_close(model(input_ids=ids).logits, adapted, rtol=1e-4, atol=1e-5)
    assert remove_lora(model) == names
    assert not lora_layers(model)
    assert isinstance(model.model.layers[0].self_attn.q_proj, nn.Linear)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, before, rtol=1e-5, atol=1e-6)


def test_inject_is_seeded_and_refuses_unknown_targets(llama_and_ids):
    model, _ = llama_and_ids
    other = tiny_llama(seed=3)
    inject_lora(model, ("q_proj",), rank=2, alpha=2.0, seed=7)
    inject_lora(other, ("q_proj",), rank=2, alpha=2.0, seed=7)
    a, b = lora_state_dict(model), lora_state_dict(other)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="already carries"):
        inject_lora(model, ("v_proj",), rank=2, alpha=2.0)
    with pytest.raises(ValueError, match=r"no nn\.Linear module matches.*q_proj"):
        inject_lora(tiny_llama(), ("qkv",), rank=2, alpha=2.0)


def test_save_and_load_only_adapter_tensors(tmp_path, llama_and_ids):
    model, ids = llama_and_ids
    inject_lora(model, ("q_proj", "down_proj"), rank=3, alpha=6.0, seed=0)
    _randomize_b(model)
    with torch.no_grad():
        want = model(input_ids=ids).logits
    path = save_lora(model, tmp_path / "adapter.safetensors", {"note": "x"})
    tensors, meta = read_lora_file(path)
    assert all(".lora_A" in k or ".lora_B" in k for k in tensors) and len(tensors) == 8
    assert meta["rank"] == "3" and float(meta["alpha"]) == 6.0 and meta["note"] == "x"

    fresh = tiny_llama(seed=3)
    load_lora(fresh, path)
    with torch.no_grad():
        assert torch.equal(fresh(input_ids=ids).logits, want)

    bad = dict(tensors)
    bad.pop(next(iter(bad)))
    with pytest.raises(ValueError, match="missing"):
        set_lora_state_dict(fresh, bad)
    wrong = {k: torch.zeros(v.shape[0] + 1, v.shape[1]) for k, v in tensors.items()}
    with pytest.raises(ValueError, match="shape"):
        set_lora_state_dict(fresh, wrong)
    with pytest.raises(FileNotFoundError):
        read_lora_file(tmp_path / "none.safetensors")
