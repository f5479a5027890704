"""A private single-node SLURM cluster for the tests: munged, slurmctld and slurmd, run as root.

``SlurmCluster.start`` writes its own munge key, slurm.conf and gres.conf in a temporary directory
(free ports, its own state, spool, pid and log files, the munge socket there too), starts the
three daemons in the foreground as children of the test session, and adds the login node to the
session's sshd hosts: an ordinary test host whose sessions see ``SLURM_CONF``, so ``ssh HOST
sbatch ...`` works as that host's user and the jobs run as that user on this machine (the
"shared file system" is the user's home). Nothing is found or stopped by name: ``close`` cancels
the jobs, then stops each daemon by its pid, so several test sessions can run clusters at once.
A requeued job waits ``cred_expire`` (10 s here, 120 s by default) before it runs again.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tests.sshd import HostPlan, SshdHost, SshdHosts, poll, proc_table

DIR_PREFIX = "labtasker-slurm-"
DEADLINE = 30.0
DAEMONS = ("munged", "slurmctld", "slurmd")
CONF = """\
ClusterName=labtasker
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={dir}/munge/socket,cred_expire=10
CredType=cred/munge
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd.log
MailProg=/bin/true
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
MaxArraySize={max_array_size}
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
KillWait=2
MinJobAge=10
InactiveLimit=0
SchedulerParameters=sched_interval=1,sched_min_interval=0,batch_sched_delay=0
SlurmdParameters=config_overrides
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=1000 Gres=gpu:{gpu_type}:{gpus}
PartitionName={partition} Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


