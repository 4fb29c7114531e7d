"""Probe explainers: recovery of a linear signal, the shuffled-label control, difference mode,
save/load, and streaming from run directories (single and multi-rank) against in-memory fits."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch
from asserts import assert_close
from explain_synth import linear_data, pearson_by_hand, run_data, write_run

import introspect.explain as explain
from introspect.explain import ArraySource, ProbeConfig, ProbeExplainer, fit_ridge
from introspect.labels import LabelError, Labels, shuffle_labels

TRAIN, TEST = np.arange(0, 1000), np.arange(1000, 1500)

SETTINGS = {
    "ridge": dict(solver="ridge"),
    "gradient": dict(solver="gradient", epochs=8, batch_size=64, lr=1e-2),
    "mlp": dict(solver="gradient", head="mlp", hidden_units=16, epochs=8, batch_size=64),
}


@pytest.fixture(scope="module")
def linear():
    return linear_data(1500, 12, seed=0, noise=0.3)


@pytest.mark.parametrize("kind", list(SETTINGS))
def test_recovers_a_linear_signal_on_held_out_pairs(linear, kind):
    x, y, _ = linear
    probe = ProbeExplainer(**SETTINGS[kind]).fit(x, y, rows=TRAIN)
    pred = probe.predict(x, rows=TEST)
    assert pred.shape == (500,)
    assert pearson_by_hand(pred, y[TEST]) > 0.9
    assert probe.info["n_train"] == 1000


@pytest.mark.parametrize("kind", list(SETTINGS))
def test_shuffled_labels_leave_nothing_to_recover(linear, kind):
    x, y, _ = linear
    ys = shuffle_labels(y, seed=1)
    probe = ProbeExplainer(**SETTINGS[kind]).fit(x, ys, rows=TRAIN)
    assert abs(pearson_by_hand(probe.predict(x, rows=TEST), ys[TEST])) < 0.2


@pytest.mark.parametrize("kind", ["ridge", "gradient"])
def test_difference_mode_reads_the_pair_and_direct_mode_cannot(kind):
    rng = np.random.default_rng(3)
    hx = rng.normal(size=(1500, 10)).astype(np.float32)
    step = rng.normal(size=(1500, 10)).astype(np.float32)
    hm = hx + step
    y = step.astype(np.float64) @ rng.normal(size=10) + 0.2 * rng.normal(size=1500)
    diff = ProbeExplainer(mode="difference", **SETTINGS[kind]).fit((hx, hm), y, rows=TRAIN)
    assert pearson_by_hand(diff.predict((hx, hm), rows=TEST), y[TEST]) > 0.9
    direct = ProbeExplainer(mode="direct", **SETTINGS[kind]).fit(hx, y, rows=TRAIN)
    assert abs(pearson_by_hand(direct.predict(hx, rows=TEST), y[TEST])) < 0.2


def test_ridge_probe_equals_fit_ridge(linear):
    x, y, _ = linear
    probe = ProbeExplainer(solver="ridge", cv_folds=4, seed=9).fit(x, y, rows=TRAIN)
    ref = fit_ridge(x[TRAIN], y[TRAIN], folds=4, seed=9)
    assert probe.info["lambda"] == ref.lam
    np.testing.assert_allclose(probe.info["cv_mse"], ref.cv_mse, rtol=1e-9)
    np.testing.assert_allclose(probe.predict(x, rows=TEST), ref.predict(x[TEST]), atol=1e-4)


@pytest.mark.parametrize("kind", list(SETTINGS))
def test_save_and_load_give_identical_predictions(tmp_path, linear, kind):
    x, y, _ = linear
    probe = ProbeExplainer(mode="direct", **SETTINGS[kind]).fit(x, y, rows=TRAIN)
    probe.save(tmp_path / "probe")
    assert {p.name for p in (tmp_path / "probe").iterdir()} == {
        "explainer.json",
        "weights.safetensors",
    }
    for back in (explain.load(tmp_path / "probe"), ProbeExplainer.load(tmp_path / "probe")):
        assert isinstance(back, ProbeExplainer) and back.config == probe.config
        assert back.info == probe.info
        np.testing.assert_array_equal(back.predict(x), probe.predict(x))


def _fit_both(tmp_path, config: ProbeConfig, shard_rows=64):
    """The same probe fitted on a run (labels aligned by id) and on in-memory arrays cut into
    the run's shards (labels in row order)."""
    data = run_data(300, 8, layers=(1, 3), seed=4)
    run = write_run(tmp_path / "run", data, shard_rows=shard_rows)
    hx = [data["hx"][1], data["hx"][3]]
    hm = [data["hm"][1], data["hm"][3]]
    feats = np.hstack(hx).astype(np.float64)
    if config.mode == "difference":
        feats = np.hstack(hm) - feats
    y = linear_data(300, 16, seed=5)[2] @ (feats - feats.mean(0)).T
    y = y / y.std() + 0.2 * np.random.default_rng(6).normal(size=300)
    order = np.random.default_rng(7).permutation(300)
    labels = Labels(tuple(data["ids"][i] for i in order), y[order])
    train = np.arange(300) % 3 != 0  # every third row held out
    streamed = ProbeExplainer(config).fit(run, labels, rows=train)
    source = ArraySource(hx, hm if config.mode == "difference" else None, block_rows=shard_rows)
    in_memory = ProbeExplainer(config).fit(source, y, rows=train)
    return run, source, streamed, in_memory, y, feats


