"""The one DDP worker: a 2-process CPU (gloo) fit with any valuation method; each rank saves its result.

Usage: python ddp_worker.py METHOD OUT_DIR [--devices N] [--rows N] [--frozen] [--accumulate K]

METHOD is a training-time objective (lossval, nddv, aum, margin: see tests/helpers.py) or a
whole-set callback by its public name (ComplexityGapValuation, EcoValValuation). Each rank writes
OUT_DIR/d{devices}_rank{r}.pt with the values, rows, steps and model; rank zero exports
OUT_DIR/values.csv.
"""

import argparse
import os
import sys

import lightning as L
import torch

TESTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path[:0] = [os.path.join(TESTS, ".."), TESTS]  # this checkout's lightning_dv and the test helpers
from helpers import MLP, contract_data, loader, make_callback  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("method")
p.add_argument("out")
p.add_argument("--devices", type=int, default=2)
p.add_argument("--rows", type=int, default=101)  # odd: DistributedSampler pads one duplicate
p.add_argument("--frozen", action="store_true", help="model lr 0: values depend only on the rows")
p.add_argument("--accumulate", type=int, default=1)
p.add_argument("--epochs", type=int, default=2)
args = p.parse_args()

torch.set_num_threads(1)
x, y, xv, yv = contract_data(n=args.rows)
L.seed_everything(0, verbose=False)
model = MLP(x.shape[1], 3, hidden=16, lr=0.0 if args.frozen else 0.01)
cb = make_callback(args.method, xv, yv, export_path=os.path.join(args.out, "values.csv"))
if args.frozen and hasattr(cb, "objective"):
    cb.objective.lr = 1e-12
trainer = L.Trainer(
    max_epochs=args.epochs,
    accelerator="cpu",
    devices=args.devices,
    strategy="ddp" if args.devices > 1 else "auto",
    callbacks=[cb],
    logger=False,
    enable_checkpointing=False,
    enable_progress_bar=False,
    enable_model_summary=False,
    accumulate_grad_batches=args.accumulate,
)
trainer.fit(model, loader(x, y, batch_size=8, shuffle=True))
v = cb.values.sorted_by_row()
state = getattr(model, "dv_state", None)
torch.save(
    {
        "rows": torch.as_tensor(v.index),
        "values": torch.as_tensor(v.values),
        "steps": getattr(cb, "optimizer_steps", None),
        "global_step": trainer.global_step,
        "model": {k: t.clone() for k, t in model.state_dict().items() if not k.startswith("dv_state.")},
        "state": None if state is None else {k: t.clone() for k, t in state.state_dict().items()},
    },
    os.path.join(args.out, f"d{args.devices}_rank{trainer.global_rank}.pt"),
)
