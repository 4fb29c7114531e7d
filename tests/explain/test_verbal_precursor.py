"""The verbal explainer in the precursor's format (the question in x's own turn, labels naming
the answer that remains or that it changes to) and the scalar verbal score of every style, against
prompts, forwards and sentences written out here."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
from asserts import plain_logprob
from test_verbal import CHATTER, CHOICES, FILL, KEYS, LORA, VOCAB, make_pairs
from tiny import CHAT_TEMPLATE

from introspect.data.pairs import Pair
from introspect.explain import config_from_dict, config_to_dict
from introspect.explain.verbal import (
    PRECURSOR_CHANGE_SENTENCE,
    PRECURSOR_REMAIN_SENTENCE,
    UNPARSED,
    VerbalConfig,
    VerbalExplainer,
    candidate_labels,
    label_sentence,
    parse_explanation,
    precursor_labels,
)

PVOCAB = VOCAB + [w for w in ("remain", "answer", "change", "removed") if w not in VOCAB]
QUESTION = 'If the text "my friend says paris ." were removed, how would your answer change?'


def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(PVOCAB)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
        eos_token="</s>",
    )  # fmt: skip
    fast.chat_template = CHAT_TEMPLATE
    return fast


def llama(seed: int = 2, init: float = 0.3):
    """A tiny llama whose (large) initial weights make its answers depend on the prompt."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(PVOCAB), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        tie_word_embeddings=False, initializer_range=init,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def mixed_pairs(n: int = 10, seed: int = 0) -> list[Pair]:
    """Chat and text prompts, two or three choices."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        fill = " ".join(rng.choice(FILL) for _ in range(3))
        span = f"my friend says {rng.choice(list(KEYS))} ."
        choices = (" (A)", " (B)", " (C)") if i % 3 == 0 else CHOICES
        prompt = [{"role": "user", "content": f"{span} {fill} ?"}] if i % 2 else f"{fill} {span} :"
        out.append(Pair(id=f"m{i}", prompt=prompt, choices=choices, target=" (A)", remove=(span,)))
    return out


# ------------------------------------------------------------------------------ the format


def test_config_precursor_settings_and_their_checks():
    cfg = VerbalConfig.precursor(seed=3)
    assert (cfg.prompt, cfg.labels, cfg.seed) == ("same-turn", "precursor", 3)
    assert VerbalConfig().prompt == "followup"
    assert config_from_dict(json.loads(json.dumps(config_to_dict(cfg)))) == cfg
    VerbalConfig(prompt="same-turn", labels="binned")  # every combination is allowed
    VerbalConfig(labels="precursor")
    with pytest.raises(ValueError, match=r"\{answer\}.*same-turn"):
        VerbalConfig.precursor(template="If {feature} were removed, would {answer} change?")
    with pytest.raises(ValueError, match="prompt must be one of"):
        VerbalConfig(prompt="inline")
    with pytest.raises(ValueError, match="labels must be"):
        VerbalConfig(labels="precursors")


def test_same_turn_prompts_are_the_documented_text():
    ex = VerbalExplainer(VerbalConfig.precursor(), model=llama(), tokenizer=tokenizer())
    span = "my friend says paris ."
    chat = Pair(id="c", prompt=[{"role": "system", "content": "be brief"},
                                {"role": "user", "content": f"{span} what ?"}],
                choices=CHOICES, target=" (B)", remove=(span,))  # fmt: skip
    text, is_chat = ex.followup(chat)
    assert is_chat
    assert text == (
        "<s><system> be brief <user> my friend says paris . what ?\n\n"
        'If the text "my friend says paris ." were removed, how would your answer change? '
        "<assistant> "
    )
    # The question joins the last user message; the messages around it stay as they are.
    turns = Pair(id="t", prompt=[{"role": "user", "content": "hello"},
                                 {"role": "assistant", "content": "sure"},
                                 {"role": "user", "content": f"{span} why ?"}],
                 choices=CHOICES, target=" (B)", remove=(span,))  # fmt: skip
    assert ex.followup(turns, " (A)")[0] == (
        "<s><user> hello <assistant> sure <user> my friend says paris . why ?\n\n"
        f"{QUESTION} <assistant> "
    )
    plain = Pair(id="p", prompt="Q: x ? Hint: A. Answer:", choices=(" A", " B"), target=" A",
                 remove=("Hint: A.",))  # fmt: skip
    assert ex.followup(plain) == (
        'Q: x ? Hint: A. Answer:\n\nIf the text "Hint: A." were removed, how would your answer '
        "change?\n",
        False,
    )
    # No answer is shown, so none is computed: an answer setting that would fail is never used.
    never = VerbalExplainer(VerbalConfig.precursor(answer="meta:none"), model=ex.model,
                            tokenizer=ex.tokenizer)  # fmt: skip
    ids = never._prompt_ids([chat, plain], None)
    assert ids[0] == ex.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids[1] == ex.tokenizer(ex.followup(plain)[0])["input_ids"]
    with pytest.raises(ValueError, match="meta"):
        VerbalExplainer(VerbalConfig(answer="meta:none"), model=ex.model,
                        tokenizer=ex.tokenizer)._prompt_ids([chat], None)  # fmt: skip


def test_precursor_sentences_and_candidates():
    assert PRECURSOR_REMAIN_SENTENCE == "My answer would remain {choice}."
    assert PRECURSOR_CHANGE_SENTENCE == "My answer would change to {choice}."
    assert (
        label_sentence("remain:(A)", CHOICES, " (B)", "precursor") == "My answer would remain (A)."
    )
    assert (
        label_sentence("change:(B)", CHOICES, " (A)", "precursor")
        == "My answer would change to (B)."
    )
    for bad in ("remain:(C)", "unchanged", " (A)", "change: (A)", "stay:(A)"):
        with pytest.raises(ValueError, match="precursor labels"):
            label_sentence(bad, CHOICES, " (B)", "precursor")
    assert candidate_labels(CHOICES, "precursor") == (
        "remain:(A)", "remain:(B)", "change:(A)", "change:(B)",
    )  # fmt: skip
    with pytest.raises(ValueError, match="coincide"):
        candidate_labels((" A", "A"), "precursor")


def test_precursor_labels_from_answers():
    x = [" (A)", " (B)", " (A)", " (C)"]
    mod = [" (A)", " (A)", " (B)", "(C)"]
    assert precursor_labels(x, mod) == ["remain:(A)", "change:(A)", "change:(B)", "remain:(C)"]
    assert precursor_labels([], []) == []
    with pytest.raises(ValueError, match="answers"):
        precursor_labels([" (A)"], [])


def test_target_labels_take_precursor_strings_only():
    pairs, _ = make_pairs(4, seed=0)
    ex = VerbalExplainer(VerbalConfig.precursor(), model=llama(), tokenizer=tokenizer())
    got = ex.target_labels(pairs, ["remain:(A)", "change:b", " remain: (B) ", "change:(a)"])
    assert got == ["remain:(A)", "change:(B)", "remain:(B)", "change:(A)"]
    with pytest.raises(ValueError, match=r"s0-2.*'unchanged'.*precursor"):
        ex.target_labels(pairs, ["remain:(A)", "remain:(A)", "unchanged", "remain:(A)"])
    with pytest.raises(ValueError, match=r"'change:\(C\)'"):
        ex.target_labels(pairs, ["change:(C)"] * 4)
    with pytest.raises(ValueError, match="precursor_labels"):
        ex.target_labels(pairs, [0.0, 1.0, -1.0, 2.0])


# --------------------------------------------------------------------------------- answers


def _prompt_tokens(tok, prompt) -> list[int]:
    if isinstance(prompt, str):
        return tok(prompt)["input_ids"]
    text = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    return tok(text, add_special_tokens=False)["input_ids"]


def test_greedy_answers_are_the_argmax_of_plain_forwards():
    pairs = mixed_pairs()
    model, tok = llama(), tokenizer()
    ex = VerbalExplainer(VerbalConfig.precursor(eval_batch_size=3), model=model, tokenizer=tok)
    want = {}
    for side in ("x", "mod"):
        want[side] = []
        for p in pairs:
            x = p.prompt if side == "x" else remove_by_hand(p)
            prompt = _prompt_tokens(tok, x)
            lps = [
                plain_logprob(model, prompt, tok(c, add_special_tokens=False)["input_ids"])
                for c in p.choices
            ]
            want[side].append(p.choices[int(np.argmax(lps))])
        assert ex.greedy_answers(pairs, side=side) == want[side], side
    assert len(set(want["x"])) > 1  # the answers depend on the prompt
    labels = precursor_labels(want["x"], want["mod"])
    assert {lab.split(":")[0] for lab in labels} == {"remain", "change"}
    with pytest.raises(ValueError, match="side"):
        ex.greedy_answers(pairs, side="x'")


def remove_by_hand(p: Pair):
    """x′ of the pairs here: the one span and the space after it deleted."""
    (span,) = p.remove
    if isinstance(p.prompt, str):
        return p.prompt.replace(f" {span}", "")
    return [{**m, "content": m["content"].replace(f"{span} ", "")} for m in p.prompt]


# ---------------------------------------------------------------------------------- scores


def _sentence_logprob(model, tok, prompt: list[int], sentence: str) -> float:
    ids = tok(sentence, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return plain_logprob(model, prompt, ids)


def _lse(values) -> float:
    m = max(values)
    return m + math.log(sum(math.exp(v - m) for v in values))


def _question(p: Pair) -> str:
    return f'If the text "{p.remove[0]}" were removed, how would your answer change?'


def _reference_prompt(tok, p: Pair, prompt: str, answer: str) -> list[int]:
    """The prompt of each format written out from the package docstring."""
    if prompt == "same-turn":
        if isinstance(p.prompt, str):
            return tok(f"{p.prompt}\n\n{_question(p)}\n")["input_ids"]
        messages = [{"role": "user", "content": f"{p.prompt[0]['content']}\n\n{_question(p)}"}]
        return _prompt_tokens(tok, messages)
    if isinstance(p.prompt, str):
        return tok(f"{p.prompt}{answer}\n\n{_question(p)}\n")["input_ids"]
    messages = [*p.prompt, {"role": "assistant", "content": answer.strip()},
                {"role": "user", "content": _question(p)}]  # fmt: skip
    return _prompt_tokens(tok, messages)


SENTENCES = {
    "choice": lambda c, t: (
        [("unchanged", "My answer would stay the same.")]
        + [(x, f"My answer would change to {x.strip()}.") for x in c]
    ),
    "binned": lambda c, t: [
        ("unchanged", "My answer would stay the same."),
        ("toward", f"I would be more likely to answer {t.strip()}."),
        ("away", f"I would be less likely to answer {t.strip()}."),
    ],
    "precursor": lambda c, t: (
        [(f"remain:{x.strip()}", f"My answer would remain {x.strip()}.") for x in c]
        + [(f"change:{x.strip()}", f"My answer would change to {x.strip()}.") for x in c]
    ),
}


def _score_by_hand(style: str, lp: dict[str, float]) -> float:
    if style == "binned":
        return lp["toward"] - lp["away"]
    if style == "precursor":
        change = [v for k, v in lp.items() if k.startswith("change:")]
        remain = [v for k, v in lp.items() if k.startswith("remain:")]
        return _lse(change) - _lse(remain)
    return _lse([v for k, v in lp.items() if k != "unchanged"]) - lp["unchanged"]


@pytest.mark.parametrize(
    "labels, prompt",
    [("choice", "followup"), ("binned", "followup"), ("precursor", "same-turn"),
     ("precursor", "followup")],
)  # fmt: skip
def test_scores_and_predictions_equal_plain_forwards(labels, prompt):
    pairs = mixed_pairs(6, seed=1)
    pairs[1] = Pair(id="t3", prompt=pairs[1].prompt, choices=(" (A)", " (B)", " (C)"),
                    target=" (C)", remove=pairs[1].remove)  # fmt: skip
    model, tok = llama(), tokenizer()
    ex = VerbalExplainer(VerbalConfig(labels=labels, prompt=prompt, answer="target",
                                      eval_batch_size=4), model=model, tokenizer=tok)  # fmt: skip
    ref_scores, ref_labels = [], []
    for p in pairs:
        ids = _reference_prompt(tok, p, prompt, p.target)
        lp = {
            k: _sentence_logprob(model, tok, ids, s)
            for k, s in SENTENCES[labels](p.choices, p.target)
        }
        ref_scores.append(_score_by_hand(labels, lp))
        best = max(lp.values())
        ref_labels.append(next(k for k, v in lp.items() if v == best))
    got = ex.scores(pairs)
    assert got.dtype == np.float64 and got.shape == (len(pairs),)
    np.testing.assert_allclose(got, ref_scores, atol=1e-4, rtol=0)
    assert np.ptp(got) > 1e-3  # the scores differ between pairs
    assert list(ex.predict(pairs)) == ref_labels
    one_pass = ex.label_logprobs(pairs)
    assert list(ex.predict(pairs, logprobs=one_pass)) == ref_labels
    assert ex.scores(pairs, logprobs=one_pass).tolist() == got.tolist()
    rows = [4, 0, 2]
    np.testing.assert_allclose(ex.scores(pairs, rows=rows), got[rows], atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="candidate log-probabilities"):
        ex.scores(pairs, logprobs=one_pass[:2])


# --------------------------------------------------------------------------------- training


PRECURSOR_KEYS = {"unchanged": "remain:(B)", " (A)": "change:(A)", " (B)": "change:(B)"}


def test_fit_on_precursor_labels_learns_them():
    train, y = make_pairs(12, seed=1)
    y = [PRECURSOR_KEYS[v] for v in y]
    assert len(set(y)) == 3
    cfg = VerbalConfig.precursor(feature_key="key", template="If {feature} were removed ?", **LORA)
    tok = tokenizer()
    ex = VerbalExplainer(cfg, model=llama(), tokenizer=tok)
    before = list(ex.predict(train))
    ex.fit(train, y)
    assert ex.info["epoch_loss"][-1] < 0.2 * ex.info["epoch_loss"][0]
    pred = list(ex.predict(train))
    assert pred == y and before != y
    sentences = {"remain:(B)": "My answer would remain (B).",
                 "change:(A)": "My answer would change to (A).",
                 "change:(B)": "My answer would change to (B)."}  # fmt: skip
    want = [tok.decode(tok(sentences[lab], add_special_tokens=False)["input_ids"]) for lab in y]
    assert ex.explain(train[:4]) == want[:4]
    assert list(ex.predict(train, mode="generate")) == pred


# ---------------------------------------------------------------------------------- parsing

PRECURSOR_TEXT = {
    "My answer would remain (A).": "remain:(A)",
    "my answer would REMAIN ( b )": "remain:(B)",
    "It stays at B.": "remain:(B)",
    "My answer would change to (B).": "change:(B)",
    "Sure. My answer would change to <<<Answer: A>>>.": "change:(A)",
}
PRECURSOR_BAD = [
    "My answer would stay the same.",
    "My answer would remain unchanged.",
    "My answer would remain (A). My answer would change to (B).",
    "My answer would not change to (B).",
    "My answer would change to (E).",
    "My answer would remain (A) and remain (B).",
    "I would be more likely to answer (B).",
    "",
]


@pytest.mark.parametrize("text, label", PRECURSOR_TEXT.items())
def test_parse_reads_precursor_sentences(text, label):
    assert parse_explanation(text, CHOICES, "precursor") == label


@pytest.mark.parametrize("text", PRECURSOR_BAD)
def test_parse_refuses_other_precursor_text(text):
    assert parse_explanation(text, CHOICES, "precursor") == UNPARSED


def test_other_styles_do_not_read_remain():
    assert parse_explanation("My answer would remain (A).", CHOICES) == UNPARSED
    assert parse_explanation("My answer would remain (A).", CHOICES, "choice") == UNPARSED


from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@given(
    kind=st.sampled_from(["remain", "change"]),
    choice=st.sampled_from(["(A)", "(B)", "(C)", "(D)"]),
    before=CHATTER,
    after=CHATTER,
)
def test_precursor_sentences_parse_back_through_chatter(kind, choice, before, after):
    choices = (" (A)", " (B)", " (C)", " (D)")
    label = f"{kind}:{choice}"
    sentence = label_sentence(label, choices, " (A)", "precursor")
    assert parse_explanation(f"{before} {sentence} {after}", choices, "precursor") == label
