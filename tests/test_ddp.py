"""Real 2-process DDP (CPU, gloo), run as a subprocess script; each rank saves, the test compares."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

SCRIPTS = Path(__file__).parent / "scripts"


def run_script(name: str, out: Path, **env: str) -> None:
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / name), str(out)],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_lossval_ddp_two_processes(tmp_path):
    run_script("lossval_ddp.py", tmp_path)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    torch.testing.assert_close(r0["weights"], r1["weights"], rtol=0, atol=0)  # replicated exactly
    for k in r0["model"]:
        torch.testing.assert_close(r0["model"][k], r1["model"][k], rtol=0, atol=0)
    # 101 rows over 2 ranks: 51 per rank (one padded duplicate), batch 8 -> 7 steps per epoch
    assert r0["steps"] == r1["steps"] == 2 * math.ceil(51 / 8)
    w = r0["weights"].numpy()
    assert (w != 1.0).all(), "every row, the padded one included, must have been trained"
    df = pd.read_csv(tmp_path / "values.csv")
    assert sorted(df["row"].tolist()) == list(range(101))  # each row exactly once
    np.testing.assert_allclose(df.sort_values("row")["value"].to_numpy(), w, rtol=1e-6)
