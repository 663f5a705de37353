"""Every method from a LightningCLI YAML (examples/lightning_cli), validation sets given as file paths."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from lightning_dv import DataValues
from lightning_dv.io import load_if_path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "lightning_cli"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"lightning_cli_{name}", EXAMPLE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def example_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    for f in EXAMPLE.glob("*.yaml"):
        shutil.copy(f, root)
    _load("make_data").write(root / "data")
    return root


@pytest.mark.parametrize(
    ("config", "method"),
    [("lossval", "lossval"), ("nddv", "nddv"), ("complexity_gap", "complexity_gap"), ("ecoval", "ecoval")],
)
def test_each_method_runs_from_its_yaml_config(example_dir, monkeypatch, config, method):
    monkeypatch.chdir(example_dir)
    cli = _load("main").main(
        [
            "fit",
            "--config",
            f"{config}.yaml",
            "--trainer.max_epochs=1",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
        ]
    )
    assert cli.trainer.current_epoch == 1
    values = DataValues.load(example_dir / f"values_{config}.csv")
    assert values.method == method and len(values) == 500
    assert np.isfinite(values.values).all()


def test_load_if_path_reads_pt_npz_and_csv(tmp_path):
    x, y = torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    torch.save({"x": x, "y": y}, tmp_path / "v.pt")
    np.savez(tmp_path / "v.npz", x=x.numpy(), label=y.numpy())
    pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "target": y}).to_csv(
        tmp_path / "v.csv", index=False
    )
    for name in ("v.pt", "v.npz", "v.csv"):
        got_x, got_y = load_if_path(str(tmp_path / name))
        torch.testing.assert_close(torch.as_tensor(got_x).float(), x)
        assert torch.as_tensor(got_y).tolist() == y.tolist()
    np.savez(tmp_path / "only_x.npz", x.numpy())
    assert load_if_path(tmp_path / "only_x.npz").shape == (6, 3)
    with pytest.raises(FileNotFoundError, match="`validation='missing.pt'`: no such file"):
        load_if_path("missing.pt")
    with pytest.raises(ValueError, match="must end in one of .pt, .npz, .csv"):
        load_if_path("valid.txt")
    torch.save({"inputs_only": x}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="holds the keys inputs_only; expected 'x'"):
        load_if_path(tmp_path / "bad.pt", "meta")
