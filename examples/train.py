"""A stand-in training script, standard library only: the `train.py` of the docs and sweep.toml.

    python train.py --lr 0.01 --seed 1 [--model small --width 128 --epochs 10 --run 0]

It prints one line per epoch, like a real training loop, and reports its metrics the way
labtasker collects results: a JSON object written to the file named by $LABTASKER_RESULT (when
the variable is set; run by hand, it just prints them). It also leaves its metrics in
out/<task id>.json, the file sweep.toml's `outputs = ["out/*.json"]` copies back.
"""

import argparse
import json
import math
import os
import random

parser = argparse.ArgumentParser(description="A stand-in training script.")
parser.add_argument("--lr", type=float, default=0.01)
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--model", default="small")
parser.add_argument("--width", type=int, default=128)
parser.add_argument("--epochs", type=int, default=3)
parser.add_argument("--run", type=int, default=0, help="the repeat index; only recorded")
opts = parser.parse_args()

rng = random.Random(f"{opts.seed}:{opts.run}")
capacity = math.log2(opts.width) / 10 + (0.05 if opts.model != "small" else 0.0)
loss = 2.0
for epoch in range(1, opts.epochs + 1):
    loss *= 1 - min(opts.lr * 5, 0.5) * capacity
    loss += rng.uniform(0.0, 0.01)
    print(f"epoch {epoch}/{opts.epochs} loss={loss:.4f}", flush=True)

acc = round(1 - loss / 2, 4)
metrics = {
    "loss": round(loss, 4),
    "acc": acc,
    "val": {"loss": round(loss * 1.1, 4), "acc": round(acc - 0.02, 4)},
}
print("result:", json.dumps(metrics))

os.makedirs("out", exist_ok=True)
with open(os.path.join("out", f"{os.environ.get('LABTASKER_TASK_ID', 'run')}.json"), "w") as f:
    json.dump({"args": vars(opts), **metrics}, f)
path = os.environ.get("LABTASKER_RESULT")
if path:
    with open(path, "w") as f:
        json.dump(metrics, f)
