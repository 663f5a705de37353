"""`valuate(..., method="aum")` alone, with ``forest=True`` and with ``forest="auto"`` (docs/valuate.md),
on valuate's own selection and reported seeds (benchmarks/bench_valuate.py: 5 bundled sets, 10%).

usage: OMP_NUM_THREADS=1 python benchmarks/results/s8_mixture/valuate_auto.py   (from the worktree root, PYTHONPATH=.)
"""

import pandas as pd
import torch

from benchmarks.bench_valuate import REPORTED_SEEDS, SELECTION_SEEDS, run

if __name__ == "__main__":
    torch.set_num_threads(1)
    for tag, seeds in (("selection", SELECTION_SEEDS), ("reported", REPORTED_SEEDS)):
        rows = []
        for forest in (False, True, "auto"):
            kwargs = {"forest": forest} if forest is not False else None
            rows += [dict(r, forest=str(forest)) for r in run(seeds, methods=("aum",), method_kwargs=kwargs)]
        df = pd.DataFrame(rows)
        df.to_csv(f"benchmarks/results/s8_mixture/valuate_auto_{tag}.csv", index=False)
        print(tag, df.groupby("forest")[["flagged_f1", "auroc", "seconds"]].mean().round(3).to_string())
        print(df.pivot_table(index="dataset", columns="forest", values="flagged_f1").round(3).to_string())
