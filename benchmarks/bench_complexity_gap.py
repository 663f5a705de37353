"""Complexity-gap score: closed form vs the authors' per-row loop, scale, and label-noise detection.

Three parts (each a median over ``--repeats`` runs where it is a timing):

1. ``loop``: one one-vs-rest class problem of ``m`` rows (``m/2`` scored positives, ``m/2``
   negatives, d = 784, synthetic), scored by :func:`lightning_dv.methods.complexity_gap.cg_scores` (one
   Cholesky) and by a reference implementation of the per-row loop the authors use (invert ``H``
   once; for every scored row downdate the inverse by the rank-one formula, copying the
   ``(m-1) x (m-1)`` block, and re-evaluate ``y^T H^-1 y``). Reports both times, their ratio, and
   the largest difference between the two scores (they are the same quantity).
2. ``scale``: one class problem of ``m = 10000`` rows, d = 784: time per phase (Gram matrix,
   Cholesky, diagonal of the inverse) and peak resident memory of a fresh process running the
   whole problem through :func:`lightning_dv.methods.complexity_gap.cg_scores`, next to the predicted need.
3. ``detect``: 2-means F1 and AUROC of the values against the injected noisy rows on digits and
   breast_cancer at 10% label noise (``make_split``, OpenDataVal protocol), over ``--seeds``.

Usage (2 CPU threads)::

    OMP_NUM_THREADS=2 python benchmarks/bench_complexity_gap.py --threads 2
    OMP_NUM_THREADS=2 python benchmarks/bench_complexity_gap.py --parts detect --seeds 0 1 2 3 4

Results (``OMP_NUM_THREADS=2 python benchmarks/bench_complexity_gap.py --threads 2``, torch 2.13
CPU, 2 cores shared with other jobs, load average ~3-4 during the run, 2026-11-23; make_split as
of commit e8a70cf):

- loop, d = 784, m/2 scored: m = 1000: closed form 0.19 s, per-row loop 27.8 s (148x);
  m = 2000: 0.59 s vs 87.2 s (147x). Largest difference between the two: 8e-13 of the top score.
  (An earlier run under load ~5.5: 0.35 s vs 53 s and 1.5 s vs 139 s.)
- scale, m = 10000, d = 784, 5000 scored, 2 threads: Gram 3.0 s, Cholesky 8.2 s, diagonal of the
  inverse 2.2 s, solve 0.05 s; end to end 14.1 s in a fresh process; peak RSS 0.83 GiB above the
  loaded process (the 10000 x 10000 float64 matrix alone is 0.75 GiB; predicted need 1.03 GiB).
- detect, 10% label noise, 5 seeds (random F1 ~0.17):
  digits (1000 train): ovr F1 0.807 +- 0.029, AUROC 0.992; ovr rep 5 F1 0.888 +- 0.025, AUROC 0.998.
  breast_cancer (363 train): ovr F1 0.755 +- 0.076, AUROC 0.970; ovr rep 5 F1 0.784 +- 0.073,
  AUROC 0.978; binary F1 0.815 +- 0.044, AUROC 0.982.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

from lightning_dv.datasets import make_split
from lightning_dv.methods.complexity_gap import cg_scores, complexity_gap
from lightning_dv.methods.complexity_gap.kernel import _inverse_column_norms, ntk_gram_
from lightning_dv.methods.complexity_gap.memory import (
    problem_memory_bytes,  # the phase timings call the solver's own steps
)
from lightning_dv.metrics import detection_auroc, kmeans_f1


def synthetic_problem(m: int, d: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``m`` normalised rows in two noisy clusters, negatives first, positives (scored) last."""
    g = torch.Generator().manual_seed(seed)
    half = m // 2
    centers = torch.randn(2, d, generator=g, dtype=torch.float64)
    x = torch.randn(m, d, generator=g, dtype=torch.float64) * 2.0
    x[: m - half] += centers[0]
    x[m - half :] += centers[1]
    y = torch.cat([-torch.ones(m - half), torch.ones(half)]).double()
    return x / x.norm(dim=1, keepdim=True), y


