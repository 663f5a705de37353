"""LossVal's OT term alone: our solver (``ot="fast"``) against geomloss (``ot="exact"``), in one process.

For each validation size J: the one-off set-up (the validation self-term ``OT(b, b)``) and the
median time of one call plus its backward at batch 32 on 16 Gaussian features (the overhead
benchmark's MLP workload), the solvers interleaved ``--repeats`` times: ``fast`` (the host loop
where it applies), ``fast-torch`` (the same solver with its torch loop only: the loop before the
host path), ``exact`` (geomloss); ``--ot-scaling`` adds the fast solver annealing at a coarser
scaling (``fast@0.2``: ``LossVal(ot_scaling=0.2)``). With ``--fit-ratios``, the median
training-step CPU time of a LossVal fit over a plain fit (``--workload mlp``: 1,000 rows, batch 32,
32 steps; ``cnn``: batch 128, 20 steps), default, torch loop and each ``--ot-scaling``, interleaved
in this process. With ``--profile``, a cProfile of one LossVal fit (``--steps`` steps) per solver
and J, top functions by internal time. Run::

    OMP_NUM_THREADS=1 python -m benchmarks.bench_lossval_ot --valid 100 1000 10000 --profile
    OMP_NUM_THREADS=1 python -m benchmarks.bench_lossval_ot --valid 100 1000 --fit-ratios
    OMP_NUM_THREADS=1 python -m benchmarks.bench_lossval_ot --workload cnn --valid 100 --fit-ratios
    OMP_NUM_THREADS=1 python -m benchmarks.bench_lossval_ot --valid 100 --signal-share
    OMP_NUM_THREADS=1 python -m benchmarks.bench_lossval_ot --workload cnn --valid 100 --kernel-range --ot-scaling 0.3 0.2
    OMP_NUM_THREADS=1 python -m benchmarks.bench_lossval_ot --valid 100 --detection runs.csv
    OMP_NUM_THREADS=1 python -m benchmarks.bench_lossval_ot --baseline main --workload cnn --valid 100

``--baseline REV`` times the OT call of the solver at a git revision against this tree's
(``lossval/sinkhorn.py`` and ``lossval/host.py`` read with ``git show``), interleaved in one process.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import pstats
import statistics
import time

import torch

from benchmarks.overhead import synthetic_data

SOLVERS = ("fast", "fast-torch", "exact")


def make_divergence(solver: str, y: torch.Tensor, diameter: float):
    """The LossVal OT object of ``solver`` (``fast``, ``exact``, ``fast-torch``: the fast solver with
    its torch loop on every size (no host path), or ``fast@S``: the fast solver annealing at scaling
    ``S``) for validation features ``y`` (raw unit masses)."""
    from lightning_dv.methods.lossval.ot import CachedSinkhornDivergence
    from lightning_dv.methods.lossval.sinkhorn import SinkhornDivergence

    if solver.startswith("fast@"):
        return SinkhornDivergence(y, torch.ones(y.shape[0]), diameter, solve_scaling=float(solver[5:]))
    if solver == "fast-torch":
        return SinkhornDivergence(y, torch.ones(y.shape[0]), diameter, host_max_entries=0)
    cls = SinkhornDivergence if solver == "fast" else CachedSinkhornDivergence
    return cls(y, torch.ones(y.shape[0]), diameter)


def time_calls(
    valid: int, repeats: int = 5, calls: int = 20, solvers=SOLVERS, workload: str = "mlp"
) -> dict[str, dict]:
    """Set-up seconds and median milliseconds per call (value and backward) of each solver, on
    ``calls`` batches of ``workload`` (:func:`ot_batches`).

    Example:
        >>> res = time_calls(20, repeats=1, calls=2)
        >>> sorted(res), res["fast"]["call_ms"] > 0
        (['exact', 'fast', 'fast-torch'], True)
    """
    xs, y, diameter = ot_batches(workload, valid, calls)
    out: dict[str, dict] = {}
    for name in solvers:
        t0 = time.perf_counter()
        out[name] = {"div": make_divergence(name, y, diameter), "setup_s": time.perf_counter() - t0, "ms": []}
    for _ in range(repeats):
        for name in solvers:
            div = out[name]["div"]
            t0 = time.perf_counter()
            for x in xs:
                a = torch.ones(x.shape[0], requires_grad=True)
                div(a, x).backward()
            out[name]["ms"].append(1e3 * (time.perf_counter() - t0) / calls)
    for stats in out.values():
        stats["call_ms"] = statistics.median(stats.pop("ms"))
        del stats["div"]
    return out


@contextlib.contextmanager
def solver_loop(solver: str):
    """``fast-torch``: the fast solver with its torch loop on every size (the host loop off, as
    before it existed); any other solver name leaves the default."""
    from lightning_dv.methods.lossval import host

    saved = host.HOST_MAX_ENTRIES
    host.HOST_MAX_ENTRIES = 0 if solver == "fast-torch" else saved
    try:
        yield
    finally:
        host.HOST_MAX_ENTRIES = saved


def profile_fit(solver: str, valid: int = 100, steps: int = 100, top: int = 15, workload: str = "mlp") -> str:
    """cProfile of one LossVal fit (MLP, batch 32, or CNN, batch 128; ``steps`` steps): the top
    functions by own time, then LossVal's own (and geomloss's loop) by cumulative time.
    ``solver``: ``fast``, ``fast-torch`` or ``exact``."""
    from benchmarks.overhead import time_fit, validation_data, workload_data
    from lightning_dv import LossVal

    x, y = workload_data(workload, (32 if workload == "mlp" else 128) * steps)
    xv, yv = validation_data(workload, valid)
    ot = "exact" if solver == "exact" else "fast"
    kw = {"measure_memory": False, "workload": workload}
    with solver_loop(solver):
        time_fit(x, y, LossVal(validation=(xv, yv), ot=ot), 1, 5, **kw)  # warm-up
        prof = cProfile.Profile()
        prof.enable()
        time_fit(x, y, LossVal(validation=(xv, yv), ot=ot), 1, steps, **kw)
        prof.disable()
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf)
    stats.sort_stats("tottime").print_stats(top)
    print("LossVal's own functions by cumulative time:", file=buf)
    stats.sort_stats("cumulative").print_stats(r"methods/lossval|geomloss/_legacy", 8)
    return buf.getvalue()


def fit_ratios(
    valid: int, ot_scalings=(), repeats: int = 3, steps: int = 32, workload: str = "mlp"
) -> dict[str, float]:
    """Median step time (this thread's CPU time) of a LossVal fit over a plain fit's: the default
    (host loop where it applies), ``torch loop`` (the host loop off) and each ``ot_scaling``,
    interleaved ``repeats`` times in this process (median of the per-repeat ratios).

    Example:
        >>> sorted(fit_ratios(20, (0.2,), repeats=1, steps=6))
        ['lossval', 'lossval(ot_scaling=0.2)', 'lossval(torch loop)']
    """
    from benchmarks.overhead import time_fit, validation_data, workload_data
    from lightning_dv import LossVal

    x, y = workload_data(workload, (32 if workload == "mlp" else 128) * steps)
    xv, yv = validation_data(workload, valid)
    variants = {"lossval": ("fast", {}), "lossval(torch loop)": ("fast-torch", {})}
    variants |= {f"lossval(ot_scaling={s})": ("fast", {"ot_scaling": s}) for s in ot_scalings}
    ratios: dict[str, list[float]] = {name: [] for name in variants}
    kw = {"measure_memory": False, "workload": workload, "clock": "cpu"}
    time_fit(x, y, None, 1, 5, **kw)  # warm-up
    for _ in range(repeats):
        plain = time_fit(x, y, None, 1, steps, **kw)[2]
        for name, (solver, options) in variants.items():
            with solver_loop(solver):
                step = time_fit(x, y, LossVal(validation=(xv, yv), **options), 1, steps, **kw)[2]
            ratios[name].append(step / plain)
    return {name: statistics.median(r) for name, r in ratios.items()}


def ot_batches(workload: str, valid: int, batches: int):
    """``(batches of features, validation features, diameter)`` of the OT call on ``workload``:
    ``mlp`` 32 x 16 Gaussian features, ``cnn`` 128 pooled images (3072 features)."""
    from benchmarks.overhead import validation_data
    from lightning_dv.methods.lossval.ot import bounding_diameter

    b = 32 if workload == "mlp" else 128
    if workload == "mlp":
        x_all = torch.from_numpy(synthetic_data(b * batches, seed=0)[0]).float()
        y = torch.from_numpy(synthetic_data(valid, seed=1)[0]).float()
    else:
        from benchmarks.fitting import PooledImages

        x_all = PooledImages(b * batches, pool=b * batches).images.reshape(b * batches, -1)
        y = torch.from_numpy(validation_data("cnn", valid)[0]).reshape(valid, -1).float()
    xs = [x_all[i * b : (i + 1) * b].contiguous() for i in range(batches)]
    return xs, y, 1.1 * bounding_diameter(y, xs[0])


def kernel_range(
    workload: str, valid: int, scalings=(0.5, 0.3, 0.2), batches: int = 10
) -> dict[float, tuple]:
    """Per annealing scaling: ``(epsilon steps, batches on which the host loop's unchecked kernel
    left float64's range)``. Such a batch runs the loop a second time, checked (``host.py``), so a
    coarser schedule only saves time where this count is 0.

    Example:
        >>> kernel_range("mlp", 20, (0.5,), batches=1)[0.5][1]
        0
    """
    import numpy as np

    from lightning_dv.methods.lossval.host import _kernel_loop, normalised_masses
    from lightning_dv.methods.lossval.sinkhorn import ZERO_MASS_LOG, SinkhornDivergence

    xs, y, diameter = ot_batches(workload, valid, batches)
    alpha, log_ma = normalised_masses(np.ones(xs[0].shape[0]), ZERO_MASS_LOG)
    out = {}
    for s in scalings:
        div = SinkhornDivergence(y, torch.ones(valid), diameter, solve_scaling=s)
        with np.errstate(all="ignore"):
            left = sum(
                _kernel_loop(
                    div.solve_eps,
                    div._host_cost(x),
                    alpha,
                    div._beta_host,
                    ZERO_MASS_LOG - log_ma,
                    checked=False,
                )
                is None
                for x in xs
            )
        out[s] = (len(div.solve_eps), left)
    return out


def solver_at_revision(rev: str):
    """The ``SinkhornDivergence`` class of ``lossval/sinkhorn.py`` and ``lossval/host.py`` as they
    are at git revision ``rev`` (read with ``git show``; the rest of the library from this tree)."""
    import subprocess
    import types

    def load(name: str) -> types.ModuleType:
        path = f"lightning_dv/methods/lossval/{name}.py"
        src = subprocess.run(
            ["git", "show", f"{rev}:{path}"], capture_output=True, text=True, check=True
        ).stdout
        module = types.ModuleType(f"{name}@{rev}")
        exec(compile(src, f"{rev}:{path}", "exec"), module.__dict__)
        return module

    old_host, old_sinkhorn = load("host"), load("sinkhorn")
    old_sinkhorn.host, old_sinkhorn.kernel_potentials = old_host, old_host.kernel_potentials
    return old_sinkhorn.SinkhornDivergence, old_host.kernel_potentials


def compare_revision(
    rev: str, valid: int, workload: str = "mlp", repeats: int = 15, batches: int = 8
) -> dict[str, dict[str, float]]:
    """The OT call of the solver at ``rev`` against this tree's, interleaved in one process (thread
    CPU time, median over repeats of the mean over ``batches`` fresh batches): the host cost matrix,
    the host loop, and the whole call with its backward; plus the largest relative difference of
    the value and of the batch-centred mass gradient (weights spread over [0.5, 1.5]).

    Example:
        >>> res = compare_revision("HEAD", 20, repeats=1, batches=1)
        >>> sorted(res), sorted(res["diff"])
        (['HEAD', 'diff', 'this tree'], ['gradient', 'value'])
    """
    import numpy as np

    from lightning_dv.methods.lossval.host import kernel_potentials
    from lightning_dv.methods.lossval.sinkhorn import SinkhornDivergence

    xs, y, diameter = ot_batches(workload, valid, batches)
    b = xs[0].shape[0]
    old_cls, old_loop = solver_at_revision(rev)
    solvers = {rev: (old_cls(y, torch.ones(valid), diameter), old_loop)}
    solvers["this tree"] = (SinkhornDivergence(y, torch.ones(valid), diameter), kernel_potentials)
    alpha = np.full(b, 1.0 / b)
    times = {name: {"cost": [], "loop": [], "call": []} for name in solvers}
    for _ in range(repeats):
        for name, (div, loop) in solvers.items():
            spent = dict.fromkeys(("cost", "loop", "call"), 0.0)
            for x in xs:
                t0 = time.thread_time()
                cost = div._host_cost(x)
                t1 = time.thread_time()
                loop(div.solve_eps, cost, alpha, div._beta_host)
                t2 = time.thread_time()
                a = torch.ones(b, requires_grad=True)
                div(a, x).backward()
                t3 = time.thread_time()
                spent["cost"] += t1 - t0
                spent["loop"] += t2 - t1
                spent["call"] += t3 - t2
            for part, seconds in spent.items():
                times[name][part].append(1e3 * seconds / batches)
    out = {name: {part: statistics.median(v) for part, v in parts.items()} for name, parts in times.items()}
    worst = {"value": 0.0, "gradient": 0.0}
    for x in xs:
        results = []
        for div, _ in solvers.values():
            a = torch.linspace(0.5, 1.5, b).requires_grad_()
            value = div(a, x)
            value.backward()
            results.append((float(value), a.grad - a.grad.mean()))
        (v0, g0), (v1, g1) = results
        worst["value"] = max(worst["value"], abs(v1 - v0) / abs(v0))
        worst["gradient"] = max(worst["gradient"], float((g1 - g0).norm() / g0.norm()))
    out["diff"] = worst
    return out


def detection_host_vs_torch(seeds=(0,), noise_rates=(0.1,), datasets=None):
    """The protocol's ``lossval`` (30 epochs, defaults) with the host loop and with the torch loop
    on identical splits: one row per run and loop (F1, AUROC, model accuracy), as a DataFrame."""
    import pandas as pd

    from benchmarks.protocol import DEFAULT_DATASETS, run_protocol

    frames = []
    for solver in ("fast", "fast-torch"):
        with solver_loop(solver):
            df = run_protocol(
                ["lossval"],
                datasets or DEFAULT_DATASETS,
                noise_rates,
                seeds=seeds,
                removal_fractions=(),
                log=None,
            )
        frames.append(df.assign(loop="host" if solver == "fast" else "torch"))
    return pd.concat(frames, ignore_index=True)


def ot_signal_share(batches: int = 30, seed: int = 0) -> dict[str, tuple[float, float]]:
    """How much LossVal's per-row OT term moves its trajectory signal, raw and uniform masses.

    The weight gradient of ``L_w D**2`` is ``l_i D**2 + 2 L_w D dD/dw_i``; the signal standardises
    it per batch, so only the row-varying parts count. On digits (10% flipped labels, losses of a
    logistic regression, J = 100 validation rows, batches of 32, unit weights): the median over
    batches of ``std(OT part) / std(loss part)`` and the smallest correlation of the centred
    gradient with and without the OT part.

    Example:
        >>> share = ot_signal_share(batches=2)
        >>> share["raw"][0] < share["uniform"][0]
        True
    """
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from lightning_dv.methods.lossval.ot import bounding_diameter
    from lightning_dv.methods.lossval.sinkhorn import SinkhornDivergence

    rng, gen = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    data = load_digits()
    x = StandardScaler().fit_transform(data.data).astype(np.float32)
    labels = data.target.copy()
    flip = rng.random(len(labels)) < 0.1
    labels[flip] = (labels[flip] + rng.integers(1, 10, flip.sum())) % 10
    proba = LogisticRegression(max_iter=200, C=0.05).fit(x, labels).predict_proba(x)
    loss = torch.tensor(-np.log(proba[np.arange(len(labels)), labels] + 1e-8), dtype=torch.float32)
    xt = torch.from_numpy(x)
    perm = torch.randperm(len(xt), generator=gen)
    yv, train = xt[perm[:100]], perm[100:]
    diameter = 1.1 * bounding_diameter(yv, xt[train[:32]])
    out = {}
    for mass, b in (("raw", torch.ones(100)), ("uniform", torch.full((100,), 0.01))):
        div, shares, corrs = SinkhornDivergence(yv, b, diameter), [], []
        for i in range(batches):
            rows = train[32 * i : 32 * i + 32]
            w = torch.ones(32, requires_grad=True)
            d = div(w if mass == "raw" else w / w.sum(), xt[rows])
            (dd,) = torch.autograd.grad(d, w)
            d, lw, loss_rows = float(d), float(loss[rows].sum()), loss[rows]
            loss_part = loss_rows * d**2 - (loss_rows * d**2).mean()
            ot_part = 2 * lw * d * (dd - dd.mean())
            shares.append(float(ot_part.std() / loss_part.std()))
            corrs.append(float(torch.corrcoef(torch.stack([loss_part + ot_part, loss_part]))[0, 1]))
        out[mass] = (statistics.median(shares), min(corrs))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_lossval_ot", description=__doc__)
    parser.add_argument(
        "--valid", nargs="+", type=int, default=[100, 1000, 10_000], help="validation sizes J"
    )
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats (median reported)")
    parser.add_argument(
        "--exact-max", type=int, default=1000, help="largest J timed with geomloss (its J x J)"
    )
    parser.add_argument(
        "--profile", action="store_true", help="also cProfile one LossVal fit per solver and J"
    )
    parser.add_argument("--steps", type=int, default=100, help="steps of the profiled fits")
    parser.add_argument(
        "--workload", choices=("mlp", "cnn"), default="mlp", help="model of --fit-ratios and --profile"
    )
    parser.add_argument(
        "--ot-scaling", nargs="*", type=float, default=[], help="also the fast solver at these scalings"
    )
    parser.add_argument(
        "--fit-ratios",
        action="store_true",
        help="also step ratios over a plain fit (default vs --ot-scaling)",
    )
    parser.add_argument(
        "--kernel-range",
        action="store_true",
        help="also, per --ot-scaling (and 0.5): the batches on which the host kernel leaves float64's range",
    )
    parser.add_argument(
        "--signal-share", action="store_true", help="also the OT term's share of LossVal's per-row signal"
    )
    parser.add_argument(
        "--detection",
        type=str,
        default=None,
        metavar="CSV",
        help="also the protocol's lossval with the host and the torch loop (seed 0, 10%% noise); rows to CSV",
    )
    parser.add_argument(
        "--baseline",
        type=str,
        default=None,
        metavar="REV",
        help="only: the OT call (cost matrix, loop, call + backward) of the solver at git revision REV "
        "against this tree's, interleaved, for each --valid on --workload",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.baseline:
        print(
            "| workload | J | solver | cost matrix (ms) | loop (ms) | call + backward (ms) |\n|---|---|---|---|---|---|"
        )
        for j in args.valid:
            res = compare_revision(args.baseline, j, args.workload, args.repeats)
            diff = res.pop("diff")
            for name, t in res.items():
                print(
                    f"| {args.workload} | {j:,} | {name} | {t['cost']:.3f} | {t['loop']:.3f} | {t['call']:.3f} |"
                )
            print(
                f"| | | largest relative difference: value {diff['value']:.1e}, centred gradient {diff['gradient']:.1e} | | | |"
            )
        return
    if args.signal_share:
        print("| masses | std(OT part) / std(loss part), median | min corr(with, without OT part) |")
        print("|---|---|---|")
        for mass, (share, corr) in ot_signal_share().items():
            print(f"| {mass} | {share:.4f} | {corr:.5f} |")
    if args.kernel_range:
        print(
            "| workload | J | scaling | epsilon steps | batches out of float64's range (of 10) |\n|---|---|---|---|---|"
        )
        for j in args.valid:
            for s, (steps, left) in kernel_range(args.workload, j, (0.5, *args.ot_scaling)).items():
                print(f"| {args.workload} | {j:,} | {s} | {steps} | {left} |")
    coarse = tuple(f"fast@{s}" for s in args.ot_scaling)
    print("| J | solver | set-up (s) | one call + backward (ms) |\n|---|---|---|---|")
    for j in args.valid:
        exact = j <= args.exact_max and args.workload == "mlp"
        solvers = (SOLVERS if exact else ("fast", "fast-torch")) + coarse
        for name, s in time_calls(j, args.repeats, solvers=solvers, workload=args.workload).items():
            print(f"| {j:,} | {name} | {s['setup_s']:.3f} | {s['call_ms']:.2f} |")
    if args.fit_ratios:
        print(f"\n| J | objective | step ratio over a plain fit ({args.workload}) |\n|---|---|---|")
        for j in args.valid:
            steps = 32 if args.workload == "mlp" else 20
            for name, ratio in fit_ratios(j, args.ot_scaling, args.repeats, steps, args.workload).items():
                print(f"| {j:,} | {name} | {ratio:.2f}x |")
    if args.detection:
        df = detection_host_vs_torch()
        df.to_csv(args.detection, index=False)
        wide = df.pivot_table(index="dataset", columns="loop", values=["f1", "auroc", "model_acc"])
        print(
            "\n| dataset | F1 host / torch | AUROC host / torch | model acc. host / torch |\n|---|---|---|---|"
        )
        for name, r in wide.iterrows():
            cells = [f"{r[(m, 'host')]:.4f} / {r[(m, 'torch')]:.4f}" for m in ("f1", "auroc", "model_acc")]
            print(f"| {name} | " + " | ".join(cells) + " |")
    if args.profile:
        for j in args.valid:
            for name in ("fast", "fast-torch") + (("exact",) if j <= args.exact_max else ()):
                print(f"\n### cProfile, {args.workload}, LossVal({name}), J={j}, {args.steps} steps\n")
                print(profile_fit(name, j, args.steps, workload=args.workload))


if __name__ == "__main__":
    main()
