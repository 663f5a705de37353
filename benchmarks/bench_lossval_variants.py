"""Which LossVal defaults? The paper-faithful form against its variants, on identical splits.

Variants: raw vs uniform masses, D**2 vs |D|, unconstrained vs softplus weights, 30 vs 5 epochs.
Each is registered as a benchmark method and run through the same protocol as every method.

Run: python benchmarks/bench_lossval_variants.py --out bench_results/lossval_variants
     [--datasets digits breast_cancer wine gaussian classification] [--noise 0.1] [--seeds 3]
"""

from __future__ import annotations

import argparse
import sys

import torch

from benchmarks.protocol import run_protocol, write_report
from benchmarks.registry import fit_with_objective, register
from lightning_dv.methods.lossval import LossVal

VARIANTS = {
    "lossval": ({}, 30),
    "lossval_uniform_mass": ({"mass": "uniform"}, 30),
    "lossval_abs_D": ({"exponent": 1.0}, 30),
    "lossval_softplus": ({"constraint": "softplus"}, 30),
    "lossval_5_epochs": ({}, 5),
}


def _make(kwargs: dict, epochs: int):
    def run(split, seed):
        return fit_with_objective(
            split, seed, lambda: LossVal(validation=(split.x_valid, split.y_valid), **kwargs), epochs=epochs
        )

    return run


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--datasets", nargs="+", default=["digits", "breast_cancer", "wine", "gaussian", "classification"]
    )
    p.add_argument("--noise", nargs="+", type=float, default=[0.1])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--out", default="bench_results/lossval_variants")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    for name, (kwargs, epochs) in VARIANTS.items():
        if name != "lossval":  # the default is registered by the harness itself
            register(name, kind="project", description=f"LossVal {kwargs} {epochs} epochs")(
                _make(kwargs, epochs)
            )
    df = run_protocol(
        list(VARIANTS), args.datasets, args.noise, seeds=range(args.seeds), removal_fractions=()
    )
    paths = write_report(df, args.out, command="python " + " ".join(sys.argv), plots=False)
    print(paths["summary"].read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