def slurm_installed() -> bool:
    """Whether munged, slurmctld, slurmd and the client commands are installed."""
    return all(shutil.which(name) for name in (*DAEMONS, "sbatch", "squeue", "scontrol"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def _processes_of(base: Path) -> list[int]:
    """The processes of the cluster in ``base``: its daemons run there (slurmctld's helper
    slurmscriptd and slurmd's job step daemons too), and its jobs' scripts are kept there."""
    found = []
    for info in proc_table().values():
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{info.pid}/cwd") == str(base) or str(base) in info.cmdline:
                found.append(info.pid)
    return [pid for pid in found if pid != os.getpid()]


def remove_stale_clusters() -> None:
    """Stop the daemons and delete the files of clusters left by test sessions that died."""
    for path in Path(tempfile.gettempdir()).glob(f"{DIR_PREFIX}*-*"):
        pid = path.name[len(DIR_PREFIX) :].split("-")[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            for stale in _processes_of(path):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(stale, signal.SIGKILL)
            shutil.rmtree(path, ignore_errors=True)


@dataclass
class SlurmCluster:
    """One running cluster (see the module docstring); ``login`` is its login node."""

    dir: Path
    login: SshdHost
    partition: str = "debug"
    max_array_size: int = 8
    cpus: int = 16  # more than this machine has: SlurmdParameters=config_overrides
    gpus: int = 4
    gpu_type: str = "fake"
    #: Whether the fake GPUs are character devices, so jobs see CUDA_VISIBLE_DEVICES and
    #: SLURM_JOB_GPUS (with empty files SLURM still schedules them, without those variables).
    gpu_devices: bool = True
    node: str = field(default_factory=lambda: socket.gethostname().split(".")[0])
    daemons: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        """slurm.conf (gres.conf is next to it)."""
        return self.dir / "slurm.conf"

    @property
    def gres(self) -> str:
        """The gres name and type that ask for these GPUs, as in ``--gres=gpu:fake:2``."""
        return f"gpu:{self.gpu_type}"

    def env(self) -> dict[str, str]:
        """This process's environment with SLURM_CONF pointing at the cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def admin(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a SLURM command as root against this cluster, e.g. ``admin("scontrol",
        "requeue", "12_3")``; raises on a non-zero exit unless ``check`` is false."""
        done = subprocess.run(
            argv, env=self.env(), capture_output=True, text=True, timeout=DEADLINE, check=False
        )
        if check and done.returncode:
            raise RuntimeError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")
        return done

    def time_out(self, job: str) -> None:
        """Make a running job reach its time limit now: SLURM kills it (TIMEOUT) at its next
        time-limit check, within 30 s (a limit below one minute cannot be asked for)."""
        self.admin("scontrol", "update", f"jobid={job}", "EndTime=now")

    def ssh(self, command: str) -> subprocess.CompletedProcess[str]:
        """Run ``command`` on the login node as its user, over a real SSH login."""
        env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
        return subprocess.run(
            self.login.login_argv(command), env={**env, "HOME": str(self.login.dir)},
            capture_output=True, text=True, timeout=DEADLINE, check=False,
        )  # fmt: skip

    def node_state(self) -> str:
        """The node's state as sinfo prints it (``idle``, ``mixed``, ``down*`` ...)."""
        return self.admin("sinfo", "-h", "-n", self.node, "-o", "%T").stdout.strip()

    def jobs(self) -> list[str]:
        """Every job in the queue (all users), one ``%i|%T`` line each."""
        return self.admin("squeue", "-h", "-r", "-o", "%i|%T").stdout.split()

    def wait_idle(self, timeout: float = DEADLINE) -> None:
        """Wait until no job is queued or running and the node is idle (resumed if a test left
        it down or drained)."""
        state = self.node_state()
        if state.rstrip("*~#$@") in ("down", "drained", "draining", "drain", "fail"):
            self.admin("scontrol", "update", f"nodename={self.node}", "state=resume")
        poll(lambda: not self.jobs() and self.node_state() == "idle", "slurm idle", timeout)

    # -- start and stop ------------------------------------------------------------------------

    @classmethod
    def start(cls, hosts: SshdHosts, alias: str = "slurm") -> SlurmCluster:
        """Start munged, slurmctld and slurmd, and add the login host ``alias`` to ``hosts``."""
        if os.geteuid() != 0:
            raise RuntimeError("a private SLURM cluster needs root: slurmd starts jobs as a user")
        remove_stale_clusters()
        base = Path(tempfile.mkdtemp(prefix=f"{DIR_PREFIX}{os.getpid()}-"))
        base.chmod(0o755)  # the users' sbatch reads slurm.conf and talks to the munge socket
        cluster = cls(dir=base, login=None)  # type: ignore[arg-type]  # set below
        try:
            cluster._write_files()
            cluster._start_munge()
            for daemon in ("slurmctld", "slurmd"):
                cluster._spawn(daemon, [daemon, "-D", "-f", str(cluster.conf)])
            env = {"SLURM_CONF": str(cluster.conf)}
            cluster.login = hosts.add(HostPlan(alias, "slurm", None), env)
            cluster.wait_idle()
        except BaseException:
            cluster.close()
            raise
        return cluster

    def _write_files(self) -> None:
        for sub in ("munge", "state", "spool", "gpus"):
            (self.dir / sub).mkdir(mode=0o755)
        key = self.dir / "munge" / "key"
        key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o400)
        for i in range(self.gpus):
            path = self.dir / "gpus" / str(i)
            try:  # a character device like /dev/null: slurmd then sets the GPU variables
                os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
            except OSError:
                path.touch()
                self.gpu_devices = False
        fields = {"node": self.node, "dir": self.dir, "partition": self.partition}
        fields |= {"ctld_port": _free_port(), "slurmd_port": _free_port(), "cpus": self.cpus}
        fields |= {"gpus": self.gpus, "gpu_type": self.gpu_type}
        self.conf.write_text(CONF.format(max_array_size=self.max_array_size, **fields))
        last = self.gpus - 1
        (self.dir / "gres.conf").write_text(
            f"NodeName={self.node} Name=gpu Type={self.gpu_type} File={self.dir}/gpus/[0-{last}]\n"
        )

    def _spawn(self, name: str, argv: list[str]) -> None:
        with (self.dir / f"{name}.out").open("ab") as out:
            self.daemons[name] = subprocess.Popen(
                argv, env=self.env(), cwd=self.dir, stdin=subprocess.DEVNULL, stdout=out,
                stderr=out,  # slurmd's job step daemons inherit its cwd: _leftovers finds them
                start_new_session=True,  # a Ctrl-C aimed at pytest must not reach them first
            )  # fmt: skip

    def _start_munge(self) -> None:
        munge = self.dir / "munge"
        self._spawn("munged", [
            "munged", "--foreground", f"--socket={munge}/socket", f"--key-file={munge}/key",
            f"--pid-file={munge}/pid", f"--log-file={munge}/log", f"--seed-file={munge}/seed",
        ])  # fmt: skip
        poll(lambda: self._alive("munged") and (munge / "socket").exists(), "munged socket")

    def _alive(self, name: str) -> bool:
        proc = self.daemons[name]
        if proc.poll() is not None:
            out = (self.dir / f"{name}.out").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{out}")
        return True

    def log_text(self) -> str:
        """The tails of the daemons' logs (for failure messages)."""
        parts = []
        for name in ("slurmctld.log", "slurmd.log", "munged.out", "slurmctld.out", "slurmd.out"):
            with contextlib.suppress(OSError):
                parts.append(f"== {name}\n{(self.dir / name).read_text(errors='replace')[-2000:]}")
        return "\n".join(parts)

    def _leftovers(self) -> list[int]:
        """Processes of the login user (its own), and this cluster's job step daemons."""
        table = proc_table().values()
        mine = [p.pid for p in table if p.uid == self.login.uid and p.pid != os.getpid()]
        return mine + _processes_of(self.dir)

    def close(self) -> None:
        """Cancel every job, stop slurmd, slurmctld and munged (by pid), delete the files.
        The login host stops with the session's other sshd hosts."""
        ctld = self.daemons.get("slurmctld")
        with contextlib.suppress(Exception):
            if self.login is not None and ctld is not None and ctld.poll() is None:
                self.admin("scancel", "-u", self.login.user, check=False)
                poll(lambda: not self.jobs(), "jobs cancelled", 15)
        for name in reversed(DAEMONS):
            proc = self.daemons.pop(name, None)
            if proc is None:
                continue
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.login is not None:  # a user of its own: start() runs as root only
            for pid in self._leftovers():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.dir, ignore_errors=True)
