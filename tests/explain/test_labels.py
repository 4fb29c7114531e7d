"""Labels: from a source run by pair id, seeded noise, shuffling, files."""

from __future__ import annotations

import numpy as np
import pytest
from explain_synth import run_data, write_run
from hypothesis import given
from hypothesis import strategies as st

from introspect.labels import (
    LabelError,
    Labels,
    apply_noise,
    labels_from_run,
    load_labels,
    save_labels,
    shuffle_labels,
)


def test_labels_from_a_source_run_align_by_id(tmp_path):
    data = run_data(50, 4, layers=(0,), seed=1)
    order = np.random.default_rng(0).permutation(50)
    source = write_run(tmp_path / "source", data, shard_rows=16, order=order)
    current_ids = data["ids"][::-1]
    labels = labels_from_run(source, ids=current_ids)
    delta = data["f_mod"] - data["f_x"]
    expect = [delta[data["ids"].index(i)] for i in current_ids]
    assert labels.ids == tuple(current_ids)
    np.testing.assert_array_equal(labels.values, expect)
    assert labels.kind == "scalar"
    assert labels.source["model"] == "synthetic" and labels.source["field"] == "delta"
    by_path = labels_from_run(str(tmp_path / "source"), field="f_x")
    assert by_path.ids == tuple(data["ids"][i] for i in order)
    np.testing.assert_array_equal(by_path.values, data["f_x"][order])


def test_missing_pair_ids_are_named(tmp_path):
    data = run_data(20, 4, layers=(0,), seed=2)
    source = write_run(tmp_path / "source", data, shard_rows=8)
    wanted = [*data["ids"][:3], "not-there", "also-missing"]
    with pytest.raises(
        LabelError, match=r"2 pair id\(s\) have no label.*'not-there', 'also-missing'"
    ):
        labels_from_run(source, ids=wanted)


def test_duplicate_ids_and_mismatched_lengths_are_errors():
    with pytest.raises(LabelError, match=r"duplicate pair ids.*'b'"):
        Labels(("a", "b", "b"), [1.0, 2.0, 3.0])
    with pytest.raises(LabelError, match="2 ids but 3"):
        Labels(("a", "b"), [1.0, 2.0, 3.0])
    with pytest.raises(LabelError, match="all numbers or all strings"):
        Labels(("a", "b"), np.array(["x", 1.0], dtype=object))


@pytest.mark.parametrize("n, p", [(100, 0.3), (7, 0.5), (33, 0.05), (10, 0.0), (10, 1.0), (1, 0.5)])
def test_noise_replaces_exactly_round_p_n_deterministically(n, p):
    values = np.arange(n, dtype=np.float64) * 10.0
    first = apply_noise(values, p, seed=3)
    again = apply_noise(values, p, seed=3)
    k = int(np.floor(p * n + 0.5))
    assert first.replaced.dtype == np.int64
    assert len(first.replaced) == k == len(set(first.replaced.tolist()))
    assert np.array_equal(first.replaced, np.sort(first.replaced))
    assert np.array_equal(first.replaced, again.replaced)
    assert np.array_equal(first.labels, again.labels)
    kept = np.setdiff1d(np.arange(n), first.replaced)
    np.testing.assert_array_equal(first.labels[kept], values[kept])
    assert set(first.labels[first.replaced].tolist()) <= set(values.tolist())


@given(
    n=st.integers(1, 300),
    p=st.floats(0.0, 1.0, allow_nan=False),
    seed=st.integers(0, 2**32 - 1),
)
def test_noise_count_property(n, p, seed):
    values = np.random.default_rng(seed).normal(size=n)
    res = apply_noise(values, p, seed)
    assert len(res.replaced) == int(np.floor(p * n + 0.5))
    changed = np.flatnonzero(res.labels != values)
    assert set(changed.tolist()) <= set(res.replaced.tolist())


def test_noise_draws_from_the_empirical_distribution():
    values = np.repeat([0.0, 1.0], [900, 100])
    res = apply_noise(values, 1.0, seed=0)
    assert len(res.replaced) == 1000
    assert 0.07 < res.labels.mean() < 0.13
    other = apply_noise(values, 0.5, seed=1)
    assert not np.array_equal(apply_noise(values, 0.5, seed=0).replaced, other.replaced)


def test_noise_on_labels_keeps_ids_and_records_itself():
    labels = Labels(("a", "b", "c", "d"), ["changed", "unchanged", "unchanged", "changed"])
    res = apply_noise(labels, 0.5, seed=4)
    assert isinstance(res.labels, Labels) and res.labels.ids == labels.ids
    assert res.labels.kind == "categorical" and len(res.replaced) == 2
    assert res.labels.source["noise"] == {"p": 0.5, "seed": 4, "replaced": 2}
    assert "noise" not in labels.source
    with pytest.raises(ValueError, match="p must lie in"):
        apply_noise(labels, 1.5, seed=0)


def test_shuffle_is_a_seeded_permutation():
    values = np.random.default_rng(0).normal(size=200)
    a = shuffle_labels(values, seed=1)
    assert np.array_equal(np.sort(a), np.sort(values))
    assert not np.array_equal(a, values)
    assert np.array_equal(a, shuffle_labels(values, seed=1))
    labels = Labels(tuple(f"p{i}" for i in range(200)), values)
    s = shuffle_labels(labels, seed=1)
    assert s.ids == labels.ids and np.array_equal(s.values, a)


@pytest.mark.parametrize("values", [[0.5, -1.25, 3e-17], ["changed", "unchanged", "changed"]])
def test_save_and_load_round_trip(tmp_path, values):
    labels = Labels(("x", "y", "z"), values, {"model": "m0"})
    back = load_labels(save_labels(labels, tmp_path / "labels.json"))
    assert back.ids == labels.ids and back.kind == labels.kind
    assert back.values.tolist() == labels.values.tolist()
    assert back.source == {"model": "m0"}
