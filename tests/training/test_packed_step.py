"""The prefix-shared training step against the separate forwards it replaces: the loss terms and
every parameter's gradient, on tiny Llama, Qwen2, Gemma 3 (a sliding window shorter than the
packed rows) and GPT-2 (absolute positions) models, and on SmolLM2."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from tiny import tiny_gemma3, tiny_gpt2, tiny_llama, tiny_qwen2, tiny_tokenizer

from introspect.cli import main
from introspect.data import write_pairs
from introspect.data.tasks import generate
from introspect.engine.packing import build_item, pack, sliding_window_mask
from introspect.training import TrainConfig
from introspect.training import packed as packed_mod
from introspect.training.trainer import Trainer

RTOL = 1e-5  # ||g_packed - g_separate||_2 <= RTOL * ||g_separate||_2, per tensor and in all

ARCHS = {
    "llama": tiny_llama,
    "qwen2": tiny_qwen2,
    "gemma3": tiny_gemma3,  # window 8, rows of ~100 positions
    "gemma3-sdpa": lambda: tiny_gemma3(attention="sdpa"),
    "gpt2": tiny_gpt2,
}

SETTINGS = {
    # The verbal explainer, the regulariser on x and x', the explainer's gradient into the model.
    "all": dict(verbal=True, w_reg=1.0, explainer_grad_to_model=True),
    "precursor": dict(verbal=True, verbal_format="precursor", w_reg=0.5),
    "no-diff": dict(difference_probe=False, w_reg=0.0, objective="pro-sycophancy"),
}


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = tmp_path_factory.mktemp("packed")
    model_dir = root / "tiny"
    tiny_llama().save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    write_pairs(root / "train.jsonl", generate("sycophancy", 12, seed=4))
    argv = ["extract", "--model", str(model_dir), "--pairs", str(root / "train.jsonl")]
    assert main([*argv, "--out", str(root / "m0"), "--layers", "1"]) == 0
    return root


def _trainer(ws, out, model, tok, **kw):
    cfg = TrainConfig(
        model="tiny",
        pairs=str(ws / "train.jsonl"),
        labels=str(ws / "m0"),
        out=str(out),
        layer=1,
        concurrent=kw.pop("concurrent", True),
        batch_size=6,
        **kw,
    )
    trainer = Trainer(cfg, model=model, tokenizer=tok, say=lambda _m: None)
    trainer.setup()
    return trainer


def _step_grads(trainer: Trainer, rows: np.ndarray, packed: bool):
    """The loss terms and the gradient of every trained parameter of one step's loss."""
    trainer.packed = packed
    trainer.opt.zero_grad(set_to_none=True)
    terms = trainer._losses(rows)
    terms["loss"].backward()
    named = dict(trainer.model.named_parameters())
    named.update(probe_w=trainer.w, probe_b=trainer.b, diff_w=trainer.w_d, diff_b=trainer.b_d)
    grads = {k: p.grad.detach().clone() for k, p in named.items() if p.grad is not None}
    return {k: float(v) for k, v in terms.items()}, grads


def _assert_same_step(trainer: Trainer, rows: np.ndarray, loose: dict | None = None) -> None:
    """The loss terms, the whole gradient (relative L2 norm over every trained parameter
    concatenated) and each parameter tensor's gradient (relative L2 norm) within ``RTOL``;
    ``loose`` names tensors with a bound of their own."""
    want_terms, want = _step_grads(trainer, rows, packed=False)
    got_terms, got = _step_grads(trainer, rows, packed=True)
    for k, v in want_terms.items():
        assert got_terms[k] == pytest.approx(v, rel=RTOL, abs=1e-7), (k, got_terms[k], v)
    assert got.keys() == want.keys()
    assert len(want) >= 4
    total = sum(float(((got[k] - g) ** 2).sum()) for k, g in want.items()) ** 0.5
    assert total <= RTOL * sum(float((g**2).sum()) for g in want.values()) ** 0.5
    for k, g in want.items():
        err = float((got[k] - g).norm())
        bound = (loose or {}).get(k, RTOL) * float(g.norm())
        assert err <= bound, f"gradient of {k} differs by {err / float(g.norm()):.3g} (relative)"


@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("arch", list(ARCHS))
def test_packed_step_equals_separate_forwards(ws, tmp_path, arch, setting):
    model = ARCHS[arch]()
    trainer = _trainer(ws, tmp_path / "run", model, tiny_tokenizer(), **SETTINGS[setting])
    assert trainer.packed, trainer.packed_off
    if arch.startswith("gemma3"):  # the window is shorter than the packed rows: it matters
        assert max(len(trainer._step_item(i).item.trie) for i in range(6)) > 8
    _assert_same_step(trainer, np.array([3, 0, 7, 7, 11, 5]))


def test_frozen_step_equals_separate_forwards(ws, tmp_path):
    trainer = _trainer(ws, tmp_path / "run", tiny_llama(), tiny_tokenizer(), concurrent=False)
    assert trainer.packed
    _assert_same_step(trainer, np.arange(6))


def test_window_mask_is_what_each_sequence_sees_alone():
    item = build_item(0, [list(range(10, 22)), [10, 11, 12, 30]], [[1], [2, 3]])
    batch = pack([item, build_item(1, [[5, 6, 7]], [[1]])], row_tokens=64)
    cut = sliding_window_mask(batch, 4)[0, 0]
    depth = batch.position_ids[0]
    for i in range(batch.input_ids.shape[1]):
        for j in range(batch.input_ids.shape[1]):
            want = bool(batch.mask[0, 0, i, j]) and int(depth[i] - depth[j]) < 4
            assert bool(cut[i, j]) == want


