"""The ``lightning-dv`` command line: ``demo`` and ``bench``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lightning-dv`` command."""
    from lightning_dv.methods import registry

    methods = "\n".join(f"  {s.name:<16}{s.kind:<11}{s.description}" for s in registry.METHODS.values())
    parser = argparse.ArgumentParser(
        prog="lightning-dv",
        description="Data valuation for PyTorch Lightning.",
        epilog=f"registered methods (name, kind, description):\n{methods}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo", help="LossVal on digits with 10%% injected label noise (about a minute on CPU)"
    )
    demo.add_argument("--out", default="demo_output", help="output folder (default: demo_output)")
    demo.add_argument("--noise", type=float, default=0.1, help="fraction of flipped labels (default: 0.1)")
    demo.add_argument("--epochs", type=int, default=30, help="training epochs (default: 30, as in the paper)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    sub.add_parser(
        "bench",
        help="the OpenDataVal benchmark protocol; `lightning-dv bench --help` for options",
        add_help=False,
    )
    args, rest = parser.parse_known_args(argv)
    if args.command == "demo":
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        if not 0.0 < args.noise < 0.5:
            parser.error(f"--noise must lie in (0, 0.5); got {args.noise}")
        if args.epochs < 1:
            parser.error(f"--epochs must be >= 1; got {args.epochs}")
        from lightning_dv.demo import run_demo

        run_demo(
            out_dir=args.out,
            noise=args.noise,
            epochs=args.epochs,
            seed=args.seed,
            progress=not args.no_progress,
        )
        return 0
    try:
        from benchmarks import main as bench_main
    except ImportError:
        parser.exit(
            2,
            "lightning-dv bench: the benchmark package is not installed; it ships with the source checkout, "
            "not the wheel. Run it from the repository root: `python -m benchmarks --help`.\n",
        )
    return int(bench_main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
