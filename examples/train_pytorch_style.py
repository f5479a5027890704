"""A training script in the shape labtasker expects (Python 3.8+; PyTorch optional).

It reads its hyperparameters from LABTASKER_ARGS (the task's args as JSON; command-line flags
override them), trains on the GPUs in CUDA_VISIBLE_DEVICES (set by labtasker: "" means CPU only),
and writes its metrics as JSON to LABTASKER_RESULT, which `labtasker results` turns into columns
(result.final_loss, result.val.loss, ...). Without torch it fits the same toy model in plain
Python, so it runs anywhere; with torch it uses it, on CUDA when a GPU was given.

    labtasker queue add --gpus 1 --grid lr=0.1,0.03,0.01 --grid seed=1,2,3 -- \
        python examples/train_pytorch_style.py
"""

# Annotations stay unevaluated (the future import), so list[...] is fine on Python 3.8.
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from typing import Any


def task_args() -> dict[str, Any]:
    """The task's args from LABTASKER_ARGS ({} when run by hand)."""
    text = os.environ.get("LABTASKER_ARGS", "")
    return json.loads(text) if text else {}


def visible_gpus() -> list[str]:
    """The GPU indices labtasker gave this task ([] for a CPU task or a run by hand)."""
    text = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    return [g for g in text.split(",") if g.strip()]


def make_data(seed: int, n: int = 256) -> list[tuple[float, float]]:
    """Noisy points on y = 3x - 1: the toy problem both code paths fit."""
    rng = random.Random(seed)
    xs = [rng.uniform(-1, 1) for _ in range(n)]
    return [(x, 3 * x - 1 + rng.gauss(0, 0.1)) for x in xs]


def mse(data: list[tuple[float, float]], w: float, b: float) -> float:
    """Mean squared error of y = w x + b on ``data``."""
    return sum((w * x + b - y) ** 2 for x, y in data) / len(data)


def fit_plain(
    data: list[tuple[float, float]], lr: float, epochs: int
) -> tuple[list[float], float, float]:
    """Gradient descent on (w, b) in plain Python."""
    w = b = 0.0
    losses = []
    for _ in range(epochs):
        gw = sum(2 * (w * x + b - y) * x for x, y in data) / len(data)
        gb = sum(2 * (w * x + b - y) for x, y in data) / len(data)
        w, b = w - lr * gw, b - lr * gb
        losses.append(mse(data, w, b))
    return losses, w, b


def fit_torch(
    torch: Any,
    data: list[tuple[float, float]],
    lr: float,
    epochs: int,
    device: str,
) -> tuple[list[float], float, float]:
    """The same fit with torch on ``device``."""
    x = torch.tensor([[p[0]] for p in data], device=device)
    y = torch.tensor([[p[1]] for p in data], device=device)
    model = torch.nn.Linear(1, 1).to(device)
    torch.nn.init.zeros_(model.weight)
    torch.nn.init.zeros_(model.bias)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    losses = []
    for _ in range(epochs):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        losses.append(float(torch.nn.functional.mse_loss(model(x), y)))
    return losses, float(model.weight.item()), float(model.bias.item())


def main() -> int:
    """Train once; exit 0 with a result file, or 1 when the loss diverged."""
    defaults = task_args()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lr", type=float, default=float(defaults.get("lr", 0.1)))
    parser.add_argument("--seed", type=int, default=int(defaults.get("seed", 0)))
    parser.add_argument("--epochs", type=int, default=int(defaults.get("epochs", 20)))
    opts = parser.parse_args()
    gpus = visible_gpus()
    started = time.time()
    try:
        import torch  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        torch = None
    data = make_data(opts.seed)
    if torch is not None:
        torch.manual_seed(opts.seed)
        device = "cuda" if gpus and torch.cuda.is_available() else "cpu"
        losses, w, b = fit_torch(torch, data, opts.lr, opts.epochs, device)
        backend = "torch"
    else:
        device, backend = "cpu", "python"
        losses, w, b = fit_plain(data, opts.lr, opts.epochs)
    print(
        f"lr={opts.lr} seed={opts.seed} epochs={opts.epochs} backend={backend} device={device} "
        f"CUDA_VISIBLE_DEVICES={','.join(gpus) or '-'} final loss {losses[-1]:.5f}",
        flush=True,
    )
    result = {
        "final_loss": losses[-1],
        "best_epoch": min(range(len(losses)), key=losses.__getitem__) + 1,
        "val": {"loss": mse(make_data(opts.seed + 10_000, n=64), w, b)},
        "backend": backend,
        "device": device,
        "gpus": gpus,
        "seconds": round(time.time() - started, 3),
    }
    path = os.environ.get("LABTASKER_RESULT")
    if path:  # write-then-rename: a crash never leaves half a result
        with open(path + ".tmp", "w") as f:
            json.dump(result, f)
        os.replace(path + ".tmp", path)
    else:
        print(json.dumps(result))
    return 0 if losses[-1] == losses[-1] and losses[-1] < 1e6 else 1


if __name__ == "__main__":
    sys.exit(main())
