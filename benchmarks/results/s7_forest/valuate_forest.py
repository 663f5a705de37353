"""`valuate(..., method="aum")` with and without ``forest=True`` (docs/valuate.md), selection and reported seeds.

usage: OMP_NUM_THREADS=1 python benchmarks/results/s7_forest/valuate_forest.py   (from the worktree root, PYTHONPATH=.)
"""

import pandas as pd
import torch

from benchmarks.bench_valuate import REPORTED_SEEDS, SELECTION_SEEDS, run

if __name__ == "__main__":
    torch.set_num_threads(1)
    for tag, seeds in (("selection", SELECTION_SEEDS), ("reported", REPORTED_SEEDS)):
        rows = [dict(r, forest=False) for r in run(seeds, methods=("aum",))]
        rows += [dict(r, forest=True) for r in run(seeds, methods=("aum",), method_kwargs={"forest": True})]
        df = pd.DataFrame(rows)
        df.to_csv(f"benchmarks/results/s7_forest/valuate_forest_{tag}.csv", index=False)
        print(tag, df.groupby("forest")[["flagged_f1", "auroc", "seconds"]].mean().round(3).to_string())
        print(df.pivot_table(index="dataset", columns="forest", values="flagged_f1").round(3).to_string())