def loop_reference(xn: torch.Tensor, y: torch.Tensor, num_scored: int) -> torch.Tensor:
    """The authors' scheme, re-implemented: one inverse, then a rank-one downdate per scored row."""
    m = len(y)
    h = torch.empty(m, m, dtype=torch.float64)
    ntk_gram_(h, xn)
    h = torch.triu(h) + torch.triu(h, 1).T  # full symmetric matrix, as the authors build it
    inv = torch.linalg.inv(h)
    full = y @ (inv @ y)
    out = torch.empty(num_scored, dtype=torch.float64)
    for j, k in enumerate(range(m - num_scored, m)):
        keep = torch.arange(m) != k
        a = inv[keep][:, keep]
        b = inv[k, keep]
        inv_minus = a - torch.outer(b, b) / inv[k, k]
        y_minus = y[keep]
        out[j] = full - y_minus @ (inv_minus @ y_minus)
    return out


def timed(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def part_loop(sizes: list[int], repeats: int, loop_repeats: int) -> list[dict]:
    rows = []
    for m in sizes:
        xn, y = synthetic_problem(m, 784)
        s = m // 2
        t_closed, closed = timed(lambda xn=xn, y=y, s=s: cg_scores(xn, y, s), repeats)
        t_loop, loop = timed(lambda xn=xn, y=y, s=s: loop_reference(xn, y, s), loop_repeats)
        diff = float((closed - loop).abs().max() / closed.abs().max())
        row = dict(
            m=m, scored=s, closed_s=t_closed, loop_s=t_loop, speedup=t_loop / t_closed, max_rel_diff=diff
        )
        print(
            f"[loop] m={m} ({s} scored): closed form {t_closed:.3f} s (median of {repeats}), "
            f"per-row loop {t_loop:.2f} s (median of {loop_repeats}), ratio {t_loop / t_closed:.0f}x, "
            f"max |diff| / max score {diff:.1e}",
            flush=True,
        )
        rows.append(row)
    return rows


CHILD = """
import json, sys, time, torch
torch.set_num_threads(int(sys.argv[3]))
sys.path.insert(0, sys.argv[4])
from bench_complexity_gap import synthetic_problem
from lightning_dv.methods.complexity_gap import cg_scores

def hwm():  # peak RSS of this process image (VmHWM resets at exec; ru_maxrss keeps the parent's)
    with open("/proc/self/status") as fh:
        return next(int(l.split()[1]) * 1024 for l in fh if l.startswith("VmHWM:"))

m, d = int(sys.argv[1]), int(sys.argv[2])
xn, y = synthetic_problem(m, d)
before = hwm()
t0 = time.perf_counter()
cg = cg_scores(xn, y, m // 2)  # one class problem: m/2 positives scored, m/2 negatives
seconds = time.perf_counter() - t0
print(json.dumps(dict(seconds=seconds, rss_before=before, rss_peak=hwm(), finite=bool(torch.isfinite(cg).all()))))
"""


def part_scale(m: int, d: int, repeats: int, threads: int) -> dict:
    xn, y = synthetic_problem(m, d)
    s = m // 2
    phases: dict[str, list[float]] = {"gram": [], "cholesky": [], "inverse_diag": [], "solve": []}
    for _ in range(repeats):
        buf = torch.empty(m, m, dtype=torch.float64)
        t0 = time.perf_counter()
        ntk_gram_(buf, xn)
        t1 = time.perf_counter()
        chol = buf.mT
        info = torch.zeros((), dtype=torch.int32)
        torch.linalg.cholesky_ex(chol, upper=False, out=(chol, info))
        t2 = time.perf_counter()
        z = torch.linalg.solve_triangular(chol, y.reshape(-1, 1), upper=False)
        torch.linalg.solve_triangular(chol.mT, z, upper=True)
        t3 = time.perf_counter()
        _inverse_column_norms(chol, m - s, 1024)
        t4 = time.perf_counter()
        assert int(info) == 0
        phases["gram"].append(t1 - t0)
        phases["cholesky"].append(t2 - t1)
        phases["solve"].append(t3 - t2)
        phases["inverse_diag"].append(t4 - t3)
        del buf, chol
    med = {k: statistics.median(v) for k, v in phases.items()}
    print(
        f"[scale] m={m}, d={d}, {s} scored, {threads} threads, median of {repeats}: "
        + ", ".join(f"{k} {v:.2f} s" for k, v in med.items())
        + f", total {sum(med.values()):.2f} s",
        flush=True,
    )
    runs = []
    for _ in range(repeats):
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                CHILD,
                str(m),
                str(d),
                str(threads),
                os.path.dirname(os.path.abspath(__file__)),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    seconds = statistics.median(r["seconds"] for r in runs)
    peak = max(r["rss_peak"] for r in runs)
    base = min(r["rss_before"] for r in runs)
    predicted = problem_memory_bytes(m, s, d, 1024)
    print(
        f"[scale] cg_scores on the whole problem: {seconds:.2f} s (median of {repeats} fresh processes); peak RSS "
        f"{peak / 2**30:.2f} GiB, {(peak - base) / 2**30:.2f} GiB above the process with its data loaded; "
        f"predicted need {predicted / 2**30:.2f} GiB (one {m} x {m} float64 matrix: {8 * m * m / 2**30:.2f} GiB)",
        flush=True,
    )
    return dict(
        m=m,
        d=d,
        phases=med,
        end_to_end_s=seconds,
        peak_rss=peak,
        rss_increase=peak - base,
        predicted=predicted,
    )


def part_detect(seeds: list[int]) -> list[dict]:
    rows = []
    settings = [
        ("ovr", dict(mode="ovr", rep=1)),
        ("ovr-rep5", dict(mode="ovr", rep=5)),
        ("binary", dict(mode="binary")),
    ]
    for name in ("digits", "breast_cancer"):
        for label, kw in settings:
            f1s, aucs, secs = [], [], []
            for seed in seeds:
                split = make_split(name, noise=0.1, noise_kind="label", seed=seed)
                if kw.get("mode") == "binary" and split.num_classes != 2:
                    break
                t0 = time.perf_counter()
                dv = complexity_gap(split.x_train, split.y_train, seed=seed, **kw)
                secs.append(time.perf_counter() - t0)
                f1s.append(kmeans_f1(dv.values, split.noisy))
                aucs.append(detection_auroc(dv.values, split.noisy))
            if not f1s:
                continue
            row = dict(
                dataset=name,
                setting=label,
                n_train=len(split.x_train),
                seeds=len(f1s),
                f1_mean=float(np.mean(f1s)),
                f1_std=float(np.std(f1s)),
                auroc_mean=float(np.mean(aucs)),
                auroc_std=float(np.std(aucs)),
                seconds=statistics.median(secs),
                random_f1=0.1 / 0.6,
            )
            print(
                f"[detect] {name} (n_train={row['n_train']}, 10% label noise) {label}: "
                f"F1 {row['f1_mean']:.3f} +- {row['f1_std']:.3f}, AUROC {row['auroc_mean']:.3f} +- "
                f"{row['auroc_std']:.3f} over {len(f1s)} seeds, {row['seconds']:.2f} s per run "
                f"(random F1 ~{row['random_f1']:.3f})",
                flush=True,
            )
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--parts", nargs="+", default=["loop", "scale", "detect"], choices=["loop", "scale", "detect"]
    )
    p.add_argument("--sizes", nargs="+", type=int, default=[1000, 2000], help="m for the loop comparison")
    p.add_argument("--repeats", type=int, default=3, help="runs per timing (median)")
    p.add_argument("--loop-repeats", type=int, default=3, help="runs of the slow per-row loop (median)")
    p.add_argument("--scale-m", type=int, default=10_000)
    p.add_argument("--scale-d", type=int, default=784)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="optional JSON file for the results")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    results: dict[str, object] = {"threads": args.threads, "torch": torch.__version__}
    if "loop" in args.parts:
        results["loop"] = part_loop(args.sizes, args.repeats, args.loop_repeats)
    if "scale" in args.parts:
        results["scale"] = part_scale(args.scale_m, args.scale_d, args.repeats, args.threads)
    if "detect" in args.parts:
        results["detect"] = part_detect(args.seeds)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(results, fh, indent=2, default=float)


if __name__ == "__main__":
    main()
