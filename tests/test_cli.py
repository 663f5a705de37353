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