def test_m0_pass_and_answers_match_the_separate_pass(ws, tmp_path):
    from safetensors.torch import load_file

    docs, init = {}, {}
    for packed in (True, False):
        out = tmp_path / f"run-{packed}"
        trainer = _trainer(
            ws, out, tiny_llama(), tiny_tokenizer(), verbal=True, w_reg=1.0, packed_step=packed
        )
        assert trainer.packed == packed
        docs[packed] = json.loads((out / "verbal.json").read_text())
        init[packed] = load_file(str(out / "init.safetensors"))
    assert docs[True]["answers"] == docs[False]["answers"]
    for k, v in init[False].items():
        torch.testing.assert_close(init[True][k], v, rtol=1e-5, atol=1e-5, msg=k)


def _ignores_the_mask(module, query, key, value, attention_mask, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, query, key, value, None, is_causal=True, **kwargs)


def test_an_attention_that_ignores_the_mask_falls_back(ws, tmp_path, caplog):
    from transformers import AttentionInterface

    AttentionInterface.register("causal_only", _ignores_the_mask)
    model = tiny_llama()
    model.config._attn_implementation = "causal_only"
    said = []
    cfg = TrainConfig(
        model="tiny", pairs=str(ws / "train.jsonl"), labels=str(ws / "m0"),
        out=str(tmp_path / "run"), layer=1, concurrent=True, steps=1, batch_size=4,
    )  # fmt: skip
    with caplog.at_level(logging.WARNING):
        doc = Trainer(cfg, model=model, tokenizer=tiny_tokenizer(), say=said.append).run()
    assert doc["packed_step"] is False
    assert "causal_only" in doc["packed_step_off"]
    assert any("packed training step off" in m and "causal_only" in m for m in said)
    assert "packed training step off" in caplog.text


def test_a_packed_forward_that_differs_falls_back(ws, tmp_path, monkeypatch):
    # A mask that lets every position see the whole row (the tree ignored): the check on the
    # first pair finds the difference and the step runs separate forwards, which stay exact.
    def wrong(model, batch, **_kw):
        return torch.ones_like(batch.mask)

    monkeypatch.setattr(packed_mod, "step_attention_mask", wrong)
    trainer = _trainer(ws, tmp_path / "run", tiny_llama(), tiny_tokenizer(), w_reg=1.0)
    assert not trainer.packed
    assert "differs from separate forwards" in trainer.packed_off
    terms = trainer._losses(np.arange(4))
    assert torch.isfinite(terms["loss"])


def test_no_packed_step_flag_and_resume_across_settings(ws, tmp_path):
    common = [
        "train", "--model", str(ws / "tiny"), "--pairs", str(ws / "train.jsonl"),
        "--labels", str(ws / "m0"), "--layer", "1", "--concurrent", "--verbal", "--w-reg", "1",
        "--lr", "1e-3", "--batch-size", "4", "--checkpoint-every", "2",
    ]  # fmt: skip
    a, b = tmp_path / "packed", tmp_path / "separate"
    assert main([*common, "--out", str(a), "--steps", "2"]) == 0
    assert main([*common, "--out", str(b), "--steps", "2", "--no-packed-step"]) == 0
    da, db = (json.loads((d / "train.json").read_text()) for d in (a, b))
    assert da["packed_step"] is True and db["packed_step"] is False
    assert da["config"]["packed_step"] is True and db["config"]["packed_step"] is False
    np.testing.assert_allclose(
        [r["loss"] for r in da["log"]], [r["loss"] for r in db["log"]], rtol=1e-5
    )
    # The switch changes how a step is computed, not what: a run resumes with the other one.
    assert main([*common, "--out", str(b), "--steps", "3", "--resume"]) == 0
    assert json.loads((b / "train.json").read_text())["packed_step"] is True


@pytest.mark.model
def test_smollm2_packed_step_equals_separate_forwards(smollm2, tmp_path):
    import introspect

    pairs = generate("sycophancy", 4, seed=3)
    write_pairs(tmp_path / "train.jsonl", pairs)
    model, tok = smollm2.model, smollm2.tokenizer
    introspect.extract(model, tok, tmp_path / "train.jsonl", tmp_path / "m0", layers=[15])
    cfg = TrainConfig(
        model="smollm2-135m", pairs=str(tmp_path / "train.jsonl"), labels=str(tmp_path / "m0"),
        out=str(tmp_path / "run"), layer=15, concurrent=True, verbal=True, w_reg=1.0,
        explainer_grad_to_model=True, batch_size=4,
    )  # fmt: skip
    trainer = Trainer(cfg, model=model, tokenizer=tok, say=lambda _m: None)
    trainer.setup()
    assert trainer.packed, trainer.packed_off
    # The difference probe reads h(x') - h(x) divided by M0's per-feature spread of it, which
    # magnifies the float32 rounding of the hidden states (7e-6 and 1.3e-5 relative measured
    # on two sets of pairs; every other tensor within 1e-5).
    _assert_same_step(trainer, np.arange(4), loose={"diff_w": 3e-5})
