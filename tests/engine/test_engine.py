"""The packed paired forward against separate plain forwards (the definition of correct)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from tiny import tiny_gemma3, tiny_gpt2, tiny_llama, tiny_qwen2, tiny_tokenizer

from introspect.behaviour import encode, measure
from introspect.data import Pair
from introspect.engine import ExtractConfig, extract_pairs
from introspect.engine.packing import build_item, pack


def test_trie_shares_prefixes_and_mask_follows_ancestry():
    item = build_item(0, [[5, 6, 7, 8], [5, 6, 9]], [[1], [2, 3]])
    # x: 5 6 7 8, x': 5 6 9, plus "prompt + 2" for the two-token choice on each side.
    assert len(item.trie) == 4 + 1 + 2
    batch = pack([item, build_item(1, [[4, 4], [4]], [[1], [2, 3]])], row_tokens=64)
    m = batch.mask[0, 0]
    t = item.trie
    for i in range(len(t)):
        anc = {i}
        p = t.parent[i]
        while p >= 0:
            anc.add(p)
            p = t.parent[p]
        assert {j for j in range(len(t)) if m[i, j]} == anc
    assert batch.position_ids[0, : len(t)].tolist() == t.depth
    # The second pair shares the row, in its own block.
    r, off = batch.where[1]
    assert r == 0 and off == len(t)
    assert not m[off:, :off].any() and not m[:off, off:].any()


def _pairs(n=10):
    out = []
    for i in range(1, n + 1):
        said = f"my friend says {i % 9 + 1} ."
        multi = i % 2 == 0
        choices = ["( A )", "( B )"] if multi else [" yes", " no"]
        out.append(
            Pair.from_json(
                {
                    "id": f"p{i}",
                    "prompt": [{"role": "user", "content": f"what is {i % 7} + 2 ? {said} hint"}],
                    "remove": [said],
                    "choices": choices,
                    "target": choices[i % 2],
                }
            )
        )
    out.append(
        Pair.from_json(
            {
                "id": "text",
                "prompt": "hello world , I think paris",
                "remove": ["I think"],
                "choices": [" city", " a capital"],
                "target": " city",
            }
        )
    )
    return out


def _tiny_gpt2():
    return tiny_gpt2(positions=128)


MODELS = {
    "llama": lambda: tiny_llama(),
    "gpt2": _tiny_gpt2,
    "qwen2": tiny_qwen2,
    "gemma3": tiny_gemma3,  # a sliding window (8) shorter than most prompts here
    "gemma3-wide-window": lambda: tiny_gemma3(window=256),
}


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("row_tokens", [8, 512])
def test_packed_matches_separate_forwards(arch, row_tokens):
    model, tok = MODELS[arch](), tiny_tokenizer()
    pairs = _pairs()
    ref = measure(model, tok, pairs, batch_size=4)
    res = list(
        extract_pairs(
            model, tok, pairs, ExtractConfig(layers=(0, 1), row_tokens=row_tokens, batch_tokens=64)
        )
    )
    f_x = np.concatenate([r.f_x for r in res])
    f_mod = np.concatenate([r.f_mod for r in res])
    assert [i for r in res for i in r.ids] == [p.id for p in pairs]
    np.testing.assert_allclose(f_x, ref.f_x, atol=1e-5)
    np.testing.assert_allclose(f_mod - f_x, ref.delta, atol=1e-5)
    # Hidden states at the last prompt token = output_hidden_states[layer + 1] of a lone forward
    # (for the last layer, HF reports the normed state: compare the pre-norm layer output).
    hidden = {k: np.concatenate([r.hidden[k] for r in res]) for k in res[0].hidden}
    for i, p in enumerate(pairs):
        for side, prompt in (("x", p.x), ("mod", p.x_mod)):
            ids = torch.tensor([encode(tok, prompt, p.choices).prompt_ids])
            with torch.no_grad():
                hs = model(input_ids=ids, output_hidden_states=True).hidden_states
            want = hs[1][0, -1].numpy()
            np.testing.assert_allclose(hidden[(0, "last", side)][i], want, rtol=1e-4, atol=1e-5)


def test_sharing_reduces_tokens():
    model, tok = tiny_llama(), tiny_tokenizer()
    res = list(extract_pairs(model, tok, _pairs(), ExtractConfig(batch_tokens=10_000)))
    assert sum(r.tokens_unique for r in res) < 0.8 * sum(r.tokens_naive for r in res)


def test_layer_out_of_range_is_a_clear_error():
    model, tok = tiny_llama(), tiny_tokenizer()
    with pytest.raises(ValueError, match="layer 5 out of range: the model has 2 layers"):
        list(extract_pairs(model, tok, _pairs(2), ExtractConfig(layers=(5,))))


@pytest.mark.model
@pytest.mark.parametrize("task,n", [("sycophancy", 8), ("refusal", 8), ("hint", 4)])
def test_smollm2_packed_matches_plain_hf(task, n, smollm2):
    from introspect.data.tasks import generate

    model, tok = smollm2.model, smollm2.tokenizer
    pairs = generate(task, n, seed=3)
    ref = measure(model, tok, pairs, batch_size=8)
    res = list(extract_pairs(model, tok, pairs, ExtractConfig(layers=(10,))))
    d = np.concatenate([r.f_mod - r.f_x for r in res])
    assert np.abs(d - np.array(ref.delta)).max() <= 1e-3
    p = pairs[0]
    ids = torch.tensor([encode(tok, p.x, p.choices).prompt_ids])
    with torch.no_grad():
        want = model(input_ids=ids, output_hidden_states=True).hidden_states[11][0, -1]
    got = torch.from_numpy(res[0].hidden[(10, "last", "x")][0])
    assert float((got - want).norm() / want.norm()) <= 1e-3


def test_several_features_of_one_x_share_one_trie():
    from introspect.data import ablate_each

    model, tok = tiny_llama(), tiny_tokenizer()
    pairs = []
    for q in range(3):
        prompt = [
            {
                "role": "user",
                "content": f"hello world . my friend says {q} . I think paris . what is {q} + 1 ?",
            }
        ]
        features = {
            "friend": [f"my friend says {q} ."],
            "think": ["I think paris ."],
            "hello": ["hello world ."],
        }
        pairs += ablate_each(f"q{q}", prompt, features, [" yes", "( A )"], " yes")
    ref = measure(model, tok, pairs, batch_size=4)
    for boundary in (0, 4):
        res = list(
            extract_pairs(
                model,
                tok,
                pairs,
                ExtractConfig(layers=(1,), batch_tokens=64),
                boundary_every=boundary,
            )
        )
        assert [i for r in res for i in r.ids] == [p.id for p in pairs]
        f_x = np.concatenate([r.f_x for r in res])
        f_mod = np.concatenate([r.f_mod for r in res])
        np.testing.assert_allclose(f_x, ref.f_x, atol=1e-5)
        np.testing.assert_allclose(f_mod - f_x, ref.delta, atol=1e-5)
        hx = np.concatenate([r.hidden[(1, "last", "x")] for r in res])
        # Every feature of one x reports the same x hidden state.
        np.testing.assert_allclose(hx[0], hx[1], atol=1e-6)
    unique = sum(r.tokens_unique for r in res)
    assert unique < 0.7 * sum(r.tokens_naive for r in res)


def _system_pairs(n=8):
    """Pairs under one long system prompt (the prefix the engine caches)."""
    system = "I think the answer is what my friend says . hello world , bake bread"
    out = []
    for i in range(n):
        said = f"my friend says {i % 9 + 1} ."
        choices = ["( A )", "( B )"] if i % 3 == 0 else [" yes", " no"]
        out.append(
            Pair.from_json(
                {
                    "id": f"s{i}",
                    "prompt": [
                        {"role": "system", "content": system},
                        {"role": "user", "content": f"what is {i % 7} + 2 ? {said} hint"},
                    ],
                    "remove": [said],
                    "choices": choices,
                    "target": choices[i % 2],
                }
            )
        )
    return out


def _run(model, tok, pairs, **cfg):
    cfg.setdefault("layers", (0, 1))
    cfg.setdefault("batch_tokens", 64)
    res = list(extract_pairs(model, tok, pairs, ExtractConfig(**cfg)))
    assert [i for r in res for i in r.ids] == [p.id for p in pairs]
    out = {
        "f_x": np.concatenate([r.f_x for r in res]),
        "f_mod": np.concatenate([r.f_mod for r in res]),
        "unique": sum(r.tokens_unique for r in res),
    }
    for key in res[0].hidden:
        out[key] = np.concatenate([r.hidden[key] for r in res])
    return out


SWITCHES = {
    "all on": {},
    "no prefix cache": {"prefix_cache": False},
    "paths layout": {"layout": "paths"},
    "paths + cache": {"layout": "paths", "row_tokens": 8},
    "one pair per row": {"share_rows": False},
    "full head": {"head": "full"},
    "paired attention": {"attention": "paired"},  # the segment op, reference backend on CPU
    "mask attention": {"attention": "mask"},  # the model's own SDPA with the dense mask
    "no fused kernels": {"fused": False},
}


# Every switch on Llama and GPT-2 (absolute positions); the default on the other families.
SWITCH_GRID = (
    [
        (a, s)
        for a in ("llama", "gpt2")
        for s in sorted(SWITCHES)
        if (a, s) != ("gpt2", "paired attention")  # the default on CPU is per-trie SDPA
    ]
    + [(a, "all on") for a in sorted(MODELS) if a not in ("llama", "gpt2")]
    + [
        ("qwen2", "paired attention"),
        ("gemma3-wide-window", "paired attention"),
    ]
)


def test_paired_attention_refuses_a_model_it_cannot_run():
    with pytest.raises(ValueError, match="attention='paired' cannot run"):
        list(
            extract_pairs(
                _tiny_gpt2(), tiny_tokenizer(), _pairs(1), ExtractConfig(attention="paired")
            )
        )


@pytest.mark.parametrize("arch,switch", SWITCH_GRID)
def test_every_switch_matches_separate_forwards(arch, switch):
    model, tok = MODELS[arch](), tiny_tokenizer()
    pairs = _system_pairs() + _pairs(4)
    ref = measure(model, tok, pairs, batch_size=4)
    got = _run(model, tok, pairs, positions=("last", "span"), **SWITCHES[switch])
    np.testing.assert_allclose(got["f_x"], ref.f_x, atol=1e-5)
    np.testing.assert_allclose(got["f_mod"] - got["f_x"], ref.delta, atol=1e-5)
    for i, p in enumerate(pairs):
        x = list(encode(tok, p.x, p.choices).prompt_ids)
        m = list(encode(tok, p.x_mod, p.choices).prompt_ids)
        with torch.no_grad():
            hx = model(input_ids=torch.tensor([x]), output_hidden_states=True).hidden_states[1][0]
            hm = model(input_ids=torch.tensor([m]), output_hidden_states=True).hidden_states[1][0]
        np.testing.assert_allclose(got[(0, "last", "x")][i], hx[-1], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(got[(0, "last", "mod")][i], hm[-1], rtol=1e-4, atol=1e-5)
        # The removed span, found here from the text: x = head + span + tail, x' = head + tail.
        lcp = next(k for k in range(len(m)) if x[k] != m[k])
        removed = len(x) - len(m)
        np.testing.assert_allclose(
            got[(0, "span", "x")][i], hx[lcp : lcp + removed].mean(0), rtol=1e-4, atol=1e-5
        )
        np.testing.assert_allclose(got[(0, "span", "mod")][i], hm[lcp], rtol=1e-4, atol=1e-5)


def test_prefix_cache_is_used_and_saves_tokens():
    model, tok = tiny_llama(), tiny_tokenizer()
    pairs = _system_pairs()
    on = _run(model, tok, pairs)
    off = _run(model, tok, pairs, prefix_cache=False)
    np.testing.assert_allclose(on["f_mod"] - on["f_x"], off["f_mod"] - off["f_x"], atol=1e-5)
    from introspect.engine import shared_prefix

    prefix = shared_prefix(tok, pairs)
    assert len(prefix) >= 10
    # every batch after the cache saves the prefix once per pair
    assert on["unique"] == off["unique"] - len(prefix) * len(pairs)


def test_behaviour_none_stops_after_the_last_layer():
    model, tok = tiny_llama(layers=3), tiny_tokenizer()
    pairs = _system_pairs(4)
    full = _run(model, tok, pairs, layers=(0,))
    ran = []
    h = model.model.layers[2].register_forward_hook(lambda *a: ran.append(1))
    try:
        only = _run(model, tok, pairs, layers=(0,), behaviour="none", prefix_cache=False)
    finally:
        h.remove()
    assert not ran  # the forward stopped at layer 0
    assert np.isnan(only["f_x"]).all() and np.isnan(only["f_mod"]).all()
    # ``full`` reuses the cached prefix, ``only`` does not: equal up to float32 rounding.
    np.testing.assert_allclose(only[(0, "last", "x")], full[(0, "last", "x")], rtol=1e-5, atol=1e-7)


def test_paths_layout_has_no_4d_mask():
    from introspect.engine.packing import pack

    item = build_item(0, [[5, 6, 7, 8], [5, 6, 9]], [[1], [2, 3]])
    batch = pack([item], row_tokens=64, layout="paths")
    assert batch.mask.dim() == 2
    # The leaves are "x + 2" and "x' + 2" (the two-token choice): two rows.
    assert batch.input_ids.tolist() == [[5, 6, 7, 8, 2], [5, 6, 9, 2, 0]]
    for node in range(len(item.trie)):
        r, c = batch.position(0, node)
        assert batch.input_ids[r, c] == item.trie.tokens[node]
        assert batch.position_ids[r, c] == item.trie.depth[node]


def test_bad_config_is_a_clear_error():
    with pytest.raises(ValueError, match="positions"):
        ExtractConfig(positions=("middle",))
    with pytest.raises(ValueError, match="layout"):
        ExtractConfig(layout="dense")
    with pytest.raises(ValueError, match="nothing to extract"):
        ExtractConfig(behaviour="none")


def test_layout_check_accepts_single_choice_pairs():
    from introspect.engine.stream import check_tree_layout

    pair = Pair.from_json(
        {"id": "one", "prompt": "hello world , I think paris", "remove": ["I think"],
         "choices": [" city"], "target": " city"}
    )  # fmt: skip
    assert check_tree_layout(tiny_llama(), tiny_tokenizer(), pair) is None


def test_paired_path_builds_no_dense_mask(monkeypatch):
    """The paired attention reads the trie from the segment metadata: the dense mask is never
    built (the builder raises here), the metadata is built once per batch, and the values are
    those of the mask path."""
    import importlib

    from introspect.engine import packing

    paired_attention = importlib.import_module("introspect.ops.paired_attention")
    model, tok = tiny_llama(), tiny_tokenizer()
    pairs = _system_pairs(4) + _pairs(3)
    ref = _run(model, tok, pairs, attention="mask", positions=("last", "span"))

    def refuse(batch):
        raise AssertionError("the dense mask was built on the paired path")

    built = []
    real = paired_attention.segment_meta

    def counted(batch, **kw):
        built.append(batch)
        return real(batch, **kw)

    switched = []
    real_set = type(model).set_attn_implementation

    def set_impl(self, name):
        switched.append(name)
        return real_set(self, name)

    monkeypatch.setattr(packing, "_tree_mask", refuse)
    monkeypatch.setattr(paired_attention, "segment_meta", counted)
    monkeypatch.setattr(type(model), "set_attn_implementation", set_impl)
    before = model.config._attn_implementation
    got = _run(model, tok, pairs, attention="paired", positions=("last", "span"))
    assert len(built) > 1 and len({id(b) for b in built}) == len(built)  # once per batch
    # The attention implementation is switched once for the stream, and back.
    assert switched == ["introspect_paired", before] and model.config._attn_implementation == before
    for key in ref:
        np.testing.assert_allclose(got[key], ref[key], rtol=1e-4, atol=1e-5, err_msg=str(key))
    # The mask path still gets its mask, built on first use.
    batch = pack([build_item(0, [[5, 6, 7], [5, 6]], [[1]])], row_tokens=8)
    with pytest.raises(AssertionError, match="dense mask"):
        _ = batch.mask
    monkeypatch.undo()
    assert torch.equal(batch.mask[0, 0], torch.ones(3, 3, dtype=torch.bool).tril())


def test_dense_mask_marks_ancestors_prefix_and_padding():
    """The vectorised mask builder against a per-node walk up the trie."""
    items = [
        build_item(0, [[2, 3, 4, 5, 6], [2, 3, 7], [2, 3, 4, 8]], [[1], [9, 10]]),
        build_item(1, [[2, 3, 11], [2, 3]], [[1]]),
        build_item(2, [[12]], [[1]]),
    ]
    for prefix in ([], [2, 3]):
        for row_tokens in (4, 12, 64):
            batch = pack(items, row_tokens=row_tokens, prefix=prefix)
            P, (B, T) = batch.prefix_len, batch.input_ids.shape
            want = torch.zeros(B, 1, T, P + T, dtype=torch.bool)
            for k, item in enumerate(items):
                skip = batch.skips[k]
                for node in range(skip, len(item.trie)):
                    r, c = batch.position(k, node)
                    up = node
                    while up >= skip:
                        want[r, 0, c, P + batch.position(k, up)[1]] = True
                        up = item.trie.parent[up]
                    want[r, 0, c, :P] = skip > 0
            for r, used in enumerate(batch.lengths):
                for i in range(used, T):
                    want[r, 0, i, P + i] = True
            assert torch.equal(batch.mask, want), (prefix, row_tokens)
