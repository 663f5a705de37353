"""`lightning-dv demo` and `lightning-dv bench` from the command-line entry point."""

from __future__ import annotations

import pytest
from tensorboard.backend.event_processing.event_accumulator import (
    STORE_EVERYTHING_SIZE_GUIDANCE,
    EventAccumulator,
)

from lightning_dv import DataValues
from lightning_dv.cli import main


def test_demo_writes_values_picture_and_tensorboard_and_reports(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--epochs", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "injected label errors are among them" in out and "AUROC" in out
    assert "The 10 most suspicious rows:" in out
    acc_line = next(line for line in out.splitlines() if line.startswith("Model test accuracy"))
    assert 0.5 < float(acc_line.split()[3]) <= 1.0  # two epochs on digits already beat chance (0.1)
    assert f"tensorboard --logdir {tmp_path / 'runs'}" in out
    values_file = next(p for p in tmp_path.iterdir() if p.name.startswith("values.") and p.suffix != ".png")
    values = DataValues.load(values_file)
    assert len(values) == 1000 and values.trajectory.shape == (2, 1000)
    assert values.labels is not None and values.method == "lossval"  # the table can be rebuilt from the file
    png = tmp_path / "values_2d.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    run_dir = next((tmp_path / "runs" / "demo").iterdir())
    acc = EventAccumulator(str(run_dir), size_guidance=STORE_EVERYTHING_SIZE_GUIDANCE)
    acc.Reload()
    assert len(acc.Histograms("data_values/lossval/histogram")) == 2
    assert len(acc.Scalars("data_values/lossval/detection_auroc")) == 2


def test_demo_rejects_bad_arguments():
    with pytest.raises(SystemExit):
        main(["demo", "--noise", "0.9"])
    with pytest.raises(SystemExit):
        main(["demo", "--epochs", "0"])


def test_bench_lists_methods(capsys):
    main(["bench", "--list"])
    out = capsys.readouterr().out
    for name in ("lossval", "nddv", "complexity_gap", "ecoval", "data_oob", "knn_shapley"):
        assert name in out


def test_help_names_every_registered_method(capsys):
    from lightning_dv.methods import registry

    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for spec in registry.METHODS.values():
        assert spec.name in out and spec.description in out


# -- lightning-dv value ----------------------------------------------------------------------------
def _noisy_csv(path, n_per_class=40, flip=0.1, seed=0):
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    names = np.array(["cat", "dog", "=cow"])  # a formula-like class name must survive the round trip
    centres = rng.normal(0, 3, (3, 4))
    y = np.repeat(np.arange(3), n_per_class)
    x = centres[y] + rng.normal(size=(len(y), 4))
    flipped = rng.choice(len(y), int(flip * len(y)), replace=False)
    y_noisy = y.copy()
    y_noisy[flipped] = (y[flipped] + 1) % 3
    df = pd.DataFrame(x, columns=["a", "b", "c", "d"])
    df.insert(0, "key", [f"k{i}" for i in range(len(y))])
    df["animal"] = names[y_noisy]
    df.to_csv(path, index=False)
    return df, flipped


def test_value_end_to_end_on_a_csv_with_string_labels_and_ids(tmp_path, capsys):
    from lightning_dv.metrics import detection_auroc

    df, flipped = _noisy_csv(tmp_path / "data.csv")
    out = tmp_path / "values.csv"
    code = main(
        [
            "value",
            str(tmp_path / "data.csv"),
            "--label",
            "animal",
            "--id",
            "key",
            "--out",
            str(out),
            "--epochs",
            "5",
            "--forest",
            "--no-progress",
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    values = DataValues.load(out)
    assert text.count("\n   ") >= 10 and "The 10 lowest-valued rows:" in text
    assert f"Flagged {int(values.flagged.sum())} rows" in text
    assert list(values.to_pandas().columns[:6]) == [
        "row",
        "id",
        "value",
        "flagged",
        "label",
        "predicted_label",
    ]
    assert values.method == "aum" and values.metadata["label_column"] == "animal"
    assert values.metadata["forest_trees"] == 300 and "forest_margin" in values.columns
    assert values.ids.tolist() == df["key"].tolist() and values.labels.tolist() == df["animal"].tolist()
    assert set(values.columns["predicted_label"]) <= {"cat", "dog", "=cow"}
    assert detection_auroc(values.values, flipped) > 0.8
    assert values.flagged[flipped].mean() > 0.5


@pytest.mark.parametrize(
    ("edit", "args", "message"),
    [
        (None, ["--label", "species"], "--label 'species': no such column"),
        (None, ["--label", "animal", "--id", "nope"], "--id 'nope': no such column"),
        ("text", ["--label", "animal"], "not numeric: key, colour"),
        ("few", ["--label", "animal", "--id", "key"], "only 5 rows"),
        ("one_class", ["--label", "animal", "--id", "key"], "same label ('cat')"),
        (None, ["--label", "animal", "--method", "nddv", "--forest"], "does not apply to --method nddv"),
        (
            None,
            ["--label", "animal", "--method", "lossval", "--opinion", "auto"],
            "--opinion auto adds a second",
        ),
        (None, ["--label", "animal", "--forest", "--opinion", "auto"], "give one"),
    ],
)
def test_value_errors_name_the_problem(tmp_path, capsys, edit, args, message):
    df, _ = _noisy_csv(tmp_path / "data.csv")
    if edit == "text":
        df["colour"] = "red"
    elif edit == "few":
        df = df.head(5)
    elif edit == "one_class":
        df["animal"] = "cat"
    df.to_csv(tmp_path / "data.csv", index=False)
    with pytest.raises(SystemExit) as exc:
        main(["value", str(tmp_path / "data.csv"), *args, "--no-progress"])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_version_help_defaults_and_bench_program_name(capsys):
    from lightning_dv import __version__

    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"lightning-dv {__version__}"
    for command in ("value", "demo"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "(default: 0)" in text  # --seed
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert text.startswith("usage: lightning-dv bench") and "(default: 3)" in text


def test_value_reads_parquet_and_writes_npz(tmp_path, capsys):
    import pandas as pd

    df, _ = _noisy_csv(tmp_path / "data.csv")
    df.to_parquet(tmp_path / "data.parquet")
    out = tmp_path / "v.npz"
    args = [
        "value",
        str(tmp_path / "data.parquet"),
        "--label",
        "animal",
        "--id",
        "key",
        "--method",
        "complexity_gap",
    ]
    assert main([*args, "--out", str(out), "--no-progress"]) == 0
    values = DataValues.load(out)
    assert values.method == "complexity_gap" and values.labels.tolist() == df["animal"].tolist()
    assert values.ids.tolist() == df["key"].tolist() and "predicted_label" not in values.columns
    assert main(args + ["--no-progress"]) == 0  # default output next to the input
    assert len(pd.read_csv(tmp_path / "data_values.csv", skiprows=1)) == len(df)
