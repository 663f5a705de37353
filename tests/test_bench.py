"""Tests of the benchmark harness: baselines against brute force, metrics, and a tiny end-to-end run."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from benchmarks import baselines
from benchmarks.baselines import MethodUnavailable, data_oob, knn_shapley, loss_only
from benchmarks.cli import main
from benchmarks.protocol import (
    align_values,
    discovery_area,
    removal_accuracy,
    run_protocol,
    write_report,
)
from benchmarks.registry import METHODS, register
from lightning_dv.datasets import make_split
from lightning_dv.metrics import detection_auroc
from lightning_dv.values import DataValues


# -- KNN-Shapley against brute-force Shapley ---------------------------------------------------------
def _knn_utility(subset, x, y, xv, yv, k):
    """U(S): mean over validation points of (1/K) * #correct labels among the min(K, |S|) nearest in S."""
    if not subset:
        return 0.0
    s = np.array(subset)
    total = 0.0
    for v, lab in zip(xv, yv):
        d = ((x[s] - v) ** 2).sum(1)
        nearest = s[np.argsort(d)[:k]]
        total += (y[nearest] == lab).sum() / k
    return total / len(xv)


def _brute_shapley(x, y, xv, yv, k):
    n = len(x)
    phi = np.zeros(n)
    perms = list(itertools.permutations(range(n)))
    for perm in perms:
        before = []
        u_before = 0.0
        for i in perm:
            before.append(i)
            u_after = _knn_utility(before, x, y, xv, yv, k)
            phi[i] += u_after - u_before
            u_before = u_after
    return phi / len(perms)


@pytest.mark.parametrize("k", [1, 3, 10])
def test_knn_shapley_matches_brute_force_permutation_enumeration(k):
    rng = np.random.default_rng(k)
    x = rng.normal(size=(6, 2))
    y = rng.integers(0, 2, size=6)
    xv = rng.normal(size=(3, 2))
    yv = rng.integers(0, 2, size=3)
    exact = _brute_shapley(x, y, xv, yv, k)
    fast = knn_shapley(x, y, xv, yv, k=k, chunk=2)  # chunk < J exercises the chunked accumulation
    np.testing.assert_allclose(fast.values, exact, atol=1e-12)
    # Efficiency: the values add up to the utility of the full set.
    assert math.isclose(fast.values.sum(), _knn_utility(list(range(6)), x, y, xv, yv, k), abs_tol=1e-12)


def test_knn_shapley_ranks_flipped_labels_low_on_clustered_data():
    rng = np.random.default_rng(0)
    x = np.r_[rng.normal(-3, 1, size=(100, 2)), rng.normal(3, 1, size=(100, 2))]
    y = np.r_[np.zeros(100), np.ones(100)].astype(int)
    xv = np.r_[rng.normal(-3, 1, size=(30, 2)), rng.normal(3, 1, size=(30, 2))]
    yv = np.r_[np.zeros(30), np.ones(30)].astype(int)
    flipped = rng.choice(200, size=20, replace=False)
    y[flipped] = 1 - y[flipped]
    v = knn_shapley(x, y, xv, yv, k=5)
    assert detection_auroc(v.values, flipped) > 0.95


def test_knn_shapley_rejects_bad_arguments():
    x, y = np.zeros((3, 1)), np.zeros(3, dtype=int)
    with pytest.raises(ValueError, match="k"):
        knn_shapley(x, y, x, y, k=0)
    with pytest.raises(ValueError, match="regression"):
        knn_shapley(x, np.array([0.5, 1.2, 3.3]), x, y)


