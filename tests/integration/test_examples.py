"""Every file in examples/ runs here, against the ``local`` host (no SSH), through the real CLI.

The queue lives in the test's temp dir (LABTASKER_DB) and so does the host's state_dir, so the
examples run exactly as a user would start them, with no ssh server involved.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dispatcher.config.hosts import load_hosts

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
#: Generous: the suite runs on loaded 2-core machines; passing runs finish far sooner.
DEADLINE = 120.0


@dataclass
class Local:
    """A controller directory with a hosts.toml naming only ``local``."""

    root: Path

    @property
    def db(self) -> Path:
        return self.root / "queue.duckdb"

    @property
    def hosts(self) -> Path:
        return self.root / "hosts.toml"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LABTASKER_")}
        path = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
        env.update(LABTASKER_DB=str(self.db), PYTHONPATH=path, COLUMNS="200")
        env.update(LABTASKER_LOCK_TIMEOUT="30")
        return env

    def run(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv, cwd=self.root, env=self.env(), capture_output=True, text=True,
            timeout=DEADLINE, check=False,
        )  # fmt: skip

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run([sys.executable, "-m", "dispatcher", *args])

    def ok(self, *args: str) -> str:
        done = self.cli(*args)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done.stdout

    def results(self, *args: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = json.loads(self.ok("results", "--format", "json", *args))
        return rows


@pytest.fixture
def local(tmp_path: Path) -> Local:
    (tmp_path / "work").mkdir()
    (tmp_path / "hosts.toml").write_text(
        "[hosts.local]\n"
        "gpus = 0\n"
        "slots = 16\n"
        f"state_dir = {json.dumps(str(tmp_path / 'state'))}\n"
        f"workdir = {json.dumps(str(tmp_path / 'work'))}\n"
    )
    return Local(tmp_path)


@pytest.mark.slow
def test_grid_sh_runs_the_4x4x4_grid(local: Local) -> None:
    launcher = f"{shlex.quote(sys.executable)} -m dispatcher"
    env_args = [f"LABTASKER={launcher}", f"HOSTS={local.hosts}"]
    done = local.run(["env", *env_args, "bash", str(EXAMPLES / "grid.sh")])
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert "64 succeeded, 0 failed" in done.stdout
    with open(local.root / "grid444.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 64 and {r["state"] for r in rows} == {"succeeded"}
    points = {(r["args.p1"], r["args.p2"], r["args.p3"]) for r in rows}
    assert len(points) == 64
    for r in rows:  # run_my_experiment.py's score: the lengths of its three params
        assert int(r["result.score"]) == sum(len(r[f"args.p{i}"]) for i in (1, 2, 3))
    # The closing `labtasker sql`: p3 is "0.1" etc., so the score is 1 + 1 + 3 everywhere.
    assert re.search(r"a\s+│\s+5(\.0)?\s+│\s+16", done.stdout), done.stdout
    # Running it again adds nothing: --skip-existing.
    again = local.run(["env", *env_args, "bash", str(EXAMPLES / "grid.sh")])
    assert again.returncode == 0 and "Added 0 tasks" in again.stdout, again.stdout


def test_results_after_a_real_dispatch(local: Local) -> None:
    script = shlex.quote(str(EXAMPLES / "run_my_experiment.py"))
    local.ok(
        "queue", "add", "--grid", "p1=1,22", "--grid", "p2=x",
        "--", sys.executable, script, "--param1", "%{p1}", "--param2", "%{p2}",
        "--param3", "z", "--sleep", "0",
    )  # fmt: skip
    local.ok("queue", "add", "--cmd", f"{sys.executable} {script} --param1 f --param2 f"
             " --param3 f --sleep 0 --fail")  # fmt: skip
    done = local.cli("dispatch", "--hosts", str(local.hosts))
    assert done.returncode == 1, (done.stdout, done.stderr)  # one task failed
    rows = local.results()
    assert [(r["state"], r["exit_code"]) for r in rows] == [
        ("succeeded", 0), ("succeeded", 0), ("failed", 3),
    ]  # fmt: skip
    assert [r["result.score"] for r in rows] == [3, 4, None]
    assert rows[0]["result.params"] == ["1", "x", "z"] and rows[0]["host"] == "local"
    assert all(r["runtime"] >= 0 and r["gpus"] == [] for r in rows)
    assert [r["id"] for r in local.results("--state", "failed")] == [rows[2]["id"]]
    by_state = json.loads(local.ok("sql", "-f", "json", "SELECT state, count(*) AS n FROM tasks"
                                   " GROUP BY state ORDER BY state"))  # fmt: skip
    assert by_state == [{"state": "failed", "n": 1}, {"state": "succeeded", "n": 2}]


def test_train_pytorch_style_reads_its_args_and_gpus(local: Local) -> None:
    script = shlex.quote(str(EXAMPLES / "train_pytorch_style.py"))
    # No flags: the script takes lr and seed from LABTASKER_ARGS.
    local.ok("queue", "add", "--grid", "lr=0.3,0.1", "--grid", "seed=1,2", "--gpus", "0",
             "--cmd", f"{shlex.quote(sys.executable)} {script}")  # fmt: skip
    done = local.cli("dispatch", "--hosts", str(local.hosts))
    assert done.returncode == 0, (done.stdout, done.stderr)
    rows = local.results()
    assert len(rows) == 4
    for r in rows:
        assert r["result.gpus"] == [] and r["result.device"] == "cpu"
        assert r["result.backend"] in ("python", "torch")
        assert r["result.val.loss"] > 0 and r["result.best_epoch"] >= 1
    loss = {(r["args.lr"], r["args.seed"]): r["result.final_loss"] for r in rows}
    assert loss[(0.3, 1)] < loss[(0.1, 1)] and loss[(0.3, 2)] < loss[(0.1, 2)]
    log = local.ok("logs", str(rows[0]["id"]), "--hosts", str(local.hosts))
    assert "lr=0.3 seed=1" in log and "CUDA_VISIBLE_DEVICES=-" in log


def test_train_pytorch_style_by_hand_with_gpus(local: Local) -> None:
    env = {"CUDA_VISIBLE_DEVICES": "1,3", "LABTASKER_ARGS": '{"lr": 0.2, "seed": 7}'}
    script = str(EXAMPLES / "train_pytorch_style.py")
    done = local.run(["env", *(f"{k}={v}" for k, v in env.items()), sys.executable, script])
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["gpus"] == ["1", "3"] and "lr=0.2 seed=7" in done.stdout
    diverged = local.run([sys.executable, script, "--lr", "5"])
    assert diverged.returncode == 1


def test_api_example_queues_dispatches_and_reports(local: Local) -> None:
    argv = [sys.executable, str(EXAMPLES / "api.py"), "--db", str(local.db)]
    done = local.run([*argv, "--hosts", str(local.hosts)])
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert "queued 7 new tasks" in done.stdout and "7 succeeded; best: task" in done.stdout
    assert re.search(r"lr=0\.5 +mean val loss [0-9.]+ over 1 run", done.stdout), done.stdout
    again = local.run(argv)
    assert "queued 0 new tasks" in again.stdout and "labtasker dispatch" in again.stdout


def test_hosts_jump_toml_loads_and_matches_its_ssh_config() -> None:
    path = EXAMPLES / "hosts.jump.toml"
    config = load_hosts(path)
    hosts = {h.name: h for h in config.hosts}
    assert list(hosts) == ["gpu-a", "gpu-b"]
    assert all(h.ssh is None and not h.local for h in hosts.values())  # reached by alias
    assert hosts["gpu-a"].gpus == "auto" and hosts["gpu-b"].gpus == (0, 1)
    assert hosts["gpu-b"].connect_timeout == 20 and hosts["gpu-b"].workdir == "~/exp"
    # The ~/.ssh/config snippet in the comment: both servers hop through the gateway alias.
    snippet = [ln[1:].strip() for ln in path.read_text().splitlines() if ln.startswith("#   ")]
    blocks: dict[str, dict[str, str]] = {}
    current: list[str] = []
    for line in snippet:
        key, _, value = line.partition(" ")
        if key == "Host":
            current = value.split()
            for name in current:
                blocks[name] = {}
        elif key in ("HostName", "User", "IdentityFile", "ProxyJump"):
            for name in current:
                blocks[name][key] = value.strip()
    assert blocks["gpu-a"]["ProxyJump"] == blocks["gpu-b"]["ProxyJump"] == "lab-gw"
    assert "ProxyJump" not in blocks["lab-gw"] and "HostName" in blocks["lab-gw"]


def test_sweep_toml_runs_train_py(local: Local) -> None:
    """examples/sweep.toml with examples/train.py in the workdir: 24 tasks succeed (as CPU
    tasks: flags on the command line win over the file's gpus = 1), each with its result and
    its out/*.json copied back."""
    shutil.copy(EXAMPLES / "train.py", local.root / "work" / "train.py")
    preview = local.ok("queue", "add", "--file", str(EXAMPLES / "sweep.toml"), "--dry-run")
    assert preview.count("python train.py --lr ") == 24, preview
    local.ok("queue", "add", "--file", str(EXAMPLES / "sweep.toml"), "--gpus", "0")
    done = local.cli("dispatch", "--hosts", str(local.hosts))
    assert done.returncode == 0, (done.stdout, done.stderr)
    rows = local.results()
    assert len(rows) == 24 and {r["state"] for r in rows} == {"succeeded"}
    points = {(r["args.lr"], r["args.seed"], r["args.model"], r["args.repeat"]) for r in rows}
    assert len(points) == 24 and {r["args.epochs"] for r in rows} == {10}
    assert all(0 < r["result.acc"] < 1 and r["result.val.loss"] > 0 for r in rows)
    outputs = local.root / "queue.outputs"
    for r in rows:
        assert (outputs / str(r["id"]) / "out" / f"{r['id']}.json").is_file(), r["id"]
