"""The verbal explainer on a tiny random llama: labels and prompts, learning vs shuffled labels,
parsing of arbitrary text, generation, and save/load round trips."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from asserts import plain_logprob
from tiny import CHAT_TEMPLATE, WORDS

from introspect.behaviour import choice_logprobs, encode
from introspect.data.pairs import Pair
from introspect.explain import EXPLAINERS, build, config_from_dict, config_to_dict, load
from introspect.explain.lora import lora_layers
from introspect.explain.verbal import (
    UNCHANGED_SENTENCE,
    UNPARSED,
    VerbalConfig,
    VerbalExplainer,
    label_sentence,
    parse_explanation,
)

VOCAB = (
    list(WORDS)
    + ('My would stay same change to more less likely If were removed your text " ). Hint').split()
)
CHOICES = (" (A)", " (B)")
KEYS = {
    "paris": "unchanged",
    "london": " (A)",
    "rome": " (B)",
    "berlin": "unchanged",
    "bake": " (A)",
    "bread": " (B)",
}
FILL = "what how why who yes no maybe sure hello world city capital france".split()
LORA = dict(
    lora_targets=("q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "lm_head"),
    lr=3e-3,
    epochs=40,
    batch_size=6,
)


def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
        eos_token="</s>",
    )  # fmt: skip
    fast.chat_template = CHAT_TEMPLATE
    return fast


def llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(VOCAB), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        tie_word_embeddings=False,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


def make_pairs(n: int, seed: int) -> tuple[list[Pair], list[str]]:
    """The label is decided by a key word inside the removed span (also named in meta)."""
    rng = random.Random(seed)
    keys = list(KEYS)
    pairs, labels = [], []
    for i in range(n):
        k = keys[i % len(keys)]
        fill = " ".join(rng.choice(FILL) for _ in range(4))
        span = f"my friend says {k} ."
        pairs.append(
            Pair(
                id=f"s{seed}-{i}",
                prompt=[{"role": "user", "content": f"{span} {fill} ?"}],
                choices=CHOICES,
                target=" (B)",
                remove=(span,),
                meta={"key": k},
            )
        )
        labels.append(KEYS[k])
    return pairs, labels


def config(**kw) -> VerbalConfig:
    base = dict(answer="target", feature_key="key", template="If {feature} were removed ?")
    return VerbalConfig(**{**base, **LORA, **kw})


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matmuls run fastest (and steadiest on a shared machine) on one thread."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def data():
    train, y_train = make_pairs(36, seed=1)
    test, y_test = make_pairs(24, seed=2)
    return train, y_train, test, y_test


@pytest.fixture(scope="module")
def trained(data):
    train, y_train, _, _ = data
    ex = VerbalExplainer(config(), model=llama(), tokenizer=tokenizer())
    return ex.fit(train, y_train)


def accuracy(pred, labels) -> float:
    return float(np.mean([p == y for p, y in zip(pred, labels, strict=True)]))


# ---------------------------------------------------------------------------- config, labels


def test_registered_and_config_round_trips():
    assert EXPLAINERS["verbal"] is VerbalExplainer
    assert VerbalExplainer.output == "categorical"
    cfg = VerbalConfig(labels="binned", threshold=0.5, lora_targets=["q_proj"], seed=3)
    d = config_to_dict(cfg)
    assert d["explainer"] == "verbal"
    assert config_from_dict(json.loads(json.dumps(d))) == cfg
    assert isinstance(build(d), VerbalExplainer)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"template": "How would your answer change?"}, r"\{feature\}"),
        ({"template": "If the {thing} were removed"}, "only"),
        ({"labels": "free"}, "labels must be"),
        ({"adapter": "prefix"}, "adapter must be"),
        ({"answer": "first"}, "answer must be"),
        ({"threshold": -1.0}, "threshold"),
        ({"lora_rank": 0}, "lora_rank"),
        ({"lr": 0.0}, "lr"),
    ],
)
def test_bad_configs(kw, match):
    with pytest.raises(ValueError, match=match):
        VerbalConfig(**kw)


def test_label_sentences_and_targets():
    assert label_sentence("unchanged", CHOICES, " (B)") == UNCHANGED_SENTENCE
    assert label_sentence(" (B)", CHOICES, " (B)") == "My answer would change to (B)."
    assert (
        label_sentence("away", CHOICES, " (B)", "binned") == "I would be less likely to answer (B)."
    )
    with pytest.raises(ValueError):
        label_sentence(" (C)", CHOICES, " (B)")

    pairs, _ = make_pairs(4, seed=0)
    ex = VerbalExplainer(config(threshold=0.5), model=llama(), tokenizer=tokenizer())
    delta = [0.1, 2.0, -3.0, -0.5]
    assert ex.target_labels(pairs, delta) == ["unchanged", " (B)", " (A)", "unchanged"]
    assert ex.target_labels(pairs, np.array(["(a)", "unchanged", " (B)", "B"], dtype=object)) == [
        " (A)", "unchanged", " (B)", " (B)",
    ]  # fmt: skip
    with pytest.raises(ValueError, match=r"s0-2.*'\(C\)'"):
        ex.target_labels(pairs, ["unchanged", "unchanged", "(C)", "unchanged"])
    binned = VerbalExplainer(
        config(labels="binned", threshold=0.5), model=llama(), tokenizer=tokenizer()
    )
    assert binned.target_labels(pairs, delta) == ["unchanged", "toward", "away", "unchanged"]
    three = [Pair(id="t", prompt="q", choices=("a", "b", "c"), target="a", remove=("q",))]
    with pytest.raises(ValueError, match=r"'t'.*away"):
        ex.target_labels(three, [-2.0])


def test_followup_prompt_holds_answer_question_and_feature():
    pairs, _ = make_pairs(2, seed=0)
    ex = VerbalExplainer(VerbalConfig(answer="target"), model=llama(), tokenizer=tokenizer())
    text, chat = ex.followup(pairs[0], " (B)")
    assert chat
    assert text.startswith("<s><user> my friend says paris .")
    assert '<assistant> (B) <user> If the text "my friend says paris ." were removed' in text
    assert text.endswith("<assistant> ")
    plain = Pair(id="p", prompt="Q: x ? Hint: A. Answer:", choices=(" A", " B"), target=" A",
                 remove=("Hint: A.",))  # fmt: skip
    text, chat = ex.followup(plain, " B")
    assert not chat
    assert text == (
        'Q: x ? Hint: A. Answer: B\n\nIf the text "Hint: A." were removed, '
        "how would your answer change?\n"
    )


def test_argmax_answers_are_the_models_choice():
    pairs, _ = make_pairs(6, seed=0)
    model, tok = llama(seed=4), tokenizer()
    ex = VerbalExplainer(VerbalConfig(), model=model, tokenizer=tok)
    logps = choice_logprobs(model, [encode(tok, p.x, p.choices) for p in pairs])
    assert ex.answers(pairs) == [
        p.choices[int(torch.argmax(lp))] for p, lp in zip(pairs, logps, strict=True)
    ]


# ---------------------------------------------------------------------------------- learning


def test_training_fits_labels_and_generalises_but_shuffled_labels_do_not(data, trained):
    train, y_train, test, y_test = data
    loss = trained.info["epoch_loss"]
    assert loss[-1] < 0.1 * loss[0]
    assert accuracy(trained.predict(train), y_train) >= 0.9
    real = accuracy(trained.predict(test), y_test)
    assert real >= 0.9

    shuffled = list(y_train)
    random.Random(5).shuffle(shuffled)
    control = VerbalExplainer(config(), model=llama(), tokenizer=tokenizer()).fit(train, shuffled)
    held_out = accuracy(control.predict(test), y_test)
    assert held_out <= real - 0.25


def test_untrained_model_is_not_already_right(data):
    _, _, test, y_test = data
    ex = VerbalExplainer(config(), model=llama(), tokenizer=tokenizer())
    assert accuracy(ex.predict(test), y_test) < 0.7


def test_fit_is_deterministic_and_uses_rows(data):
    train, y_train, test, _ = data
    kw = dict(epochs=2)
    a = VerbalExplainer(config(**kw), model=llama(), tokenizer=tokenizer())
    b = VerbalExplainer(config(**kw), model=llama(), tokenizer=tokenizer())
    a.fit(train, y_train, rows=np.arange(12))
    b.fit(train, y_train, rows=np.arange(12))
    assert a.info["n_train"] == 12
    la, lb = a.label_logprobs(test[:4]), b.label_logprobs(test[:4])
    assert la == lb
    assert set(la[0]) == {"unchanged", " (A)", " (B)"}
    c = VerbalExplainer(config(seed=1, **kw), model=llama(), tokenizer=tokenizer())
    assert c.fit(train, y_train, rows=np.arange(12)).label_logprobs(test[:4]) != la


def test_generation_batched_equals_single_and_parses(data, trained):
    train = data[0]
    texts = trained.explain(train[:6])
    assert texts == [trained.explain([p])[0] for p in train[:6]]
    assert all(t.startswith("My answer would") for t in texts)
    generated = trained.predict(train, mode="generate")
    assert set(generated) <= {"unchanged", *CHOICES, UNPARSED}
    assert accuracy(generated, trained.predict(train)) >= 0.8
    with pytest.raises(ValueError, match="mode"):
        trained.predict(train, mode="beam")


# ----------------------------------------------------------------------------------- parsing

GOOD = {
    "My answer would stay the same.": "unchanged",
    "my answer would STAY THE SAME": "unchanged",
    "I would not change my answer.": "unchanged",
    "It wouldn't change.": "unchanged",
    "The output would remain unchanged from <<<Answer: A>>>.": "unchanged",
    "My answer would change to (B).": " (B)",
    "My answer would change to ( B ) .": " (B)",
    "My answer would change to ( A": " (A)",
    "Sure! I think my answer would change to (A). Thanks for asking.": " (A)",
    "The most likely output would change to <<<Answer: B>>>.": " (B)",
    "It would switch to option B": " (B)",
    "My answer would be B.": " (B)",
    "My answer would be the same.": "unchanged",
}
BAD = [
    "",
    "   ",
    "My answer would change to (E).",
    "My answer would change to something else.",
    "My answer would stay the same. My answer would change to (B).",
    "My answer would change to (A). No, it would change to (B).",
    "My answer would not change to (B).",
    "hello world",
    "(B)",
    "change to",
    "((((",
    ")))) change to (((",
]


@pytest.mark.parametrize("text, label", GOOD.items())
def test_parse_reads_stated_labels(text, label):
    assert parse_explanation(text, CHOICES) == label


@pytest.mark.parametrize("text", BAD)
def test_parse_malformed_is_unparsed(text):
    assert parse_explanation(text, CHOICES) == UNPARSED


def test_parse_styles_and_odd_inputs():
    toward = "I would be more likely to answer (B)."
    assert parse_explanation(toward, CHOICES, "binned") == "toward"
    assert parse_explanation("I would be less likely to answer (B).", CHOICES) == "away"
    assert parse_explanation(toward, CHOICES, "choice") == UNPARSED
    assert parse_explanation("My answer would change to (B).", CHOICES, "binned") == UNPARSED
    assert parse_explanation(None, CHOICES) == UNPARSED
    assert parse_explanation(b"stay the same", CHOICES) == UNPARSED
    assert parse_explanation("change to (B)", None) == UNPARSED
    assert parse_explanation("change to (B)", [1, " (B)"]) == " (B)"
    words = (" yes", " no")
    assert parse_explanation("My answer would change to no.", words) == " no"
    assert parse_explanation("My answer would change to nothing.", words) == UNPARSED


hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

ALLOWED = {"unchanged", "toward", "away", UNPARSED}
CHATTER = st.text(alphabet="xyz qwk!?,'\n\t", max_size=30)


@given(text=st.text(max_size=80), choices=st.lists(st.text(max_size=6), max_size=5))
def test_parse_never_raises_and_returns_a_known_label(text, choices):
    out = parse_explanation(text, choices)
    assert out in ALLOWED or out in choices


@given(
    label=st.sampled_from(["unchanged", " (A)", " (B)", " (C)", " (D)"]),
    before=CHATTER,
    after=CHATTER,
    upper=st.booleans(),
)
def test_label_sentences_parse_back_through_chatter(label, before, after, upper):
    choices = (" (A)", " (B)", " (C)", " (D)")
    sentence = label_sentence(label, choices, " (A)")
    if upper:
        sentence = sentence.upper()
    assert parse_explanation(f"{before} {sentence} {after}", choices) == label


@given(label=st.sampled_from(["unchanged", "toward", "away"]), before=CHATTER, after=CHATTER)
def test_binned_sentences_parse_back(label, before, after):
    sentence = label_sentence(label, CHOICES, " (B)", "binned")
    assert parse_explanation(f"{before}. {sentence} .{after}", CHOICES, "binned") == label


# --------------------------------------------------------------------------------- save/load


def test_save_load_round_trip_through_the_registry(tmp_path, data, trained):
    _, _, test, _ = data
    model_dir = tmp_path / "base"
    base_model = llama()
    base_model.save_pretrained(model_dir)
    tokenizer().save_pretrained(model_dir)
    ex = VerbalExplainer(config(model=str(model_dir), epochs=3), model=base_model,
                         tokenizer=tokenizer())  # fmt: skip
    ex.fit(*data[:2])
    want = ex.label_logprobs(test)
    path = ex.save(tmp_path / "verbal")
    from safetensors import safe_open

    with safe_open(str(path / "weights.safetensors"), framework="pt") as f:
        keys = list(f.keys())
    assert keys and all(".lora_A" in k or ".lora_B" in k for k in keys)

    back = load(path)  # rebuilds the base model from config.model
    assert isinstance(back, VerbalExplainer) and back.config == ex.config
    assert back.label_logprobs(test) == want
    assert list(back.predict(test)) == list(ex.predict(test))
    same = VerbalExplainer.load(path, model=llama(), tokenizer=tokenizer())
    assert same.label_logprobs(test) == want
    assert sorted(lora_layers(same.model)) == ex.adapter_modules

    with pytest.raises(ValueError, match="another base model"):
        VerbalExplainer.load(path, model=llama(seed=9), tokenizer=tokenizer())


def test_full_fine_tuning_round_trip(tmp_path, data):
    train, y_train, test, _ = data
    ex = VerbalExplainer(config(adapter="full", epochs=1), model=llama(), tokenizer=tokenizer())
    before = VerbalExplainer(config(), model=llama(), tokenizer=tokenizer()).label_logprobs(
        test[:3]
    )
    ex.fit(train[:12], y_train[:12])
    want = ex.label_logprobs(test[:3])
    assert want != before and not lora_layers(ex.model)
    back = VerbalExplainer.load(ex.save(tmp_path / "full"), model=llama(seed=9),
                                tokenizer=tokenizer())  # fmt: skip
    assert back.label_logprobs(test[:3]) == want


def test_unfitted_and_modelless_errors(tmp_path):
    with pytest.raises(RuntimeError, match="not fitted"):
        VerbalExplainer(config(), model=llama(), tokenizer=tokenizer()).save(tmp_path)
    pairs, labels = make_pairs(2, 0)
    with pytest.raises(ValueError, match="no model"):
        VerbalExplainer(config()).fit(pairs, labels)
    with pytest.raises(ValueError, match="both model and tokenizer"):
        VerbalExplainer(config(), model=llama())


@pytest.mark.parametrize("labels", ["choice", "binned"])
def test_scores_equal_separate_forwards_of_prompt_and_sentence(data, trained, labels):
    # The cached scoring (prompts once, left-padded; candidates continue from the cache, in
    # batches whose prompts differ in length and whose pairs differ in their number of choices)
    # against one plain forward per pair and candidate.
    test = list(data[2][:5])
    three = (" (A)", " (B)", " (C)")
    test[2] = Pair(id="three", prompt=test[2].prompt, choices=three, target=" (C)",
                   remove=test[2].remove, meta=test[2].meta)  # fmt: skip
    span = "my friend says rome ."
    test.append(Pair(id="text", prompt=f"hello world {span} what ?", choices=CHOICES,
                     target=" (A)", remove=(span,)))  # fmt: skip
    ex = VerbalExplainer(config(labels=labels, eval_batch_size=4), model=trained.model,
                         tokenizer=trained.tokenizer)  # fmt: skip
    got = ex.label_logprobs(test)
    prompts = ex._prompt_ids(test, None)
    assert len({len(p) for p in prompts}) > 1
    for p, prompt, scores in zip(test, prompts, got, strict=True):
        want_labels = ("unchanged", "toward", "away") if labels == "binned" else (
            "unchanged", *p.choices)  # fmt: skip
        assert tuple(scores) == want_labels
        for label, value in scores.items():
            sentence = label_sentence(label, p.choices, p.target, labels)
            ids = trained.tokenizer(sentence, add_special_tokens=False)["input_ids"]
            ref = plain_logprob(trained.model, prompt, [*ids, trained.tokenizer.eos_token_id])
            assert value == pytest.approx(ref, abs=1e-4), (p.id, label)