# -- Data-OOB, loss-only, cleanlab --------------------------------------------------------------------
def _two_clusters_with_flips(seed=0, n=80, flips=8):
    rng = np.random.default_rng(seed)
    x = np.r_[rng.normal(-2, 1, size=(n // 2, 3)), rng.normal(2, 1, size=(n // 2, 3))]
    y = np.r_[np.zeros(n // 2), np.ones(n // 2)].astype(int)
    flipped = rng.choice(n, size=flips, replace=False)
    y[flipped] = 1 - y[flipped]
    return x, y, flipped


@pytest.mark.parametrize("model", ["logistic", "tree"])
def test_data_oob_values_are_oob_accuracies_and_find_flipped_labels(model):
    x, y, flipped = _two_clusters_with_flips()
    b = 60
    dv = data_oob(x, y, n_estimators=b, model=model, seed=1)
    assert dv.values.min() >= 0.0 and dv.values.max() <= 1.0
    # A row is out of bag with probability (1 - 1/n)^n ~ 0.366: check the bookkeeping.
    counts = dv.columns["oob_count"]
    expected = b * (1 - 1 / len(y)) ** len(y)
    assert abs(counts.mean() - expected) < 0.1 * expected
    # Every value is a ratio correct / count, so value * count must be an integer.
    np.testing.assert_allclose(dv.values * counts, np.round(dv.values * counts), atol=1e-9)
    clean = np.setdiff1d(np.arange(len(y)), flipped)
    assert dv.values[flipped].mean() < 0.3 < 0.8 < dv.values[clean].mean()
    assert detection_auroc(dv.values, flipped) > 0.9


def test_data_oob_is_reproducible_per_seed_and_checks_model():
    x, y, _ = _two_clusters_with_flips()
    a = data_oob(x, y, n_estimators=10, seed=3).values
    np.testing.assert_array_equal(a, data_oob(x, y, n_estimators=10, seed=3).values)
    with pytest.raises(ValueError, match="logistic"):
        data_oob(x, y, model="svm")


def test_loss_only_is_out_of_fold_log_likelihood():
    x, y, flipped = _two_clusters_with_flips(seed=2)
    dv = loss_only(x, y, folds=4, seed=0)
    assert np.all(dv.values <= 0)
    np.testing.assert_allclose(np.exp(dv.values), dv.columns["oof_proba_label"], rtol=1e-9)
    assert set(dv.lowest(len(flipped)).index) == set(flipped)


def test_out_of_fold_proba_never_sees_the_scored_row():
    # A lone point far from everything with a unique label: in-sample it would get its own class;
    # out of fold, the class is absent from the fitting part and must get probability ~0.
    x = np.r_[np.zeros((20, 1)), np.ones((20, 1)), [[10.0]]]
    y = np.r_[np.zeros(20), np.ones(20), [2]].astype(int)
    p = baselines.out_of_fold_proba(x, y, num_classes=3, folds=5)
    assert p.shape == (41, 3)
    assert p[-1, 2] == 0.0
    np.testing.assert_allclose(p.sum(1), 1.0)


def test_cleanlab_baseline_or_clear_skip(monkeypatch):
    x, y, flipped = _two_clusters_with_flips(seed=4)
    try:
        import cleanlab  # noqa: F401
    except ImportError:
        with pytest.raises(MethodUnavailable, match="pip install"):
            baselines.cleanlab_label_quality(x, y)
    else:
        dv = baselines.cleanlab_label_quality(x, y)
        assert detection_auroc(dv.values, flipped) > 0.9
    # Without cleanlab importable the method says how to get it.
    monkeypatch.setitem(__import__("sys").modules, "cleanlab.rank", None)
    with pytest.raises(MethodUnavailable, match="pip install"):
        baselines.cleanlab_label_quality(x, y)


# -- protocol metrics ---------------------------------------------------------------------------------
def test_discovery_area_closed_forms():
    n, k = 1000, 100
    noisy = np.arange(k)
    perfect = np.r_[np.zeros(k), np.ones(n - k)]
    assert math.isclose(discovery_area(perfect, noisy, points=1001), 1 - (k / n) / 2, abs_tol=1e-3)
    worst = -perfect
    assert math.isclose(discovery_area(worst, noisy, points=1001), (k / n) / 2, abs_tol=1e-3)
    rng = np.random.default_rng(0)
    assert abs(np.mean([discovery_area(rng.random(n), noisy) for _ in range(20)]) - 0.5) < 0.03


def test_removal_accuracy_equals_retraining_on_the_kept_rows():
    s = make_split("wine", noise=0.2, seed=1)
    values = np.zeros(len(s.y_train))
    values[s.noisy] = -1.0  # the corrupted rows are the lowest
    frac = len(s.noisy) / len(values)
    acc = removal_accuracy(s, values, [0.0, frac], lowest=True)
    keep = np.setdiff1d(np.arange(len(values)), s.noisy)
    ref = baselines.logistic_model().fit(s.x_train[keep], s.y_train[keep]).score(s.x_test, s.y_test)
    full = baselines.logistic_model().fit(s.x_train, s.y_train).score(s.x_test, s.y_test)
    assert math.isclose(acc[1], ref) and math.isclose(acc[0], full)


def test_align_values_reorders_by_row_and_rejects_bad_output():
    dv = DataValues([3.0, 1.0, 2.0], index=[2, 0, 1])
    np.testing.assert_array_equal(align_values(dv, 3, "m"), [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="one value per training row"):
        align_values(DataValues([1.0, 2.0]), 3, "m")
    with pytest.raises(ValueError, match="non-finite"):
        align_values(DataValues([1.0, np.nan, 2.0]), 3, "m")


# -- end to end -----------------------------------------------------------------------------------
def test_protocol_end_to_end_on_iris_writes_and_reads_back(tmp_path):
    df = run_protocol(
        ["random", "loss_only"], ["iris"], [0.2], seeds=[0, 1], removal_fractions=(0.1, 0.2), log=None
    )
    paths = write_report(df, tmp_path, command="test")
    runs = pd.read_csv(paths["runs"])
    assert len(runs) == 4 and set(runs["method"]) == {"random", "loss_only"}
    for col in ("f1", "auroc", "discovery_area", "remove_low_0.10", "remove_high_0.20", "discovery_0.50"):
        assert runs[col].between(0, 1).all(), col
    assert (runs["wall_s"] >= 0).all()
    # Both methods saw the same split: same row counts and noisy rows per seed.
    assert runs.groupby("seed")["n_noisy"].nunique().eq(1).all()
    by = runs.groupby("method")["auroc"].mean()
    assert by["loss_only"] > 0.9 > by["random"]
    summary = paths["summary"].read_text()
    assert (
        "| method | 2-means F1 | AUROC" in summary and "loss_only" in summary and "label noise 20%" in summary
    )
    import matplotlib.image as mpimg

    for name in ("f1_by_method", "discovery_curves", "removal_curves"):
        img = mpimg.imread(paths[name])
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100


def test_unavailable_methods_are_skipped_and_failures_reported(tmp_path):
    @register("_test_unavailable")
    def _unavailable(split, seed):
        raise MethodUnavailable("not installed here")

    @register("_test_broken")
    def _broken(split, seed):
        return DataValues(np.zeros(3))

    try:
        lines: list[str] = []
        df = run_protocol(
            ["_test_unavailable", "_test_broken", "random"],
            ["iris"],
            [0.1],
            seeds=[0, 1],
            removal_fractions=(),
            log=lines.append,
        )
        assert list(df["method"]) == ["random", "random"]
        assert df.attrs["skipped"] == {"_test_unavailable": "not installed here"}
        assert len(df.attrs["failed"]) == 2 and "one value per training row" in df.attrs["failed"][0]
        assert sum("SKIPPED" in line for line in lines) == 1  # said once, not per run
        text = write_report(df, tmp_path, plots=False)["summary"].read_text()
        assert "Skipped methods" in text and "Failed runs" in text
    finally:
        METHODS.pop("_test_unavailable")
        METHODS.pop("_test_broken")


def test_cli_main_runs_and_rejects_unknown_methods(tmp_path, capsys):
    out = tmp_path / "res"
    args = "--methods random knn_shapley --datasets wine --noise 0.1 --seeds 1 --no-removal --no-plots"
    rc = main([*args.split(), "--out", str(out)])
    assert rc == 0
    assert len(pd.read_csv(out / "runs.csv")) == 2
    assert "python -m benchmarks --methods random knn_shapley" in (out / "summary.md").read_text()
    assert main(["--methods", "nope", "--out", str(out)]) == 2
    assert "unknown method" in capsys.readouterr().err


def test_lossval_adapter_runs_a_real_lightning_fit():
    split = make_split("iris", noise=0.2, seed=0)
    try:
        dv = METHODS["lossval"].fn(split, 0)
    except MethodUnavailable as err:
        pytest.skip(str(err))
    v = align_values(dv, len(split.y_train), "lossval")
    assert np.isfinite(v).all() and not np.allclose(v, v[0])  # the weights moved from their init


def test_overhead_benchmark_measures_plain_and_objective_fits():
    from benchmarks.overhead import PeakMemory, overhead_table, run_overhead

    try:
        df = run_overhead(
            rows=[256], valid_sizes=[16], objectives=["lossval"], repeats=2, max_batches=3, log=None
        )
    except MethodUnavailable as err:
        pytest.skip(str(err))
    if "lossval" not in set(df["variant"]):
        pytest.skip("LossVal is not available in this checkout")
    assert len(df) == 4 and (df["wall_s"] > 0).all() and set(df["steps"]) == {3}
    # Memory comes from fresh processes: finite and non-negative for both variants.
    assert np.isfinite(df["peak_mb"]).all() and (df["peak_mb"] >= 0).all()
    table = overhead_table(df)
    assert "| mlp | 256 | 16 | lossval | 3 |" in table and "x**" in table
    assert (df["step_s"] > 0).all()
    with PeakMemory() as pm:
        block = np.ones(20_000_000)  # 160 MB, touched
        block += 1
    assert pm.peak_bytes is None or pm.peak_bytes > 100 * 2**20
    with PeakMemory() as pm:  # a peak already freed when the block ends still counts
        block = np.ones(20_000_000)
        block += 1
        del block
    assert pm.peak_bytes is None or pm.peak_bytes > 100 * 2**20


def test_complexity_gap_adapter_scores_conflicting_duplicates_most_suspicious():
    from lightning_dv.datasets import Split

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    x[1] = x[0]
    y[1] = 1 - y[0]  # identical features, different labels: scored the most suspicious, no ridge
    split = Split(x, y, x[:5], y[:5], x[:5], y[:5], noisy=np.array([1]), num_classes=2)
    try:
        dv = METHODS["complexity_gap"].fn(split, 0)
    except MethodUnavailable as err:
        pytest.skip(str(err))
    assert dv.metadata["ridge"] == 0.0 and dv.metadata["conflicting_rows"] == 2
    values = align_values(dv, 40, "complexity_gap")
    assert np.isfinite(values).all() and set(np.argsort(values)[:2]) == {0, 1}


def test_step_profile_times_the_weight_calls_and_restores_them():
    from benchmarks import bench_step_profile
    from lightning_dv.methods.weights import SampleWeights

    forward = SampleWeights.forward
    times = bench_step_profile.medians(rows=1000, fits=1)
    assert times["SampleWeights.forward"] > 0 and times["SampleWeights._dense_step"] > 0
    assert SampleWeights.forward is forward  # the timers are gone after the fits