STREAMED = {
    "direct": ProbeConfig(mode="direct", layers=(1, 3), solver="gradient", epochs=3, batch_size=16),
    "difference": ProbeConfig(
        mode="difference", layers=(1, 3), solver="gradient", epochs=3, batch_size=16
    ),
    "mlp": ProbeConfig(
        layers=(1, 3), solver="gradient", head="mlp", epochs=2, hidden_units=8, batch_size=16
    ),
}


@pytest.mark.parametrize("config", list(STREAMED.values()), ids=list(STREAMED))
def test_streaming_from_a_run_trains_exactly_like_in_memory(tmp_path, config):
    run, source, streamed, in_memory, y, _ = _fit_both(tmp_path, config)
    assert streamed.layers == [1, 3] and streamed.position == "last"
    assert set(streamed.params) == set(in_memory.params)
    for k in streamed.params:
        assert_close(streamed.params[k], in_memory.params[k], atol=1e-6, rtol=1e-6, name=k)
    assert_close(
        torch.from_numpy(streamed.predict(run)),
        torch.from_numpy(in_memory.predict(source)),
        atol=1e-5,
        rtol=1e-5,
        name="pred",
    )
    np.testing.assert_allclose(streamed.info["epoch_mse"], in_memory.info["epoch_mse"], rtol=1e-5)
    assert pearson_by_hand(streamed.predict(run, rows=np.arange(0, 300, 3)), y[::3]) > 0.5


def test_ridge_from_a_run_matches_closed_form_on_the_arrays(tmp_path):
    config = ProbeConfig(mode="difference", layers=(1, 3), solver="ridge", cv_folds=3)
    run, _, streamed, in_memory, y, feats = _fit_both(tmp_path, config, shard_rows=50)
    train = np.arange(300) % 3 != 0
    ref = fit_ridge(feats[train], y[train], folds=3, seed=0)
    assert streamed.info["lambda"] == ref.lam
    np.testing.assert_allclose(streamed.info["cv_mse"], ref.cv_mse, rtol=1e-8)
    np.testing.assert_allclose(streamed.predict(run), ref.predict(feats), atol=1e-4)
    np.testing.assert_allclose(in_memory.predict(run), ref.predict(feats), atol=1e-4)


def test_multi_rank_run_gives_rows_in_pair_order(tmp_path):
    data = run_data(101, 6, layers=(2,), seed=8)
    single = write_run(tmp_path / "single", data, shard_rows=16)
    multi = write_run(tmp_path / "multi", data, shard_rows=16, world_size=2)
    assert multi.world_size == 2
    y = np.random.default_rng(0).normal(size=101)
    probe = ProbeExplainer(solver="ridge", lambdas=(0.5,)).fit(data["hx"][2], y)
    np.testing.assert_array_equal(probe.predict(multi), probe.predict(data["hx"][2]))
    labels = Labels(tuple(data["ids"]), y)
    a = ProbeExplainer(solver="ridge", lambdas=(0.5,)).fit(multi, labels)
    b = ProbeExplainer(solver="ridge", lambdas=(0.5,)).fit(single, labels)
    assert_close(a.params["weight"], b.params["weight"], atol=1e-6, rtol=1e-5, name="weight")


def test_streaming_memory_stays_below_the_size_of_the_hidden_states(tmp_path):
    n = 40000
    data = run_data(n, 32, layers=(0, 1), seed=9)
    run = write_run(tmp_path / "big", data, shard_rows=500)
    total = sum(a.nbytes for a in [*data["hx"].values(), *data["hm"].values()])
    y = np.random.default_rng(1).normal(size=n)
    config = ProbeConfig(mode="difference", solver="gradient", epochs=1, batch_size=512)
    warm = (data["hx"][0][:64], data["hm"][0][:64])  # first use imports lazily loaded modules
    ProbeExplainer(config).fit(warm, y[:64]).predict(warm)
    del data, warm
    tracemalloc.start()
    try:
        probe = ProbeExplainer(config).fit(run, y)
        pred = probe.predict(run)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert pred.shape == (n,) and np.isfinite(pred).all()
    assert peak < total / 4, f"peak {peak} bytes while the hidden states take {total}"


def test_errors_are_clear(tmp_path, linear):
    x, y, _ = linear
    with pytest.raises(ValueError, match="needs the hidden states of x'"):
        ProbeExplainer(mode="difference").fit(x, y)
    with pytest.raises(RuntimeError, match="not fitted"):
        ProbeExplainer().predict(x)
    probe = ProbeExplainer(lambdas=(1.0,)).fit(x, y)
    with pytest.raises(ValueError, match="5 features; this probe was fitted on 12"):
        probe.predict(x[:, :5])
    with pytest.raises(ValueError, match="labels carry pair ids"):
        ProbeExplainer().fit(x, Labels(tuple(map(str, range(1500))), y))
    with pytest.raises(ValueError, match="1499 labels for 1500 rows"):
        ProbeExplainer().fit(x, y[:-1])
    data = run_data(20, 4, layers=(0,), seed=2)
    run = write_run(tmp_path / "run", data, shard_rows=8)
    partial = Labels(tuple(data["ids"][:19]), np.zeros(19))
    with pytest.raises(LabelError, match=repr(data["ids"][19])):
        ProbeExplainer().fit(run, partial)
    with pytest.raises(ValueError, match=r"layer\(s\) \[5\] were not captured"):
        ProbeExplainer(layers=(5,)).fit(run, np.zeros(20))
    with pytest.raises(ValueError, match="not finite"):
        ProbeExplainer().fit(x, np.where(np.arange(1500) == 3, np.nan, y))
