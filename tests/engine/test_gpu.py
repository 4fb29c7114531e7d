"""The engine and `introspect extract` on a CUDA GPU against plain transformers forwards on the
same GPU: float32 in every layout and attention, and the reduced precisions held to the
project's rule, at most twice the error PyTorch itself makes in that precision against float32.

Every test is marked ``cuda`` (skipped without a GPU). ``DEVICE`` can point the same checks at
another device (``INTROSPECT_TEST_DEVICE=cpu`` runs them on the CPU, where paired attention
runs its reference backend), which is how they are checked on a machine without a GPU.
"""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from test_engine import _pairs, _system_pairs
from tiny import tiny_llama, tiny_tokenizer

from introspect.behaviour import encode, measure
from introspect.engine import ExtractConfig, extract_pairs, precision

pytestmark = pytest.mark.cuda
DEVICE = os.environ.get("INTROSPECT_TEST_DEVICE", "cuda")

# layout and attention of the packed rows: the trie with the dense mask, the trie with the
# paired-attention op (no dense mask), and every sequence on its own.
PATHS = {
    "tree+mask": {"layout": "tree", "attention": "mask"},
    "tree+paired": {"layout": "tree", "attention": "paired"},
    "paths": {"layout": "paths"},
}
LAYER = 1  # not the last layer: its output_hidden_states entry is after the final norm


def _model():
    return tiny_llama(seed=2, layers=3, hidden=64).to(DEVICE)


def _all_pairs():
    return _system_pairs(6) + _pairs(6)


def _engine(model, pairs, *, autocast=None, **cfg):
    config = ExtractConfig(layers=(LAYER,), positions=("last",), batch_tokens=96, **cfg)
    res = list(extract_pairs(model, tiny_tokenizer(), pairs, config, autocast=autocast))
    assert [i for r in res for i in r.ids] == [p.id for p in pairs]
    delta = np.concatenate([r.f_mod - r.f_x for r in res])
    f_x = np.concatenate([r.f_x for r in res])
    hx = np.concatenate([r.hidden[(LAYER, "last", "x")] for r in res])
    hm = np.concatenate([r.hidden[(LAYER, "last", "mod")] for r in res])
    return f_x, delta, hx, hm


@torch.no_grad()
def _plain(model, pairs, *, autocast=None):
    """f(x), Δ and the layer's last-token hidden states from plain forwards, one sequence at a
    time (``autocast``: the same products in that dtype, as a user's forward would run)."""
    tok = tiny_tokenizer()
    ctx = (
        torch.autocast(torch.device(DEVICE).type, dtype=autocast)
        if autocast is not None
        else torch.autocast(torch.device(DEVICE).type, enabled=False)
    )
    with ctx:
        ref = measure(model, tok, pairs, batch_size=1)
        hx, hm = [], []
        for p in pairs:
            for side, out in ((p.x, hx), (p.x_mod, hm)):
                ids = torch.tensor([encode(tok, side, p.choices).prompt_ids], device=DEVICE)
                states = model(input_ids=ids, output_hidden_states=True).hidden_states
                out.append(states[LAYER + 1][0, -1].float().cpu().numpy())
    return np.asarray(ref.f_x), np.asarray(ref.delta), np.stack(hx), np.stack(hm)


@pytest.mark.parametrize("path", sorted(PATHS))
def test_engine_float32_matches_plain_forwards(path):
    model, pairs = _model(), _all_pairs()
    want = _plain(model, pairs)
    got = _engine(model, pairs, **PATHS[path])
    for name, g, w in zip(("f_x", "delta", "h(x)", "h(x')"), got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4, err_msg=f"{path}: {name}")


def _max_err(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


def _rel_err(a, b) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize("mode", ["autocast-bf16", "bfloat16"])
def test_engine_reduced_precision_within_twice_torchs_own_error(mode, path):
    model, pairs = _model(), _all_pairs()
    exact = _plain(model, pairs)
    if mode == "bfloat16":
        low_model, autocast = copy.deepcopy(model).to(torch.bfloat16), None
    else:
        low_model, autocast = model, precision.autocast_dtype(mode)
    torch_low = _plain(low_model, pairs, autocast=autocast)
    got = _engine(low_model, pairs, autocast=autocast, **PATHS[path])
    # Δ: the engine's error against float32 at most twice PyTorch's own (plus a floor for
    # values that PyTorch happens to round exactly).
    floor = 2**-8 * float(np.abs(exact[1]).max() + 1e-3)
    err, own = _max_err(got[1], exact[1]), _max_err(torch_low[1], exact[1])
    assert err <= 2 * own + floor, (mode, path, err, own)
    for k in (2, 3):  # hidden states
        err, own = _rel_err(got[k], exact[k]), _rel_err(torch_low[k], exact[k])
        assert err <= 2 * own + 2**-8, (mode, path, k, err, own)


@pytest.mark.parametrize("mode", ["autocast-bf16", "bfloat16"])
def test_measured_fidelity_on_the_gpu_is_what_the_engine_does(mode):
    """The fidelity a run records for a reduced precision (the engine against its own float32
    on the first pairs) agrees with the error measured here, and is held to the same rule."""
    model, pairs = _model(), _all_pairs()
    config = ExtractConfig(layers=(LAYER,), batch_tokens=96)
    fid = precision.measure_fidelity(model, tiny_tokenizer(), pairs, config, mode)
    assert next(model.parameters()).dtype is torch.float32  # the model is left as it was
    exact = _engine(model, pairs)
    if mode == "bfloat16":
        low = _engine(copy.deepcopy(model).to(torch.bfloat16), pairs)
    else:
        low = _engine(model, pairs, autocast=precision.autocast_dtype(mode))
    assert fid["max_abs_error"] == pytest.approx(_max_err(low[1], exact[1]), rel=1e-6, abs=1e-9)
    assert fid["pairs"] == len(pairs) and fid["mode"] == mode
    assert 0 < fid["max_abs_error"] < 0.5 and 0 < fid["hidden_max_rel_error"] < 0.1


def test_extract_command_on_the_gpu_matches_plain_forwards(tmp_path):
    import json

    from introspect import open_run
    from introspect.cli import main

    model_dir = tmp_path / "tiny"
    tiny_llama(seed=2, layers=3, hidden=64).save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    pairs = _all_pairs()
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(p.to_json()) + "\n" for p in pairs))
    for attention in ("auto", "mask"):
        out = tmp_path / f"run-{attention}"
        argv = ["extract", "--model", str(model_dir), "--pairs", str(tmp_path / "pairs.jsonl"),
                "--out", str(out), "--layers", str(LAYER), "--device", DEVICE,
                "--attention", attention, "--batch-tokens", "96"]  # fmt: skip
        assert main(argv) == 0
        run = open_run(out)
        want = _plain(_model(), pairs)
        assert run.ids == [p.id for p in pairs]
        np.testing.assert_allclose(run.f_x, want[0], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(run.delta, want[1], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(run.hidden(LAYER, "x"), want[2], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(run.hidden(LAYER, "mod"), want[3], rtol=1e-4, atol=1e-4)
