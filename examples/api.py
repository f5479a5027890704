"""labtasker from Python: queue a sweep, dispatch it, and pick the best run from its results.

    python examples/api.py                    # queue only; then run `labtasker dispatch`
    python examples/api.py --hosts hosts.toml # queue, dispatch until done, report

`Queue()` opens the same queue as the `labtasker` command in this directory ($LABTASKER_DB, else
.labtasker/queue.duckdb); `--db` picks another file.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from dispatcher import Queue

TRAIN = Path(__file__).resolve().with_name("train_pytorch_style.py")


def main() -> int:
    """Queue a learning-rate x seed sweep, optionally dispatch it, print a summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", help="queue file (default: the CLI's default queue)")
    parser.add_argument("--hosts", help="hosts.toml to dispatch on; without it, only queue")
    opts = parser.parse_args()

    q = Queue(db=opts.db)
    # The training script reads lr and seed from LABTASKER_ARGS; the command carries them too,
    # so `labtasker queue ls` and the logs show which run is which.
    ids = q.add(
        f"python3 {TRAIN} --lr %{{lr}} --seed %{{seed}} --epochs %{{epochs}}",
        args=[{"lr": 0.5, "seed": 0, "epochs": 10}],  # one extra hand-picked run
        grid={"lr": [0.3, 0.1, 0.03], "seed": [1, 2], "epochs": [10]},
        name="api-sweep",
        gpus=0,  # CPU is enough for this toy; use gpus=1 for a real model
        skip_existing=True,  # running this script twice queues nothing new
    )
    print(f"queued {len(ids)} new {'task' if len(ids) == 1 else 'tasks'} in {q.path}")
    if not opts.hosts:
        print("now run: labtasker dispatch --hosts hosts.toml")
        return 0

    argv = [sys.executable, "-m", "dispatcher", "--db", str(q.path), "dispatch"]
    done = subprocess.run([*argv, "--hosts", opts.hosts], check=False)
    failed = q.tasks(state="failed")
    if failed:
        print(f"{len(failed)} {'task' if len(failed) == 1 else 'tasks'} failed; retrying them once")
        q.retry(failed=True)
        subprocess.run([*argv, "--hosts", opts.hosts], check=False)

    rows = q.results(state="succeeded")
    best = min(rows, key=lambda r: r["result.val.loss"])
    print(
        f"{len(rows)} succeeded; best: task {best['id']} lr={best['args.lr']}"
        f" seed={best['args.seed']} val loss {best['result.val.loss']:.4f}"
    )
    # The same data through SQL: mean validation loss per learning rate, over seeds.
    for row in q.sql(
        "SELECT args.lr::DOUBLE AS lr, avg((result->>'$.val.loss')::DOUBLE) AS val_loss,"
        " count(*) AS runs FROM tasks WHERE state = 'succeeded' GROUP BY 1 ORDER BY 2"
    ):
        print(f"lr={row['lr']:<5} mean val loss {row['val_loss']:.4f} over {row['runs']} run(s)")
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
