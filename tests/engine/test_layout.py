"""The tree-layout check runs once per model and settings: remembered in memory and on disk."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers")
from tiny import tiny_llama, tiny_tokenizer

from introspect.engine import layout
from introspect.engine.layout import layout_fingerprint, tree_layout_problem


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("INTROSPECT_CACHE", str(tmp_path))
    monkeypatch.delenv(layout.ENV_VAR, raising=False)
    return tmp_path / "layout"


class Counter:
    def __init__(self, answer=None):
        self.calls, self.answer = 0, answer

    def __call__(self):
        self.calls += 1
        return self.answer


def test_checked_once_then_remembered_in_memory_and_on_disk(cache):
    model, check = tiny_llama(), Counter()
    assert tree_layout_problem(model, check) is None and check.calls == 1
    assert tree_layout_problem(model, check) is None and check.calls == 1  # memory
    files = list(cache.glob("*.json"))
    assert len(files) == 1
    assert json.loads(files[0].read_text())["key"] == layout_fingerprint(model)
    other = tiny_llama()  # a new object (a new process): the disk answers
    assert tree_layout_problem(other, check) is None and check.calls == 1


def test_a_problem_is_remembered_too(cache):
    model = tiny_llama(seed=3)
    bad = Counter("the packed forward differs by 0.5")
    assert tree_layout_problem(model, bad) == bad.answer
    assert tree_layout_problem(tiny_llama(seed=3), Counter()) == bad.answer


def test_other_settings_are_checked_again(cache):
    model, check = tiny_llama(), Counter()
    tree_layout_problem(model, check)
    model.config._attn_implementation = "eager"  # the same object, another attention
    tree_layout_problem(model, check)
    assert check.calls == 2
    tree_layout_problem(tiny_llama(layers=3), check)  # another architecture
    assert check.calls == 3


def test_a_damaged_cache_file_or_always_checks_again(cache, monkeypatch):
    check = Counter()
    tree_layout_problem(tiny_llama(), check)
    (f,) = cache.glob("*.json")
    f.write_text("{not json")
    tree_layout_problem(tiny_llama(), check)
    assert check.calls == 2
    monkeypatch.setenv(layout.ENV_VAR, "always")
    model = tiny_llama()
    tree_layout_problem(model, check), tree_layout_problem(model, check)
    assert check.calls == 4


def test_extraction_skips_the_check_a_cache_answered(cache, monkeypatch, tmp_path):
    from introspect import extract
    from introspect.data.pairs import Pair
    from introspect.engine import driver

    pairs = [
        Pair.from_json({"id": f"p{i}", "prompt": f"hello world {i} , I think paris",
                        "remove": ["I think"], "choices": [" city", " town"], "target": " city"})
        for i in range(3)
    ]  # fmt: skip
    calls = []
    real = driver.check_tree_layout

    def counted(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(driver, "check_tree_layout", counted)
    tok = tiny_tokenizer()
    first = extract(tiny_llama(), tok, pairs, tmp_path / "a", layers=[1])
    second = extract(tiny_llama(), tok, pairs, tmp_path / "b", layers=[1])
    assert len(calls) == 1
    assert (first.delta == second.delta).all()


def test_the_same_model_from_another_folder_has_the_same_fingerprint(tmp_path):
    from transformers import AutoModelForCausalLM

    tiny_llama().save_pretrained(tmp_path / "a")
    tiny_llama().save_pretrained(tmp_path / "b")
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "a")
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "b")
    assert layout_fingerprint(a) == layout_fingerprint(b)


def test_a_prompt_the_tokenizer_cannot_render_is_an_error_not_a_layout_problem(cache):
    """Chat messages for a tokenizer without a chat template fail before any forward: that is
    the input's fault, so it is raised, not remembered as the model's layout problem."""
    from introspect.data.pairs import Pair
    from introspect.engine.stream import check_tree_layout
    from introspect.models import NoChatTemplateError

    pair = Pair.from_json({
        "id": "c", "prompt": [{"role": "user", "content": "hello world , I think paris"}],
        "remove": ["I think"], "choices": [" city", " town"], "target": " city",
    })  # fmt: skip
    tok = tiny_tokenizer()
    tok.chat_template = None
    with pytest.raises(NoChatTemplateError):
        check_tree_layout(tiny_llama(), tok, pair)
    assert not cache.exists() or not list(cache.iterdir())
