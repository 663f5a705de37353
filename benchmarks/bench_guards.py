"""Per-step cost of DataValuation's guards: ``check_inputs=True`` against ``False`` (NDDV, softplus).

One process, interleaved repeats (plain fit, checks off, checks on), 300 steps of batch 32 on
10,000 synthetic rows, one thread. Run: ``OMP_NUM_THREADS=1 python -m benchmarks.bench_guards``.
Results: docs/faults.md.
"""

from __future__ import annotations

import statistics
import time
import warnings

STEPS = 300


def fit_seconds(check: bool | None, loader) -> float:
    """Wall time of one fit: ``None`` plain (no callback), else NDDV with ``check_inputs=check``."""
    import lightning as L

    from lightning_dv import NDDV, DataValuation
    from lightning_dv.modules import MLPClassifier
    from lightning_dv.progress import quiet_trainer_settings

    L.seed_everything(0, verbose=False)
    callbacks = [] if check is None else [DataValuation(NDDV(), check_inputs=check)]
    model = MLPClassifier(10, 2, valuate=check is not None)
    trainer = L.Trainer(
        callbacks=callbacks, **quiet_trainer_settings(max_epochs=1, limit_train_batches=STEPS)
    )
    start = time.perf_counter()
    trainer.fit(model, loader)
    return time.perf_counter() - start


def main(repeats: int = 5) -> None:
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_dv import IndexedDataset

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10_000, 10, generator=g)
    y = (x[:, 0] > 0).long()
    loader = DataLoader(IndexedDataset(TensorDataset(x, y)), batch_size=32, shuffle=False)
    res: dict[str, list[float]] = {"plain": [], "checks_off": [], "checks_on": []}
    for _ in range(repeats):
        for name, check in (("plain", None), ("checks_off", False), ("checks_on", True)):
            res[name].append(fit_seconds(check, loader))
    for name, times in res.items():
        print(f"{name}: median {statistics.median(times) * 1000 / STEPS:.3f} ms/step")
    ratios = [a / b for a, b in zip(res["checks_on"], res["checks_off"])]
    print(f"checks on / off: median ratio {statistics.median(ratios):.3f} over {repeats} repeats")


if __name__ == "__main__":
    main()
