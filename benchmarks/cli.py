"""Command line of the benchmarks: ``python -m benchmarks [overhead] ...``."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence

from benchmarks.protocol import DEFAULT_DATASETS, REMOVAL_FRACTIONS


def _parser(prog: str = "python -m benchmarks") -> argparse.ArgumentParser:
    from benchmarks.registry import METHODS
    from lightning_dv.cli import HelpFormatter

    p = argparse.ArgumentParser(
        prog=prog,
        formatter_class=HelpFormatter,
        description=(
            "Run the OpenDataVal protocol: every method values the same noisy splits; writes runs.csv, "
            "summary.md and PNG plots. `python -m benchmarks overhead --help` for the "
            "training-overhead benchmark."
        ),
    )
    p.add_argument(
        "--methods",
        nargs="+",
        default=["all"],
        metavar="NAME",
        help=f"methods to run, or 'all' / 'baselines' / 'project' (registered: {', '.join(METHODS)})",
    )
    p.add_argument(
        "--datasets",
        nargs="+",
        default=list(DEFAULT_DATASETS),
        metavar="NAME",
        help="bundled classification datasets",
    )
    p.add_argument(
        "--noise",
        nargs="+",
        type=float,
        default=[0.1, 0.2],
        metavar="RATE",
        help="noise rates (fractions of corrupted rows)",
    )
    p.add_argument(
        "--noise-kinds",
        nargs="+",
        default=["label"],
        choices=["label", "feature", "mixed"],
        help="kinds of corruption",
    )
    p.add_argument("--seeds", type=int, default=3, help="number of seeds (splits) per setting")
    p.add_argument("--first-seed", type=int, default=0, help="seeds run from here upwards")
    p.add_argument("--n-train", type=int, default=1000, help="training rows (smaller sets: proportional)")
    p.add_argument("--no-removal", action="store_true", help="skip the point-removal curves (faster)")
    p.add_argument("--no-plots", action="store_true", help="write runs.csv and summary.md only")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--out", default="bench_results", help="output folder")
    p.add_argument("--list", action="store_true", help="list the registered methods and exit")
    return p


def _resolve_methods(names: Sequence[str]) -> list[str]:
    from benchmarks.registry import METHODS

    out: list[str] = []
    for name in names:
        if name == "all":
            out += list(METHODS)
        elif name in ("baselines", "project"):
            out += [m.name for m in METHODS.values() if m.kind == name.rstrip("s")]
        else:
            out.append(name)
    return list(dict.fromkeys(out))


def main(argv: Sequence[str] | None = None, prog: str = "python -m benchmarks") -> int:
    """Entry point of ``python -m benchmarks`` (and ``lightning-dv bench``).

    Args:
        argv: Arguments without the program name (default: ``sys.argv[1:]``). A first argument
            ``overhead`` runs :func:`benchmarks.overhead.main` with the rest.
        prog: Program name shown in usage and help (``lightning-dv bench`` from that command).

    Returns:
        Process exit code (0 on success, 1 when some run failed).

    Example:
        >>> main(["--list"])  # doctest: +ELLIPSIS
        random ...
        0
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["overhead"]:
        from benchmarks.overhead import main as overhead_main

        return overhead_main(argv[1:])
    args = _parser(prog).parse_args(argv)
    from benchmarks.registry import METHODS

    if args.list:
        for m in METHODS.values():
            print(f"{m.name:16s} {m.kind:9s} {m.description}")
        return 0
    import torch

    from benchmarks.protocol import run_protocol, write_report

    if args.threads:
        torch.set_num_threads(args.threads)
    methods = _resolve_methods(args.methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        print(f"unknown method(s): {', '.join(unknown)}; registered: {', '.join(METHODS)}", file=sys.stderr)
        return 2
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    df = run_protocol(
        methods,
        args.datasets,
        args.noise,
        args.noise_kinds,
        seeds,
        removal_fractions=() if args.no_removal else REMOVAL_FRACTIONS,
        split_kwargs={"n_train": args.n_train},
    )
    command = "python -m benchmarks " + shlex.join(argv)
    paths = write_report(df, args.out, command=command, plots=not args.no_plots)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 1 if df.attrs.get("failed") else 0
