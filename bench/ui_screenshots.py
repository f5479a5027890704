"""Screenshots of every page of ``labtasker ui`` for docs/ui.md, run by hand (not in CI):

    python3 bench/ui_screenshots.py            # writes docs/img/ui-*.png

A throw-away project: a sweep (lr x seed, each writing an accuracy), a few long tasks and one that
fails, dispatched on two hosts of this machine (``ssh = false``; the GPUs are the test suite's
stub ``nvidia-smi``: four cards, one of them busy with another user's process). Once some tasks
have finished and some run, a headless Chromium (tests/web_ui.py) photographs each page.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.web_ui import chromium_driver, cli_env, ui_server  # noqa: E402

OUT = REPO / "docs" / "img"
GPUS = "".join(f"{i}, GPU-000{i}-shot, NVIDIA H100 80GB, {30000 * (i == 3)}, 81559, 0\n"
               for i in range(4))  # fmt: skip
TRAIN = """import json, math, os, random, sys, time
lr, seed = float(sys.argv[1]), int(sys.argv[2])
random.seed(seed)
time.sleep(random.uniform(2, 6))
print("epoch 1 loss 0.9")
acc = 0.9 - 0.03 * abs(math.log10(lr) + 2) + 0.01 * random.random()
loss = 0.3 + random.random() / 10
json.dump({"acc": round(acc, 4), "loss": round(loss, 4)}, open(os.environ["LABTASKER_RESULT"], "w"))
"""


def labtasker(project: Path, env: dict[str, str], *args: str) -> None:
    argv = [sys.executable, "-m", "dispatcher", "--db", str(project / "q.duckdb"), *args]
    subprocess.run(argv, cwd=project, env=env, check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="labtasker-shots-") as name:
        project = Path(name)
        bin_dir = project / "bin"
        bin_dir.mkdir()
        shutil.copy(REPO / "tests" / "fake_bin" / "nvidia-smi", bin_dir / "nvidia-smi")
        (bin_dir / "gpus.csv").write_text(GPUS)
        other = subprocess.Popen(["sleep", "600"])  # stands for another user's job on GPU 3
        (bin_dir / "apps.csv").write_text(f"GPU-0003-shot, {other.pid}, 30000, python\n")
        env = cli_env()
        env["PATH"] = f"{bin_dir}:{env['PATH']}"
        workdir = f"workdir = {json.dumps(str(project))}"
        (project / "hosts.toml").write_text(
            f"[hosts.gpu-a]\nssh = false\n{workdir}\n\n"
            f"[hosts.cpu-box]\nssh = false\ngpus = 0\nslots = 2\n{workdir}\n"
        )
        (project / "train.py").write_text(TRAIN)
        sweep = ["--grid", "lr=0.1,0.03,0.01,0.003,0.001", "--grid", "seed=1,2,3"]
        add = ["queue", "add", "--name"]
        labtasker(project, env, *add, "lr-sweep", "--gpus", "1", *sweep,
                  "--", "python3", "train.py", "%{lr}", "%{seed}")  # fmt: skip
        labtasker(project, env, *add, "long", "--gpus", "0", "--grid", "i=1,2",
                  "--cmd", "sleep 120 && echo %{i}")  # fmt: skip
        labtasker(project, env, *add, "broken", "--gpus", "0",
                  "--cmd", "echo 'CUDA error: device-side assert'; exit 1")  # fmt: skip
        argv = [sys.executable, "-m", "dispatcher", "--db", str(project / "q.duckdb"), "dispatch"]
        dispatch = subprocess.Popen(argv, cwd=project, env=env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            time.sleep(25)  # a script run by hand: let part of the sweep finish
            with ui_server(project / "q.duckdb") as ui, chromium_driver() as driver:
                driver.set_window_size(1280, 900)
                for page in ("overview", "timeline", "queue", "task/16", "results"):
                    driver.get(f"{ui.url}#{page}")
                    time.sleep(3)  # the page draws, the event stream delivers
                    shot = OUT / f"ui-{page.split('/')[0]}.png"
                    height = driver.execute_script("return document.body.scrollHeight")
                    driver.set_window_size(1280, min(max(900, height + 40), 2400))
                    driver.save_screenshot(str(shot))
                    driver.set_window_size(1280, 900)
                    print(f"wrote {shot.relative_to(REPO)}")
        finally:
            dispatch.terminate()
            dispatch.wait(timeout=60)
            other.kill()
            other.wait()


if __name__ == "__main__":
    main()
