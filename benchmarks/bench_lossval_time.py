"""Wall time of the project's LossVal against the faithful paper loop, in one process.

Both value the same protocol split (same seed) through the benchmark registry, interleaved
``--repeats`` times; the report is the median time of each and their ratio, so machine load
affects both alike. Run::

    OMP_NUM_THREADS=1 python -m benchmarks.bench_lossval_time --dataset digits --seed 0 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks.protocol import align_values
from benchmarks.registry import get_method
from lightning_dv.datasets import make_split
from lightning_dv.metrics import detection_auroc, kmeans_f1

METHODS = ("lossval", "lossval_reference")


def run(dataset: str = "digits", seed: int = 0, noise: float = 0.1, repeats: int = 3) -> dict[str, dict]:
    """Median seconds, F1 and AUROC of each method on one split, runs interleaved.

    Example:
        >>> sorted(METHODS)
        ['lossval', 'lossval_reference']
    """
    split = make_split(dataset, noise=noise, seed=seed)
    out: dict[str, dict] = {m: {"seconds": []} for m in METHODS}
    for _ in range(repeats):
        for name in METHODS:
            start = time.perf_counter()
            values = align_values(get_method(name).fn(split, seed), len(split.x_train), name)
            out[name]["seconds"].append(time.perf_counter() - start)
            out[name]["f1"] = kmeans_f1(values, split.noisy)
            out[name]["auroc"] = detection_auroc(values, split.noisy)
    for stats in out.values():
        stats["median_s"] = statistics.median(stats["seconds"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_lossval_time", description=__doc__)
    parser.add_argument("--dataset", default="digits", help="bundled dataset (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="split and model seed (default: %(default)s)")
    parser.add_argument("--noise", type=float, default=0.1, help="label-noise rate (default: %(default)s)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="interleaved runs of each (default: %(default)s)"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    res = run(args.dataset, args.seed, args.noise, args.repeats)
    for name, s in res.items():
        print(f"{name:<18} median {s['median_s']:6.1f} s  F1 {s['f1']:.3f}  AUROC {s['auroc']:.3f}")
    ratio = res["lossval"]["median_s"] / res["lossval_reference"]["median_s"]
    print(f"time ratio lossval / lossval_reference: {ratio:.2f}")


if __name__ == "__main__":
    main()
