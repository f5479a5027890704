"""A stand-in experiment for labtasker's examples and tests (Python 3.8+, standard library only).

Takes --param1/--param2/--param3, sleeps briefly, appends one JSON line (host, GPUs, task id,
start, end) to the file named by --record or $EXPERIMENT_RECORD, and writes its result JSON to
$LABTASKER_RESULT. With --fail it exits 3 after printing a message.

    labtasker queue add --grid p1=1,2 --grid p2=a,b --grid p3=x,y -- \
        python3 run_my_experiment.py --param1 %{p1} --param2 %{p2} --param3 %{p3}
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time


def main() -> int:
    """Run the fake experiment; the exit status is 0 unless --fail was given."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--param1", required=True)
    parser.add_argument("--param2", required=True)
    parser.add_argument("--param3", required=True)
    parser.add_argument("--sleep", type=float, default=0.2, help="seconds of 'work'")
    parser.add_argument("--record", default=os.environ.get("EXPERIMENT_RECORD"))
    parser.add_argument("--fail", action="store_true", help="exit 3 instead of succeeding")
    args = parser.parse_args()
    start = time.time()
    print(
        f"starting param1={args.param1} param2={args.param2} param3={args.param3} "
        f"(pid {os.getpid()})",
        flush=True,
    )
    time.sleep(args.sleep)
    end = time.time()
    record = {
        "host": os.environ.get("EXPERIMENT_HOST") or socket.gethostname(),
        "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "task_id": os.environ.get("LABTASKER_TASK_ID"),
        "pid": os.getpid(),
        "start": start,
        "end": end,
    }
    if args.record:
        # One write of one short line with O_APPEND: lines from concurrent tasks never interleave.
        fd = os.open(args.record, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            os.write(fd, (json.dumps(record) + "\n").encode())
        finally:
            os.close(fd)
    if args.fail:
        print("failing on purpose (--fail)", file=sys.stderr, flush=True)
        return 3
    score = len(str(args.param1)) + len(str(args.param2)) + len(str(args.param3))
    result_path = os.environ.get("LABTASKER_RESULT")
    if result_path:
        with open(result_path, "w") as f:
            json.dump({"score": score, "params": [args.param1, args.param2, args.param3]}, f)
    print(f"done score={score}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
