"""The ``lightning-dv`` command line: ``value`` (a user's own table), ``demo`` and ``bench``."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

PROG = "lightning-dv"


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Appends ``(default: ...)`` to every option that has a default, keeps description line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        no_default = action.default is None or action.default is False or action.default is argparse.SUPPRESS
        if "(default" in text or "%(default)" in text or no_default or not action.option_strings:
            return text
        if isinstance(action.default, (list, tuple)):
            return text + f" (default: {' '.join(map(str, action.default))})".replace("%", "%%")
        return text + " (default: %(default)s)"


def _parser() -> argparse.ArgumentParser:
    from lightning_dv import __version__
    from lightning_dv.methods import registry
    from lightning_dv.valuate import DEFAULT_METHOD, METHODS

    methods = "\n".join(f"  {s.name:<16}{s.kind:<11}{s.description}" for s in registry.METHODS.values())
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Data valuation for PyTorch Lightning.",
        epilog=f"registered methods (name, kind, description):\n{methods}",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    value = sub.add_parser(
        "value",
        help="value every row of your own CSV or parquet table",
        description=(
            "Value every row of a labelled table: train the built-in MLP with a valuation method (or run a "
            "training-free one) and write row, id, value, flagged, label and predicted_label.\n"
            "Every column except --label and --id is a feature and must be numeric.\n\n"
            "example: lightning-dv value data.csv --label species --id key --out values.csv"
        ),
        formatter_class=HelpFormatter,
    )
    value.add_argument("data", metavar="DATA", help="input table (.csv or .parquet)")
    value.add_argument("--label", required=True, metavar="COLUMN", help="column holding the class labels")
    value.add_argument("--id", default=None, metavar="COLUMN", help="column of row ids, copied to the output")
    value.add_argument(
        "--method",
        default=DEFAULT_METHOD,
        choices=list(METHODS),
        help="valuation method, the default chosen by measurement (docs/valuate.md)",
    )
    value.add_argument(
        "--out", default=None, metavar="FILE", help="output .csv, .parquet or .npz (default: DATA_values.csv)"
    )
    value.add_argument("--epochs", type=int, default=None, help="training epochs (default: the method's own)")
    value.add_argument("--seed", type=int, default=0, help="seed of the model, data order and hold-out")
    value.add_argument(
        "--forest",
        action="store_true",
        help="AUM only: add an extra-trees forest's out-of-bag opinion on every label (about 1 s per 1000 rows; "
        "benchmarks/README.md 2f)",
    )
    value.add_argument(
        "--opinion",
        choices=("forest", "auto"),
        default=None,
        help="AUM only: 'forest' is --forest; 'auto' adds the forest's or a Gaussian-mixture classifier's "
        "opinion, whichever predicts the labels better (benchmarks/README.md 2g)",
    )
    value.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    demo = sub.add_parser(
        "demo",
        help="LossVal on digits with 10%% injected label noise (about a minute on CPU)",
        description="LossVal on scikit-learn's digits with injected label noise, end to end.",
        formatter_class=HelpFormatter,
    )
    demo.add_argument("--out", default="demo_output", help="output folder")
    demo.add_argument("--noise", type=float, default=0.1, help="fraction of flipped labels, in (0, 0.5)")
    demo.add_argument("--epochs", type=int, default=30, help="training epochs (30 as in the paper)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the split, the noise and the model")
    demo.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    sub.add_parser(
        "bench",
        help="the OpenDataVal benchmark protocol; `lightning-dv bench --help` for options",
        add_help=False,
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lightning-dv`` command."""
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    if args.command != "bench" and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "value":
        return run_value(args, parser)
    if args.command == "demo":
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
            f"{PROG} bench: the benchmark package is not installed; it ships with the source checkout, "
            "not the wheel. Run it from the repository root: `python -m benchmarks --help`.\n",
        )
    return int(bench_main(rest, prog=f"{PROG} bench") or 0)


def read_table(path: str | Path):
    """Read a CSV or parquet table into a DataFrame, or raise a ValueError saying why not."""
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"no file at {str(p)!r}.")
    suffix = p.suffix.lower()
    if suffix == ".csv":
        return pd.read_csv(p)
    if suffix == ".parquet":
        return pd.read_parquet(p)
    raise ValueError(f"{str(p)!r}: unsupported extension {p.suffix!r}; give a .csv or .parquet file.")


def run_value(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``lightning-dv value``: read the table, value it, write the file, print a summary."""
    from lightning_dv.valuate import InputError, valuate

    def fail(message: str) -> int:
        parser.exit(2, f"{PROG} value: error: {message}\n")
        return 2

    if args.epochs is not None and args.epochs < 1:
        return fail(f"--epochs must be >= 1; got {args.epochs}")
    for flag, given in (("--forest", args.forest), (f"--opinion {args.opinion}", args.opinion)):
        if given and args.method != "aum":
            return fail(f"{flag} adds a second opinion to AUM; it does not apply to --method {args.method}.")
    if args.forest and args.opinion == "auto":
        return fail("--forest and --opinion auto ask for two different second opinions; give one.")
    out = Path(args.out) if args.out else Path(args.data).with_name(Path(args.data).stem + "_values.csv")
    try:
        from lightning_dv.io import check_export_path

        check_export_path(out, argument="--out")
        table = read_table(args.data)
    except (ValueError, PermissionError) as err:
        return fail(str(err))
    for option, column in (("--label", args.label), ("--id", args.id)):
        if column is not None and column not in table.columns:
            return fail(
                f"{option} {column!r}: no such column in {args.data}; the columns are "
                f"{', '.join(map(str, table.columns))}."
            )
    feature_columns = [c for c in table.columns if c not in (args.label, args.id)]
    if not feature_columns:
        return fail(f"{args.data} has no feature columns besides --label (and --id).")
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    text = [str(c) for c in feature_columns if not (is_numeric_dtype(table[c]) or is_bool_dtype(table[c]))]
    if text:
        return fail(
            f"{len(text)} feature column(s) are not numeric: {', '.join(text)}. Every column except --label "
            "and --id is a feature: encode them as numbers, drop them from the file, or name an id column with --id."
        )
    ids = None if args.id is None else table[args.id].to_numpy()
    print(
        f"{args.data}: {len(table)} rows, {len(feature_columns)} feature columns, label column {args.label!r}; "
        f"method {args.method}",
        flush=True,
    )
    start = time.perf_counter()
    try:
        values = valuate(
            table[feature_columns],
            table[args.label],
            method=args.method,
            epochs=args.epochs,
            seed=args.seed,
            ids=ids,
            progress=not args.no_progress,
            forest="auto" if args.opinion == "auto" else args.forest or args.opinion == "forest",
        )
    except InputError as err:
        return fail(str(err))
    values.metadata.update(label_column=args.label, id_column=args.id, source=str(args.data))
    values.save(out, trajectory=False)
    seconds = time.perf_counter() - start
    n, k = len(values), int(values.flagged.sum())
    print(f"\nValued {n} rows in {seconds:.1f} s. Flagged {k} rows ({k / n:.1%}) as low value.")
    print("\nThe 10 lowest-valued rows:")
    print(values.format_table(values.lowest(10)))
    print(f"\nvalues: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
