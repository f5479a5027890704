"""A stand-in training script for the demo: prints a loss curve and writes a result.

It reads its arguments from the command line, like a real script would, and writes its metrics
as JSON to the file named by LABTASKER_RESULT, which labtasker collects into the results table.
"""

import argparse
import json
import math
import os
import random
import time

parser = argparse.ArgumentParser()
parser.add_argument("--lr", type=float, required=True)
parser.add_argument("--depth", type=int, required=True)
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--steps", type=int, default=5)
opts = parser.parse_args()

rng = random.Random(opts.seed)
loss = 2.0
for step in range(1, opts.steps + 1):
    loss *= 1 - min(opts.lr, 0.5) * (1 + 0.1 * opts.depth) / 2
    loss += rng.uniform(0, 0.02)
    print(f"step {step}/{opts.steps} loss={loss:.4f}", flush=True)
    time.sleep(0.1)
accuracy = round(1 - loss / 2 + 0.01 * math.log(opts.depth + 1), 4)
print(f"done: gpu={os.environ.get('CUDA_VISIBLE_DEVICES') or 'none'} accuracy={accuracy}")
with open(os.environ["LABTASKER_RESULT"], "w") as f:
    json.dump({"loss": round(loss, 4), "accuracy": accuracy}, f)
