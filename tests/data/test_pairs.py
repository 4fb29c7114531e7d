"""The pair record: x' construction, validation messages, pair files and the error policy."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from introspect.data import (
    Pair,
    PairError,
    PairFileError,
    ReadReport,
    ablate_each,
    coerce_pairs,
    iter_coerced,
    iter_pairs,
    read_pairs,
    remove_spans,
    write_pairs,
    write_skipped,
)


def _pair(**kw):
    obj = {
        "id": "p1",
        "prompt": "Is 7 prime? I think the answer is (A). Answer with (A) or (B).",
        "remove": ["I think the answer is (A)."],
        "choices": ["(A)", "(B)"],
        "target": "(A)",
    }
    obj.update(kw)
    return {k: v for k, v in obj.items() if v is not None}


# ---------------------------------------------------------------------------------------------
# x' construction
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,span,want",
    [
        ("Is 7 prime? I think (A). Answer:", "I think (A).", "Is 7 prime? Answer:"),
        ("I think (A). Is 7 prime?", "I think (A).", "Is 7 prime?"),
        ("Is 7 prime? I think (A).", " I think (A).", "Is 7 prime?"),
        ("Question\n\nHint: it is (B).\n\nAnswer:", "Hint: it is (B).", "Question\n\nAnswer:"),
        ("How do I bake bread quietly, at night?", " quietly", "How do I bake bread, at night?"),
        ("a X b X c", "X", "a b c"),
    ],
)
def test_remove_spans_tidies_whitespace(text, span, want):
    assert remove_spans(text, [span]) == want


def test_remove_span_not_found():
    with pytest.raises(KeyError):
        remove_spans("abc", ["zzz"])


@given(
    words=st.lists(
        st.sampled_from(["alpha", "beta", "gamma", "delta", "(A)", "?", "\n"]),
        min_size=2,
        max_size=12,
    ),
    i=st.integers(0, 11),
)
def test_remove_spans_never_leaves_double_spaces(words, i):
    text = " ".join(words)
    span = words[i % len(words)]
    if not span.strip():
        return
    out = remove_spans(text, [span])
    assert "  " not in out
    assert out == out.strip() or text != text.strip()


def test_chat_prompt_spans_are_removed_from_message_contents():
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+2? My friend says 5. Answer with a number."},
    ]
    p = Pair.from_json(
        _pair(prompt=messages, remove=["My friend says 5."], choices=["4", "5"], target="5")
    )
    assert p.is_chat
    assert p.x_mod[1]["content"] == "What is 2+2? Answer with a number."
    assert p.x_mod[0] == messages[0]


def test_prompt_mod_is_used_as_given():
    p = Pair.from_json(_pair(remove=None, prompt_mod="Is 7 prime? Answer with (A) or (B)."))
    assert p.x_mod == "Is 7 prime? Answer with (A) or (B)."
    assert p.to_json()["prompt_mod"] == p.x_mod


def test_json_round_trip():
    p = Pair.from_json(_pair(meta={"task": "t"}))
    assert Pair.from_json(json.loads(json.dumps(p.to_json()))) == p


def test_ablate_each_makes_one_pair_per_feature_sharing_x():
    prompt = "Context one. Context two. Question? Answer:"
    pairs = ablate_each(
        "q7", prompt, {"s1": ["Context one."], "s2": ["Context two."]}, [" yes", " no"], " yes"
    )
    assert [p.id for p in pairs] == ["q7/s1", "q7/s2"]
    assert {p.x_key for p in pairs} == {pairs[0].x_key}
    assert [p.meta["feature"] for p in pairs] == ["s1", "s2"]
    assert all(p.meta["x_id"] == "q7" for p in pairs)
    assert pairs[1].x_mod == "Context one. Question? Answer:"


# ---------------------------------------------------------------------------------------------
# Validation messages
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change,message",
    [
        ({"id": None}, "missing field 'id'"),
        ({"id": 3}, "'id' must be a non-empty string"),
        ({"prompt": ""}, "'prompt' is empty"),
        ({"prompt": 5}, "'prompt' must be a string or a list of chat messages"),
        ({"prompt": [{"role": "robot", "content": "hi"}]}, "'prompt[0].role' must be one of"),
        ({"choices": []}, "'choices' must be a non-empty list"),
        ({"choices": ["(A)", "(A)"]}, "'choices' contains duplicates"),
        ({"target": "(C)"}, "'target' '(C)' is not one of the choices"),
        ({"remove": ["not there"]}, "'remove' span 'not there' is not in the prompt"),
        ({"remove": None}, "give exactly one of 'remove'"),
        ({"prompt_mod": "x"}, "give exactly one of 'remove'"),
        ({"remove": None, "prompt_mod": _pair()["prompt"]}, "x' is identical to x"),
        ({"meta": [1]}, "'meta' must be an object"),
        ({"colour": "red"}, "unknown field(s) colour"),
    ],
)
def test_validation_messages(change, message):
    obj = _pair()
    for k, v in change.items():
        if v is None:
            obj.pop(k, None)
        else:
            obj[k] = v
    with pytest.raises(PairError) as err:
        Pair.from_json(obj, where="f.jsonl:3")
    assert message in str(err.value)
    assert str(err.value).startswith("f.jsonl:3")


def test_error_names_the_id():
    with pytest.raises(PairError, match=r"id 'p1': 'target'"):
        Pair.from_json(_pair(target="(C)"))


# ---------------------------------------------------------------------------------------------
# Pair files and the error policy
# ---------------------------------------------------------------------------------------------


def _write_lines(path, lines):
    path.write_bytes(
        b"".join(line if isinstance(line, bytes) else line.encode() + b"\n" for line in lines)
    )


def _good(i):
    return json.dumps(_pair(id=f"p{i}"))


def test_one_bad_line_fails_naming_the_line(tmp_path):
    f = tmp_path / "pairs.jsonl"
    _write_lines(f, [_good(1), _good(2), '{"id": "p3", "prompt": ', _good(4)])
    with pytest.raises(PairFileError, match=r"pairs.jsonl:3: not valid JSON"):
        read_pairs(f)


@pytest.mark.parametrize(
    "bad,reason",
    [
        ('{"id": "p3", "prompt": ', "not valid JSON"),
        (b'{"id": "p3", "prompt": "caf\xe9"}\n', "not valid UTF-8"),
        (json.dumps(_pair(id="p3", target="(Z)")), "'target' '(Z)' is not one of the choices"),
        (json.dumps(_pair(id="p1")), "duplicate id"),
        (
            json.dumps(_pair(id="p3", remove=["absent"])),
            "'remove' span 'absent' is not in the prompt",
        ),
        ("[1, 2]", "a pair must be a JSON object"),
    ],
)
def test_skip_keeps_every_good_pair_and_reports_the_bad_one(tmp_path, bad, reason):
    f = tmp_path / "pairs.jsonl"
    _write_lines(f, [_good(1), _good(2), bad, "", _good(4)])
    pairs, report = read_pairs(f, on_error="skip")
    assert [p.id for p in pairs] == ["p1", "p2", "p4"]
    assert len(report.skipped) == 1
    s = report.skipped[0]
    assert s.line == 3 and reason in s.reason
    assert s.describe().startswith(f"{f}:3")
    with pytest.raises(PairFileError, match=r"pairs\.jsonl:3"):
        read_pairs(f, on_error="fail")


def test_write_then_stream_round_trip(tmp_path):
    pairs = [Pair.from_json(_pair(id=f"p{i}")) for i in range(50)]
    out = tmp_path / "sub" / "p.jsonl"
    assert write_pairs(out, pairs) == 50
    assert list(iter_pairs(out)) == pairs
    assert not list(tmp_path.glob("sub/.*.tmp"))


def test_write_refuses_duplicate_ids_and_leaves_no_file(tmp_path):
    p = Pair.from_json(_pair())
    out = tmp_path / "p.jsonl"
    with pytest.raises(PairError, match="duplicate id"):
        write_pairs(out, [p, p])
    assert not out.exists()


def test_skipped_report_file(tmp_path):
    f = tmp_path / "pairs.jsonl"
    _write_lines(f, [_good(1), "nope"])
    _, report = read_pairs(f, on_error="skip")
    rep = tmp_path / "skipped.jsonl"
    write_skipped(rep, report.skipped)
    row = json.loads(rep.read_text())
    assert row["line"] == 2 and "not valid JSON" in row["reason"] and row["raw"] == "nope"


def test_bad_policy_name():
    with pytest.raises(ValueError, match="on_error must be one of"):
        list(iter_pairs("x.jsonl", on_error="ignore"))


# ---------------------------------------------------------------------------------------------
# Pairs built in code
# ---------------------------------------------------------------------------------------------


def _items():
    chat = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+2? My friend says 5. Answer with a number."},
    ]
    return [
        _pair(id="p1"),
        _pair(id="p2", remove="I think the answer is (A).", meta={"task": "t", "k": [1, 2]}),
        _pair(id="p3", remove=None, prompt_mod="Is 7 prime? Answer with (A) or (B)."),
        _pair(id="p4", prompt=chat, remove=["My friend says 5."], choices=["4", "5"], target="5"),
        _pair(id="p5", meta=None),
    ]


def _as_file(tmp_path, items):
    f = tmp_path / "items.jsonl"
    _write_lines(f, [json.dumps(item) for item in items])
    return f


def test_coerce_gives_what_a_pair_file_gives(tmp_path):
    items = _items()
    from_file, _ = read_pairs(_as_file(tmp_path, items))
    assert coerce_pairs(items) == from_file
    assert list(iter_coerced(iter(items))) == from_file
    assert all(isinstance(p, Pair) for p in coerce_pairs(items))


_BAD_ITEMS = [
    ({"id": None}, "missing field 'id'"),
    ({"prompt": None}, "missing field 'prompt'"),
    ({"choices": None}, "missing field 'choices'"),
    ({"id": 3}, "'id' must be a non-empty string"),
    ({"prompt": 5}, "'prompt' must be a string or a list of chat messages"),
    ({"choices": "(A)"}, "'choices' must be a non-empty list of strings"),
    ({"target": 1}, "'target' must be a string"),
    ({"target": "(C)"}, "'target' '(C)' is not one of the choices"),
    ({"remove": ["not there"]}, "'remove' span 'not there' is not in the prompt"),
    ({"remove": None, "prompt_mod": _pair()["prompt"]}, "x' is identical to x"),
    ({"meta": [1]}, "'meta' must be an object"),
    ({"colour": "red"}, "unknown field(s) colour"),
]


def _bad_item(change):
    obj = _pair(id="p3")
    for k, v in change.items():
        if v is None:
            obj.pop(k, None)
        else:
            obj[k] = v
    return obj


@pytest.mark.parametrize("change,reason", _BAD_ITEMS)
def test_bad_item_fails_with_the_file_readers_message_naming_the_item(tmp_path, change, reason):
    items = [_pair(id="p1"), _pair(id="p2"), _bad_item(change), _pair(id="p4")]
    f = _as_file(tmp_path, items)
    with pytest.raises(PairFileError) as from_file:
        read_pairs(f)
    with pytest.raises(PairFileError) as from_items:
        coerce_pairs(items)
    message = str(from_items.value)
    assert message == str(from_file.value).replace(f"{f}:3", "item 3")
    assert reason in message and "\n" not in message
    assert message.startswith("item 3: id 'p3': " if "id" not in change else "item 3: ")
    assert from_items.value.where == "item 3"


def test_non_object_item_is_reported_like_a_non_object_line():
    with pytest.raises(PairFileError, match=r"^item 2: a pair must be a JSON object, got list$"):
        coerce_pairs([_pair(id="p1"), [1, 2]])


def test_skip_keeps_every_good_item_and_reports_the_bad_ones(tmp_path):
    items = [_pair(id="p1"), _bad_item({"target": "(C)"}), _pair(id="p4"), "nope", _pair(id="p5")]
    report = ReadReport()
    pairs = coerce_pairs(items, on_error="skip", report=report)
    assert [p.id for p in pairs] == ["p1", "p4", "p5"]
    assert report.rows == 5
    assert [(s.line, s.pair_id) for s in report.skipped] == [(2, "p3"), (4, None)]
    first = report.skipped[0]
    assert first.describe().startswith("item 2, id 'p3': 'target' '(C)' is not one of")
    assert json.loads(first.raw) == items[1]
    rep = tmp_path / "skipped.jsonl"
    write_skipped(rep, report.skipped)
    rows = [json.loads(line) for line in rep.read_text().splitlines()]
    assert [r["line"] for r in rows] == [2, 4] and rows[1]["raw"] == '"nope"'


def test_pair_objects_pass_through():
    made = [Pair.from_json(_pair(id=f"p{i}")) for i in range(3)]
    built = Pair("b1", "Is 7 prime? I think (A).", ("(A)", "(B)"), "(A)", remove=("I think (A).",))
    items = [made[0], _pair(id="d1"), made[1], built, made[2]]
    out = coerce_pairs(items)
    assert [p.id for p in out] == ["p0", "d1", "p1", "b1", "p2"]
    assert out[0] is made[0] and out[2] is made[1] and out[3] is built and out[4] is made[2]


def test_a_pair_object_is_checked_like_a_dict():
    bad = Pair("b1", "Is 7 prime?", ("(A)", "(B)"), "(C)", remove=("prime",))
    with pytest.raises(PairFileError, match=r"^item 2: id 'b1': 'target' '\(C\)' is not one of"):
        coerce_pairs([_pair(id="p1"), bad])


def test_duplicate_ids_across_pairs_and_dicts_are_caught():
    first = Pair.from_json(_pair(id="p1"))
    items = [first, _pair(id="p2"), _pair(id="p1"), Pair.from_json(_pair(id="p2"))]
    with pytest.raises(PairFileError) as err:
        coerce_pairs(items)
    assert str(err.value) == "item 3: id 'p1': duplicate id (an earlier item has it)"
    report = ReadReport()
    pairs = coerce_pairs(items, on_error="skip", report=report)
    assert [p.id for p in pairs] == ["p1", "p2"] and pairs[0] is first
    assert [(s.line, s.pair_id) for s in report.skipped] == [(3, "p1"), (4, "p2")]


def test_iter_coerced_streams_the_items():
    def items():
        yield _pair(id="p1")
        yield _pair(id="p2")
        raise AssertionError("read past what was asked for")

    stream = iter_coerced(items())
    assert next(stream).id == "p1"
    assert next(stream).id == "p2"


def test_coerce_bad_policy_name_fails_at_once():
    with pytest.raises(ValueError, match="on_error must be one of"):
        iter_coerced([], on_error="ignore")
    with pytest.raises(ValueError, match="on_error must be one of"):
        coerce_pairs([], on_error="ignore")
