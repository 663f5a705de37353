"""DataValues files: method, metadata, flags and labels survive every format; damaged files are refused."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lightning_dv import DataValues
from lightning_dv.formats import DataValuesFileError
from lightning_dv.metrics import two_means_split


def _values(n=50, seed=0):
    rng = np.random.default_rng(seed)
    return DataValues(
        rng.normal(size=n),
        method="nddv",
        ids=[f"=cmd{i}" if i % 7 == 0 else f"id{i}" for i in range(n)],
        labels=np.array(["cat", "dog", "+1", "@x", "'q"] * (n // 5)),
        columns={"predicted_label": np.array(["cat", "dog"] * (n // 2)), "cg_score": rng.random(n)},
        trajectory=rng.normal(size=(3, n)),
        metadata={"epochs": 3, "optimizer_steps": np.int64(52), "lr": 0.01, "validation": "held out 10%"},
    )


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".npz"])
def test_round_trip_keeps_method_metadata_flags_labels_and_ids(tmp_path, suffix):
    dv = _values()
    back = DataValues.load(dv.save(tmp_path / f"v{suffix}"))
    assert back.method == "nddv"
    assert back.metadata == {
        "epochs": 3,
        "optimizer_steps": 52,
        "lr": 0.01,
        "validation": "held out 10%",
        "flagged_by": "two_means",
    }
    np.testing.assert_allclose(back.values, dv.values)
    np.testing.assert_array_equal(back.flagged, dv.flagged)
    assert back.ids.tolist() == dv.ids.tolist()  # formula-like ids come back unescaped
    assert back.labels.tolist() == dv.labels.tolist()
    assert back.columns["predicted_label"].tolist() == dv.columns["predicted_label"].tolist()
    np.testing.assert_allclose(back.trajectory, dv.trajectory)


def test_flagged_defaults_to_the_two_means_low_cluster_and_subsets_keep_it():
    v = np.r_[np.full(10, -3.0), np.linspace(0, 1, 40)]
    dv = DataValues(v)
    np.testing.assert_array_equal(dv.flagged, two_means_split(v).numpy())
    assert dv.flagged.sum() == 10 and dv.metadata["flagged_by"] == "two_means"
    assert dv.lowest(12).flagged.tolist() == [True] * 10 + [False] * 2  # not recomputed on the subset
    own = DataValues(v, flagged=v < 0.5, metadata={"flagged_by": "threshold"})
    assert own.flagged.sum() == 30 and own.metadata["flagged_by"] == "threshold"
    with_nan = DataValues(np.r_[np.nan, v])
    assert with_nan.flagged[0]


def test_repr_shows_the_lowest_rows_with_labels():
    dv = DataValues([5.0, -2.0, 4.0, 4.5], ids=["a", "b", "c", "d"], labels=["x", "y", "x", "y"], method="m")
    text = repr(dv)
    assert text.splitlines()[0] == "DataValues(method='m', rows=4, flagged=1)"
    assert text.splitlines()[2].split() == ["1", "b", "y", "-2.0000", "yes"]


def test_csv_escapes_formula_cells_for_spreadsheets(tmp_path):
    dv = DataValues([1.0, 2.0, 3.0], ids=["=HYPERLINK(1)", "-2", "ok"], labels=["@a", "b", "+c"])
    path = dv.save(tmp_path / "v.csv")
    table = pd.read_csv(path, skiprows=1, dtype=str)
    assert table["id"].tolist() == ["'=HYPERLINK(1)", "'-2", "ok"]
    assert table["label"].tolist() == ["'@a", "b", "'+c"]
    back = DataValues.load(path)
    assert back.ids.tolist() == ["=HYPERLINK(1)", "-2", "ok"]
    assert back.labels.tolist() == ["@a", "b", "+c"]


def test_truncated_csv_is_refused(tmp_path):
    path = DataValues(np.linspace(0, 1, 500), method="m").save(tmp_path / "v.csv")
    lines = path.read_text().splitlines(keepends=True)
    cut = tmp_path / "cut.csv"
    cut.write_text("".join(lines[: 2 + 251]))  # header line, column names, 251 complete rows
    with pytest.raises(DataValuesFileError, match="holds 251 rows but was written with 500"):
        DataValues.load(cut)
    half = tmp_path / "half.csv"
    half.write_text("".join(lines)[:-5])  # the last number cut in half
    with pytest.raises(DataValuesFileError, match="does not end with a line break"):
        DataValues.load(half)


def test_missing_column_duplicate_row_and_bad_number_are_named(tmp_path):
    path = tmp_path / "plain.csv"
    pd.DataFrame({"row": [0, 1], "score": [0.1, 0.2]}).to_csv(path, index=False)
    with pytest.raises(DataValuesFileError, match="no 'value' column"):
        DataValues.load(path)
    pd.DataFrame({"row": [0, 1, 1], "value": [0.1, 0.2, 0.3]}).to_csv(path, index=False)
    with pytest.raises(DataValuesFileError, match="row 1 appears 2 times"):
        DataValues.load(path)
    pd.DataFrame({"row": [0, 1], "value": ["0.1", "abc"]}).to_csv(path, index=False)
    with pytest.raises(DataValuesFileError, match="'abc' at data line 2"):
        DataValues.load(path)


@pytest.mark.parametrize("suffix", [".parquet", ".npz"])
def test_binary_formats_check_the_promised_row_count(tmp_path, suffix):
    import json

    dv = DataValues(np.arange(6.0), method="m")
    path = dv.save(tmp_path / f"v{suffix}")
    if suffix == ".npz":
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        arrays = {k: (v[:4] if v.ndim == 1 else v) for k, v in arrays.items()}
        np.savez(path, **arrays)
    else:
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        pq.write_table(table.slice(0, 4), path)
        assert json.loads(pq.read_table(path).schema.metadata[b"lightning_dv"])["rows"] == 6
    with pytest.raises(DataValuesFileError, match="holds 4 rows but was written with 6"):
        DataValues.load(path)


def test_default_index_is_made_at_first_read_and_kept():
    dv = DataValues(values=np.array([0.3, -1.0, 2.0], dtype=np.float32))
    first = dv.index
    assert first.tolist() == [0, 1, 2] and first.dtype == np.int64
    assert dv.index is first  # kept: no new array per read
    dv.index[0] = 7  # and a write into it is not lost
    assert dv.index.tolist() == [7, 1, 2]
