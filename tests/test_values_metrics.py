"""DataValues persistence and the detection metrics, against brute-force references."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from lightning_dv import DataValues, DetectionAUROC, DetectionF1, detection_auroc, kmeans_f1, two_means_split
from lightning_dv.metrics import discovery_curve


def brute_two_means(v):
    best, best_low = np.inf, None
    order = np.argsort(v, kind="stable")
    for k in range(1, len(v)):
        lo, hi = v[order[:k]], v[order[k:]]
        sse = ((lo - lo.mean()) ** 2).sum() + ((hi - hi.mean()) ** 2).sum()
        if sse < best - 1e-12:
            best, best_low = sse, order[:k]
    mask = np.zeros(len(v), bool)
    mask[best_low] = True
    return mask


@pytest.mark.parametrize("seed", range(5))
def test_two_means_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    v = np.concatenate([rng.normal(0, 1, 30), rng.normal(4, 1, 10)])
    assert np.array_equal(two_means_split(v).numpy(), brute_two_means(v))


def test_f1_and_auroc_against_references():
    rng = np.random.default_rng(0)
    v = rng.normal(size=200)
    noisy = rng.choice(200, 20, replace=False)
    v[noisy] -= 1.5
    truth = np.zeros(200, bool)
    truth[noisy] = True
    pred = brute_two_means(v)
    f1 = 2 * (pred & truth).sum() / (pred.sum() + truth.sum())
    assert kmeans_f1(v, noisy) == pytest.approx(f1)
    assert detection_auroc(v, noisy) == pytest.approx(roc_auc_score(truth, -v))
    m1, m2 = DetectionF1(), DetectionAUROC()
    # rows arrive in two chunks with one duplicated row (as DistributedSampler padding would do)
    rows = np.arange(200)
    for sl in (slice(0, 120), slice(119, 200)):
        m1.update(torch.tensor(v[sl]), torch.tensor(truth[sl]), torch.tensor(rows[sl]))
        m2.update(torch.tensor(v[sl]), torch.tensor(truth[sl]), torch.tensor(rows[sl]))
    assert float(m1.compute()) == pytest.approx(f1)
    assert float(m2.compute()) == pytest.approx(roc_auc_score(truth, -v))


def test_auroc_is_exact_for_heavy_tailed_values():
    # scores far outside [0, 1] must not be squashed into ties
    assert detection_auroc([-300.0, -200.0, -100.0, 0.0], [0]) == 1.0
    v = np.array([1e6, -1e6, 5.0, 5.0, -3.0])
    truth = np.array([False, True, True, False, False])
    assert detection_auroc(v, truth) == pytest.approx(roc_auc_score(truth, -v))


def test_discovery_curve_counts_noisy_rows_in_lowest_fraction():
    v = np.arange(10.0)
    curve = discovery_curve(v, [0, 1, 9], fractions=[0.1, 0.2, 1.0])
    assert curve.tolist() == pytest.approx([1 / 3, 2 / 3, 1.0])


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".npz"])
def test_save_load_roundtrip(tmp_path, suffix):
    rng = np.random.default_rng(0)
    dv = DataValues(
        rng.normal(size=7),
        method="m",
        ids=[f"id{i}" for i in range(7)],
        columns={"cg_score": rng.random(7)},
        trajectory=rng.normal(size=(3, 7)),
    )
    back = DataValues.load(dv.save(tmp_path / f"v{suffix}"))
    np.testing.assert_allclose(back.values, dv.values)
    np.testing.assert_array_equal(back.index, dv.index)
    assert [str(i) for i in back.ids] == [str(i) for i in dv.ids]
    np.testing.assert_allclose(back.columns["cg_score"], dv.columns["cg_score"])
    np.testing.assert_allclose(back.trajectory, dv.trajectory)


def test_lowest_highest_and_long_trajectory():
    dv = DataValues([3.0, -1.0, 2.0, 0.0], trajectory=np.arange(8.0).reshape(2, 4))
    assert dv.lowest(2).index.tolist() == [1, 3]
    assert dv.highest(1).index.tolist() == [0]
    long = dv.trajectory_long()
    assert list(long.columns) == ["row", "epoch", "value"] and len(long) == 8
    assert long.query("row == 2 and epoch == 2")["value"].item() == 6.0


def test_failed_write_keeps_previous_file(tmp_path):
    from lightning_dv.io import atomic_write

    path = tmp_path / "v.npz"
    DataValues([1.0, 2.0]).save(path)
    before = path.read_bytes()

    def half_then_crash(tmp):
        tmp.write_bytes(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, half_then_crash)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["v.npz"]  # no temporary file left behind


def test_bad_export_paths(tmp_path):
    with pytest.raises(ValueError, match="unsupported extension"):
        DataValues([1.0]).save(tmp_path / "v.txt")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(PermissionError, match="cannot create the folder"):
        DataValues([1.0]).save(blocker / "sub" / "v.csv")


def test_brute_force_helper_is_exhaustive():
    # sanity of the reference itself on a tiny case: compare with full enumeration of splits
    v = np.array([0.0, 0.2, 3.0, 3.1, 0.1])
    masks = [np.isin(np.arange(5), c) for k in range(1, 5) for c in itertools.combinations(range(5), k)]
    sse = [((v[m] - v[m].mean()) ** 2).sum() + ((v[~m] - v[~m].mean()) ** 2).sum() for m in masks]
    best = masks[int(np.argmin(sse))]
    assert np.array_equal(brute_two_means(v), best if best[0] else ~best)


def test_two_means_split_across_chunks_equals_the_exhaustive_minimum(monkeypatch):
    import lightning_dv.metrics as metrics

    monkeypatch.setattr(metrics, "_CHUNK", 7)  # many chunk boundaries on a small input
    rng = np.random.default_rng(3)
    for values in (
        np.concatenate([rng.normal(0, 1, 40), rng.normal(5, 1, 23)]),
        np.round(rng.normal(size=50)),
    ):
        s = np.sort(values)
        sse = [
            ((s[:k] - s[:k].mean()) ** 2).sum() + ((s[k:] - s[k:].mean()) ** 2).sum()
            for k in range(1, len(s))
        ]
        k = int(np.argmin(sse)) + 1  # size of the low cluster
        low = two_means_split(values).numpy()
        assert low.sum() == k and values[low].max() <= values[~low].min()


def test_two_means_split_ties_at_the_cut_go_low_in_row_order_and_float32_sorts_as_float64(monkeypatch):
    """The mask equals the stable sort's first k rows (the reference below), across chunk boundaries."""
    import lightning_dv.metrics as metrics

    monkeypatch.setattr(metrics, "_CHUNK", 5)
    rng = np.random.default_rng(0)
    for values in (
        np.array([0.0, 1.0, 1.0, 1.0, 5.0, 5.0, 1.0]),
        np.round(rng.normal(size=60)),  # many ties, some at the cut
        np.concatenate([rng.normal(0, 1, 30), [np.nan, np.nan]]),
    ):
        s = np.sort(values)
        n = len(s)
        c1, c2 = np.cumsum(s), np.cumsum(s**2)
        k = np.arange(1, n)
        sse = (c2[:-1] - c1[:-1] ** 2 / k) + ((c2[-1] - c2[:-1]) - (c1[-1] - c1[:-1]) ** 2 / (n - k))
        expected = np.zeros(n, dtype=bool)
        if not np.isnan(sse).all():
            expected[np.argsort(values, kind="stable")[: int(np.nanargmin(sse)) + 1]] = True
        got = two_means_split(values).numpy()
        if not np.isnan(values).any():
            assert np.array_equal(got, expected)
        assert np.array_equal(
            two_means_split(torch.tensor(values, dtype=torch.float32)), two_means_split(values)
        )


def test_lowest_highest_are_the_stable_sorts_first_rows_and_the_default_index_is_lazy(monkeypatch):
    import lightning_dv.values as values_module

    monkeypatch.setattr(values_module, "_CHUNK", 7)  # the top-k merges across many chunks
    rng = np.random.default_rng(1)
    v = np.round(rng.normal(size=100), 1)  # ties across chunks
    v[[5, 50]] = np.nan
    dv = DataValues(v, flagged=np.zeros(100, dtype=bool))
    assert dv._index is None and dv.index.dtype == np.int64 and dv.index.tolist() == list(range(100))
    for k in (0, 1, 9, 100, 150):
        assert dv.lowest(k).index.tolist() == np.argsort(v, kind="stable")[:k].tolist()
        assert dv.highest(k).index.tolist() == np.argsort(-v, kind="stable")[:k].tolist()
    assert dv.sorted_by_row().index.tolist() == list(range(100))
    given = DataValues([1.0, 0.0], index=[7, 3])
    assert given.index.tolist() == [7, 3] and given.lowest(1).index.tolist() == [3]
    with pytest.raises(ValueError, match="`index` has shape"):
        DataValues([1.0, 0.0], index=[1])
