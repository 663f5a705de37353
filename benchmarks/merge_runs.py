"""Merge benchmark ``runs.csv`` files into one table and its markdown summary.

Later files replace the rows of earlier ones with the same (dataset, noise_kind, noise, seed,
method): re-running a few methods or adding datasets does not mean re-running everything.
``--datasets`` / ``--methods`` keep a subset (e.g. the datasets every method ran on).

Usage::

    python -m benchmarks.merge_runs old/runs.csv new/runs.csv --out DIR --command "..."
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from benchmarks.protocol import summary_markdown

KEY = ["dataset", "noise_kind", "noise", "seed", "method"]


def merge(paths: list[str]) -> pd.DataFrame:
    """Concatenate run tables; for a repeated key the last file wins.

    Example:
        >>> a = pd.DataFrame({"dataset": ["d"], "noise_kind": ["label"], "noise": [0.1], "seed": [0],
        ...                   "method": ["m"], "f1": [0.1]})
        >>> b = a.assign(f1=0.9)
        >>> import tempfile, os
        >>> tmp = tempfile.mkdtemp()
        >>> a.to_csv(os.path.join(tmp, "a.csv"), index=False); b.to_csv(os.path.join(tmp, "b.csv"), index=False)
        >>> merge([os.path.join(tmp, "a.csv"), os.path.join(tmp, "b.csv")])["f1"].tolist()
        [0.9]
    """
    df = pd.concat([pd.read_csv(p) for p in paths], ignore_index=True)
    return df.drop_duplicates(KEY, keep="last").reset_index(drop=True)


def wins_markdown(df: pd.DataFrame, method: str, metric: str = "f1") -> str:
    """Per dataset and noise rate: ``method``'s mean ``metric`` over seeds, the best baseline's, and who wins."""
    lines = [
        f"| noise | dataset | {method} | best baseline | baseline {metric} | {method} ahead |",
        "|---|---|---|---|---|---|",
    ]
    baselines = df[df["kind"] == "baseline"]["method"].unique()
    for (kind, rate), part in df.groupby(["noise_kind", "noise"], sort=True):
        per = part.groupby(["dataset", "method"], sort=False)[metric].mean().unstack()
        for d in dict.fromkeys(part["dataset"]):
            if method not in per.columns or pd.isna(per.loc[d, method]):
                continue
            base = per.loc[d, [b for b in baselines if b in per.columns and b != "random"]].dropna()
            ours = per.loc[d, method]
            lines.append(
                f"| {kind} {rate:.0%} | {d} | {ours:.3f} | {base.idxmax()} | {base.max():.3f} | "
                f"{'yes' if ours > base.max() else '**no**'} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="runs.csv files, earliest first")
    p.add_argument("--datasets", nargs="+", default=None)
    p.add_argument("--methods", nargs="+", default=None, help="methods to keep, in table order")
    p.add_argument("--command", default=None, help="the commands that produced the runs (for the summary)")
    p.add_argument("--wins", default=None, help="also write wins.md: this method against the best baseline")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    df = merge(args.runs)
    if args.datasets:
        df = df[df["dataset"].isin(args.datasets)]
    if args.methods:
        df = df[df["method"].isin(args.methods)]
        df = (
            df.assign(_o=df["method"].map({m: i for i, m in enumerate(args.methods)}))
            .sort_values(["_o"], kind="stable")
            .drop(columns="_o")
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "runs.csv", index=False)
    (out / "summary.md").write_text(summary_markdown(df, args.command))
    if args.wins:
        (out / "wins.md").write_text(wins_markdown(df, args.wins) + "\n")
    print(out / "summary.md")


if __name__ == "__main__":
    main()
