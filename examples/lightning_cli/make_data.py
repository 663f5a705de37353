"""Write the example's data: digits with 10% flipped training labels (data/train.npz, data/valid.pt).

python make_data.py [OUT_DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from lightning_dv.datasets import make_split


def write(out: str | Path = "data", seed: int = 0) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    s = make_split("digits", noise=0.1, seed=seed, n_train=500, n_valid=100, n_test=300)
    np.savez(out / "train.npz", x=s.x_train, y=s.y_train)
    torch.save((torch.from_numpy(s.x_valid), torch.from_numpy(s.y_valid_clean)), out / "valid.pt")
    np.save(out / "flipped.npy", s.noisy)
    return out


if __name__ == "__main__":
    print(f"wrote {write(*sys.argv[1:2])}")
