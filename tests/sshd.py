"""Real OpenSSH hosts on loopback for the tests: keys, users, sshd processes, GPU stubs, faults.

Each ``SshdHost`` is one sshd on its own 127.0.0.x address and free port, run by a small keeper
process that adopts every orphan of that host (a child subreaper): a host's processes can be
found, frozen or killed without touching another host's, and they all die with the keeper, which
dies when the test session ends or its stdin closes. Running as root, each host logs in as its
own throw-away user (``lt-<session>-a`` ...); otherwise every host logs in as the current user.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

STUB = Path(__file__).parent / "fake_bin" / "nvidia-smi"
#: HostName of ``behind`` when it can be made resolvable on the jump host only (root).
BEHIND_NAME = "behind.internal"
#: Marks the users this module creates, with the pid of the session that owns them.
USER_MARK = "labtasker test user, pid "
DIR_PREFIX = "labtasker-sshd-"
DEADLINE = 15.0


def sshd_binary() -> str | None:
    """Path of sshd, or None when OpenSSH's server is not installed."""
    path = shutil.which("sshd") or "/usr/sbin/sshd"
    return path if os.access(path, os.X_OK) and shutil.which("ssh-keygen") else None


def poll(check: Callable[[], object], what: str, timeout: float = DEADLINE) -> object:
    """Call ``check`` until it returns something truthy; AssertionError after ``timeout`` s."""
    end = time.monotonic() + timeout
    delay = 0.005
    while not (value := check()):
        if time.monotonic() > end:
            raise AssertionError(f"{what}: not true within {timeout:g} s")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)
    return value


@dataclass(frozen=True)
class FakeGpu:
    """One row of the stub's gpus.csv (the --query-gpu columns, MiB and %)."""

    index: int
    uuid: str
    name: str = "NVIDIA A100-SXM4-40GB"
    memory_used: int = 0
    memory_total: int = 40960
    utilization: int = 0

    def row(self) -> str:
        """The row as ``nvidia-smi --format=csv,noheader,nounits`` prints it."""
        f = (
            self.index,
            self.uuid,
            self.name,
            self.memory_used,
            self.memory_total,
            self.utilization,
        )
        return ", ".join(map(str, f))


@dataclass(frozen=True)
class FakeApp:
    """One row of the stub's apps.csv: a compute process using a GPU."""

    gpu_uuid: str
    pid: int
    used_memory: int
    process_name: str = "python"

    def row(self) -> str:
        """The row as ``nvidia-smi --format=csv,noheader,nounits`` prints it."""
        return f"{self.gpu_uuid}, {self.pid}, {self.used_memory}, {self.process_name}"


def default_gpus(alias: str, count: int) -> list[FakeGpu]:
    """``count`` idle GPUs with UUIDs that are stable per host alias."""
    return [
        FakeGpu(i, f"GPU-{uuid.uuid5(uuid.NAMESPACE_DNS, f'{alias}.{i}')}") for i in range(count)
    ]


@dataclass(frozen=True)
class ProcInfo:
    """One process as /proc shows it."""

    pid: int
    ppid: int
    uid: int
    state: str
    cmdline: str


def proc_table() -> dict[int, ProcInfo]:
    """Every process on the machine (those that vanish while being read are skipped)."""
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_bytes().rsplit(b")", 1)[1].split()
            cmd = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").strip()
            uid = entry.stat().st_uid
        except (OSError, IndexError):
            continue
        pid = int(entry.name)
        table[pid] = ProcInfo(
            pid, int(stat[1]), uid, stat[0].decode(), cmd.decode(errors="replace")
        )
    return table


def descendants(root: int, table: dict[int, ProcInfo]) -> list[ProcInfo]:
    """Processes below ``root`` (children, their children, ...)."""
    kids: dict[int, list[ProcInfo]] = {}
    for info in table.values():
        kids.setdefault(info.ppid, []).append(info)
    found, todo = [], [root]
    while todo:
        for info in kids.get(todo.pop(), []):
            found.append(info)
            todo.append(info.pid)
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


# The keeper: a child subreaper that runs one host's sshd and takes the whole host down when its
# stdin closes. Commands on stdin: "start" and "stop" (the listener); answers on stdout.
KEEPER = r"""
import ctypes, os, select, signal, subprocess, sys

def descendants():
    kids = {}
    for name in os.listdir("/proc"):
        try:
            with open("/proc/%s/stat" % name, "rb") as f:
                kids.setdefault(int(f.read().rsplit(b")", 1)[1].split()[1]), []).append(int(name))
        except (OSError, ValueError, IndexError):
            pass
    found, todo = [], [os.getpid()]
    while todo:
        for pid in kids.get(todo.pop(), []):
            found.append(pid)
            todo.append(pid)
    return found

ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: adopt this host's orphans
args = sys.argv[1:]
cut = args.index("--")
for source, target in zip(args[:cut:2], args[1:cut:2]):
    subprocess.run(["mount", "--bind", source, target], check=True)
sshd = args[cut + 1:]
wake_r, wake_w = os.pipe()
os.set_blocking(wake_w, False)
signal.set_wakeup_fd(wake_w)
signal.signal(signal.SIGCHLD, lambda *_: None)
quiet = [(os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0), (os.POSIX_SPAWN_DUP2, 2, 1)]
spawn = lambda: os.posix_spawn(sshd[0], sshd, os.environ, file_actions=quiet,
                               setsigdef=(signal.SIGPIPE, signal.SIGXFSZ, signal.SIGCHLD))
say = lambda text: os.write(1, text.encode() + b"\n")
listener = spawn()
say("listener %d" % listener)
buf = b""
while True:
    ready = select.select([0, wake_r], [], [])[0]
    if wake_r in ready:
        os.read(wake_r, 512)
        while True:
            try:
                pid = os.waitpid(-1, os.WNOHANG)[0]
            except ChildProcessError:
                break
            if pid == 0:
                break
            if pid == listener:
                listener = None
    if 0 in ready:
        data = os.read(0, 512)
        if not data:
            break
        buf += data
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if line == b"start":
                listener = listener or spawn()
                say("listener %d" % listener)
            elif line == b"stop":
                if listener:
                    os.kill(listener, signal.SIGKILL)
                    os.waitpid(listener, 0)
                    listener = None
                say("stopped")
while True:
    pids = descendants()
    if not pids:
        break
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        os.waitpid(-1, 0)
    except ChildProcessError:
        pass
"""


@dataclass(frozen=True)
class User:
    """The account a host logs in as."""

    name: str
    uid: int
    home: Path


@dataclass
class SshdHost:
    """One sshd on 127.0.0.x (see the module docstring). Fault methods return once in effect."""

    alias: str
    address: str
    account: User
    dir: Path
    gpus: int | None  # None: no nvidia-smi at all (a CPU-only host)
    client_key: Path
    known_hosts_direct: Path  # [address]:port entries for logins that bypass the alias
    hostname: str = ""  # HostName written in the client's config ("" = address)
    proxy_jump: str | None = None
    log_level: str = "VERBOSE"
    binds: list[tuple[str, str]] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # more variables every session sees
    port: int = 0
    host_key: str = ""
    listener_pid: int | None = None
    frozen: bool = False
    gpus_changed: bool = False
    _keeper: subprocess.Popen[bytes] | None = None

    @property
    def user(self) -> str:
        """The user name this host logs in as."""
        return self.account.name

    @property
    def uid(self) -> int:
        return self.account.uid

    @property
    def home(self) -> Path:
        return self.account.home

    @property
    def sshd_pid(self) -> int | None:
        """The listening sshd (None while stopped)."""
        return self.listener_pid

    @property
    def fake_bin(self) -> Path:
        """First on the remote PATH; holds this host's nvidia-smi, gpus.csv, apps.csv and
        live.csv (rows the tasks append: "GPU_INDEX, PID, MIB")."""
        return self.dir / "fake_bin"

    @property
    def log_path(self) -> Path:
        return self.dir / "sshd.log"

    @property
    def config_path(self) -> Path:
        return self.dir / "sshd_config"

    @property
    def authorized_keys(self) -> Path:
        return self.dir / "authorized_keys"

    def log_text(self) -> str:
        """The sshd log so far."""
        return self.log_path.read_text(errors="replace")

    # -- setup ---------------------------------------------------------------------------------

    def prepare(self) -> subprocess.Popen[bytes]:
        """Make the host's directory and start ssh-keygen for its host key (returned)."""
        self.dir.mkdir(mode=0o755)
        self.fake_bin.mkdir(mode=0o755)
        self.hostname = self.hostname or self.address
        if self.gpus is not None:
            shutil.copy(STUB, self.fake_bin / "nvidia-smi")
            self.reset_gpus()
        self.authorized_keys.write_text(Path(f"{self.client_key}.pub").read_text())
        self.authorized_keys.chmod(0o644)
        with socket.socket() as s:
            s.bind((self.address, 0))
            self.port = s.getsockname()[1]
        key = self.dir / "ssh_host_ed25519_key"
        return subprocess.Popen(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key])

    def _write_config(self) -> None:
        self.host_key = " ".join((self.dir / "ssh_host_ed25519_key.pub").read_text().split()[:2])
        settings = {
            "Port": self.port,
            "ListenAddress": self.address,
            "HostKey": self.dir / "ssh_host_ed25519_key",
            "AuthorizedKeysFile": self.authorized_keys,
            "PasswordAuthentication": "no",
            "KbdInteractiveAuthentication": "no",
            "UsePAM": "no",
            "StrictModes": "no",  # the key files live under /tmp
            "PidFile": "none",
            "MaxStartups": "100:30:200",
            "LogLevel": self.log_level,
            "PrintMotd": "no",
            "PrintLastLog": "no",
            "SetEnv": " ".join(
                [f"PATH={self.fake_bin}:/usr/local/bin:/usr/bin:/bin"]
                + [f"{k}={v}" for k, v in self.env.items()]  # one line: sshd keeps the first
            ),
            "AcceptEnv": "LABTASKER_*",
            "AllowUsers": self.user,  # AuthorizedKeysFile is one file for every user
            "Subsystem": "sftp internal-sftp",  # output files come back over SFTP
        }
        self.config_path.write_text("".join(f"{k} {v}\n" for k, v in settings.items()))

    def launch(self, sshd: str, unshare: bool) -> None:
        """Start the keeper, which starts sshd; ``wait_ready`` waits for a login to succeed."""
        self._write_config()
        argv = [sys.executable, "-I", "-S", "-c", KEEPER]
        argv += [part for pair in self.binds for part in pair] if unshare else []
        argv += ["--", sshd, "-D", "-e", "-f", str(self.config_path)]
        if unshare:
            argv = ["unshare", "--mount", "--propagation", "private", *argv]
        with self.log_path.open("ab") as log:
            self._keeper = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                start_new_session=True,  # a Ctrl-C aimed at pytest must not kill the hosts first
            )  # fmt: skip

    def started(self) -> None:
        """Wait for the keeper to report the listener it started."""
        self.listener_pid = self._ask("")

    def _ask(self, command: str) -> int | None:
        keeper = self._keeper
        assert keeper is not None and keeper.stdin is not None and keeper.stdout is not None
        if command:
            keeper.stdin.write(f"{command}\n".encode())
            keeper.stdin.flush()
        answer = keeper.stdout.readline().decode().split()
        if not answer:
            raise RuntimeError(f"{self.alias}: sshd keeper died; log:\n{self.log_text()[-3000:]}")
        return int(answer[1]) if answer[0] == "listener" else None

    def login_argv(self, command: str = "true") -> list[str]:
        """OpenSSH client argv for a direct login (no ~/.ssh/config, no agent)."""
        return [
            "ssh", "-F", "/dev/null", "-i", str(self.client_key), "-p", str(self.port),
            "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={self.known_hosts_direct}",
            "-o", "GlobalKnownHostsFile=/dev/null", "-o", "ConnectTimeout=5",
            "-o", "KexAlgorithms=curve25519-sha256",  # the default post-quantum kex costs 100 ms
            f"{self.user}@{self.address}", command,
        ]  # fmt: skip

    def listening(self) -> bool:
        """Whether sshd accepts TCP connections (raises if it exited)."""
        if self.listener_pid is None or not _alive(self.listener_pid):
            raise RuntimeError(f"{self.alias}: sshd exited; log:\n{self.log_text()[-3000:]}")
        with socket.socket() as s:
            return s.connect_ex((self.address, self.port)) == 0

    def wait_ready(self) -> None:
        """Return once a real login succeeds (retried until the deadline)."""
        wait_ready([self])

    def close(self) -> None:
        """Stop the keeper: it kills every process of this host first."""
        keeper, self._keeper = self._keeper, None
        if keeper is None:
            return
        assert keeper.stdin is not None and keeper.stdout is not None
        with contextlib.suppress(BrokenPipeError):
            keeper.stdin.close()
        try:
            keeper.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            keeper.kill()
            keeper.wait()
        keeper.stdout.close()

    # -- faults --------------------------------------------------------------------------------

    def processes(self) -> list[ProcInfo]:
        """Every process of this host: sshd, sessions, and whatever they left running."""
        assert self._keeper is not None, f"{self.alias} is not running"
        return descendants(self._keeper.pid, proc_table())

    def in_mount_namespace(self, argv: Sequence[str]) -> list[str]:
        """``argv`` made to run where this host's sessions see mounts (its private namespace
        when it has one), e.g. to mount a tiny tmpfs only this host sees."""
        assert self._keeper is not None, f"{self.alias} is not running"
        pid = self._keeper.pid
        if os.readlink(f"/proc/{pid}/ns/mnt") == os.readlink("/proc/self/ns/mnt"):
            return list(argv)
        return ["nsenter", "-t", str(pid), "-m", *argv]

    def connection_pids(self, *, monitors: bool = False) -> list[int]:
        """The per-connection ``sshd: USER@notty`` processes (with ``[priv]`` ones if asked)."""
        me = f"sshd: {self.user}"
        return [
            p.pid
            for p in self.processes()
            if p.cmdline.startswith(f"{me}@") or (monitors and p.cmdline.startswith(f"{me} "))
        ]

    def _signal(self, pids: Sequence[int], sig: signal.Signals) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def stop_listener(self) -> None:
        """Kill the listening sshd: live sessions go on, new connections are refused."""
        self._ask("stop")
        self.listener_pid = None

    def start_listener(self) -> None:
        """Start sshd again with the same config, port and keys; returns once logins work."""
        self.listener_pid = self._ask("start")
        wait_ready([self])

    def kill_connections(self) -> list[int]:
        """Kill this host's established connections (remote commands keep running)."""
        pids = self.connection_pids()
        self._signal(pids, signal.SIGKILL)
        poll(lambda: not any(map(_alive, pids)), f"{self.alias}: connections gone")
        return pids

    def freeze(self) -> None:
        """SIGSTOP the per-connection sshd processes: sessions stall (a hung host)."""
        pids = self.connection_pids(monitors=True)
        self.frozen = True
        self._signal(pids, signal.SIGSTOP)

        def stopped() -> bool:
            table = proc_table()
            return all(p not in table or table[p].state in "TZ" for p in pids)

        poll(stopped, f"{self.alias}: connections stopped")

    def thaw(self) -> None:
        """SIGCONT what ``freeze`` stopped: stalled sessions resume."""
        self._signal(self.connection_pids(monitors=True), signal.SIGCONT)
        self.frozen = False

    def kill_user_processes(self) -> list[int]:
        """Kill every process of this host's user on this host (a crash, as sessions see it),
        pass after pass until a pass finds none: a process forked while one pass reads the
        process table escapes that pass."""
        spare = {self.listener_pid}
        killed: list[int] = []
        while pids := [p.pid for p in self.processes() if p.uid == self.uid and p.pid not in spare]:
            self._signal(pids, signal.SIGKILL)
            poll(lambda: not any(map(_alive, pids)), f"{self.alias}: user processes gone")
            killed += pids
        return killed

    # -- the GPU stub --------------------------------------------------------------------------

    def _write(self, name: str, lines: Sequence[str]) -> None:
        tmp = self.fake_bin / f".{name}.tmp"
        tmp.write_text("".join(f"{line}\n" for line in lines))
        tmp.chmod(0o644)
        tmp.replace(self.fake_bin / name)  # atomic: the stub never reads half a table

    def write_gpus(self, gpus: Sequence[FakeGpu]) -> None:
        """Replace the GPU table the stub nvidia-smi reports."""
        self._write("gpus.csv", [g.row() for g in gpus])
        self.gpus_changed = True

    def write_apps(self, apps: Sequence[FakeApp]) -> None:
        """Replace the compute processes the stub reports (e.g. another user's job)."""
        self._write("apps.csv", [a.row() for a in apps])
        self.gpus_changed = True

    def set_gpu_error(self, text: str | None) -> None:
        """Make nvidia-smi print ``text`` and exit 9 (a broken driver); None restores it."""
        path = self.fake_bin / "error.txt"
        if text is None:
            path.unlink(missing_ok=True)
        else:
            self._write("error.txt", [text])
            self.gpus_changed = True

    def default_gpus(self) -> list[FakeGpu]:
        """The GPUs this host starts with."""
        return default_gpus(self.alias, self.gpus or 0)

    def reset_gpus(self) -> None:
        """Back to the starting table: idle GPUs, no processes, no error."""
        if self.gpus is not None:
            self._write("gpus.csv", [g.row() for g in self.default_gpus()])
            self._write("apps.csv", [])
            live = self.fake_bin / "live.csv"
            live.write_text("")
            live.chmod(0o666)  # the tasks, running as the host's user, append their own rows
            self.set_gpu_error(None)
        self.gpus_changed = False

    def heal(self) -> None:
        """Undo faults and GPU table changes a test left behind."""
        if self.frozen:
            self.thaw()
        if self.listener_pid is None and self._keeper is not None:
            self.start_listener()
        if self.gpus_changed:
            self.reset_gpus()


def wait_ready(hosts: Sequence[SshdHost]) -> None:
    """Return once a real login to each host succeeds (logins run concurrently, retried)."""
    for host in hosts:
        poll(host.listening, f"{host.alias}: sshd listening on {host.address}:{host.port}")
    env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
    pending, errors = list(hosts), dict[str, str]()

    def logins() -> bool:
        runs = [(h, subprocess.Popen(h.login_argv(), env={**env, "HOME": str(h.dir)},
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
                for h in pending]  # fmt: skip
        errors.update((h.alias, run.communicate()[1].decode()) for h, run in runs)
        pending[:] = [h for h, run in runs if run.returncode]
        return not pending

    try:
        poll(logins, "logins")
    except AssertionError:
        failed = "\n".join(f"{h.alias}: {errors[h.alias]}{h.log_text()[-2000:]}" for h in pending)
        raise RuntimeError(f"no login to {[h.alias for h in pending]}:\n{failed}") from None


# -- users ---------------------------------------------------------------------------------------


def _run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False)


def create_user(name: str) -> User:
    """A fresh login user (root only); ``-p '*'`` unlocks it for key logins with UsePAM no."""
    mark = f"{USER_MARK}{os.getpid()}"
    argv = ["useradd", "-m", "-s", "/bin/bash", "-p", "*", "-c", mark, name]

    def add() -> bool:  # useradd fails at once while another one holds /etc/passwd's lock
        done = _run(argv)
        if done.returncode and "lock" not in done.stderr:
            raise RuntimeError(f"useradd {name} failed: {done.stderr.strip()}")
        return done.returncode == 0

    poll(add, f"useradd {name}")
    entry = pwd.getpwnam(name)
    return User(name, entry.pw_uid, Path(entry.pw_dir))


def remove_user(name: str) -> None:
    """Delete a user made by ``create_user``, with its home directory."""
    poll(lambda: "lock" not in _run(["userdel", "-r", "-f", name]).stderr, f"userdel {name}")


def remove_stale_users() -> None:
    """Delete users left by test sessions that died without cleaning up."""
    for entry in pwd.getpwall():
        if entry.pw_gecos.startswith(USER_MARK):
            pid = int(entry.pw_gecos[len(USER_MARK) :] or 0)
            if not _alive(pid):
                for info in proc_table().values():
                    if info.uid == entry.pw_uid:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(info.pid, signal.SIGKILL)
                remove_user(entry.pw_name)


def remove_stale_dirs() -> None:
    """Delete host directories left by test sessions that died without cleaning up."""
    for path in Path(tempfile.gettempdir()).glob(f"{DIR_PREFIX}*-*"):
        pid = path.name[len(DIR_PREFIX) :].split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _can_unshare() -> bool:
    """Whether this machine lets root make private mount namespaces (containers may not)."""
    return _run(["unshare", "--mount", "--propagation", "private", "true"]).returncode == 0


def current_user() -> User:
    """The user running the tests."""
    entry = pwd.getpwuid(os.getuid())
    return User(getpass.getuser(), entry.pw_uid, Path(entry.pw_dir))


# -- the set of hosts ----------------------------------------------------------------------------


@dataclass(frozen=True)
class HostPlan:
    """One host to start: its alias, which user it logs in as, how many GPUs it has."""

    alias: str
    user: str  # a letter: hosts with the same letter share one user (and its home)
    gpus: int | None
    proxy_jump: str | None = None


#: The standard hosts: nfs1 and nfs2 share one user, as two servers with an NFS home do.
STANDARD_HOSTS = (
    HostPlan("gpu2", "a", 2),
    HostPlan("gpu1", "b", 1),
    HostPlan("cpu", "c", None),
    HostPlan("jump", "d", None),
    HostPlan("behind", "e", 1, proxy_jump="jump"),
    HostPlan("nfs1", "f", 1),
    HostPlan("nfs2", "f", 1),
)


class SshdHosts:
    """The test session's hosts, by alias: ``hosts.gpu2``, ``hosts["nfs1"]``."""

    def __init__(self, base: Path, hosts: dict[str, SshdHost], users: list[str]) -> None:
        self.base, self.hosts, self.created_users = base, hosts, users
        self.client_key = base / "client_ed25519"

    @classmethod
    def start(cls, plans: Sequence[HostPlan] = STANDARD_HOSTS) -> SshdHosts:
        """Create users and keys, start every sshd (concurrently) and wait for real logins."""
        sshd = sshd_binary()
        if sshd is None:
            raise RuntimeError("OpenSSH's sshd is not installed (apt-get install openssh-server)")
        root = os.geteuid() == 0
        if root:
            remove_stale_users()
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
        # Not pytest's tmp_path: that is private to root, and the hosts' users must read here.
        remove_stale_dirs()
        base = Path(tempfile.mkdtemp(prefix=f"{DIR_PREFIX}{os.getpid()}-"))
        base.chmod(0o755)
        tag = secrets.token_hex(2)
        users: dict[str, User] = {}
        hosts = cls(base, {}, [])
        try:
            for letter in dict.fromkeys(p.user for p in plans):
                name = f"lt-{tag}-{letter}"
                users[letter] = create_user(name) if root else current_user()
                hosts.created_users += [name] if root else []
            keygen = [
                subprocess.Popen(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C",
                                  "labtasker-tests", "-f", hosts.client_key])
            ]  # fmt: skip
            keygen[0].wait()
            unshare = root and _can_unshare()
            for number, plan in enumerate(plans, start=2):
                hosts.hosts[plan.alias] = SshdHost(
                    alias=plan.alias,
                    address=f"127.0.0.{number}",
                    account=users[plan.user],
                    dir=base / plan.alias,
                    gpus=plan.gpus,
                    client_key=hosts.client_key,
                    known_hosts_direct=base / "known_hosts",
                    proxy_jump=plan.proxy_jump,
                )
            keygen += [host.prepare() for host in hosts]
            if any(p.wait() for p in keygen):
                raise RuntimeError("ssh-keygen failed")
            hosts._plan_jumps(unshare)
            for host in hosts:
                host.launch(sshd, unshare)
            for host in hosts:
                host.started()
            (base / "known_hosts").write_text(
                "".join(f"[{h.address}]:{h.port} {h.host_key}\n" for h in hosts)
            )
            wait_ready(list(hosts))
        except BaseException:
            hosts.close()
            raise
        return hosts

    def add(self, plan: HostPlan, env: dict[str, str] | None = None) -> SshdHost:
        """Start one more host (its own user, the next 127.0.0.x) whose sessions also see
        ``env``; it stops with the others. No proxy jump, no private mount namespace."""
        sshd = sshd_binary()
        assert sshd is not None and plan.alias not in self.hosts and plan.proxy_jump is None
        root = os.geteuid() == 0
        account = create_user(f"lt-{secrets.token_hex(2)}-{plan.user}") if root else current_user()
        self.created_users += [account.name] if root else []
        number = 1 + max(int(h.address.rsplit(".", 1)[1]) for h in self)
        host = SshdHost(
            alias=plan.alias,
            address=f"127.0.0.{number}",
            account=account,
            dir=self.base / plan.alias,
            gpus=plan.gpus,
            client_key=self.client_key,
            known_hosts_direct=self.base / "known_hosts",
            env=dict(env or {}),
        )
        if host.prepare().wait():
            raise RuntimeError("ssh-keygen failed")
        self.hosts[plan.alias] = host
        try:
            host.launch(sshd, unshare=False)
            host.started()
            with (self.base / "known_hosts").open("a") as known:
                known.write(f"[{host.address}]:{host.port} {host.host_key}\n")
            wait_ready([host])
        except BaseException:
            host.close()
            del self.hosts[plan.alias]
            raise
        return host

    def _plan_jumps(self, unshare: bool) -> None:
        # With a mount namespace, the jump host gets its own /etc/hosts naming `behind`: only a
        # connection forwarded by the jump host can find it, which proves ProxyJump is used.
        for host in self:
            if host.proxy_jump is None:
                continue
            jump = self.hosts[host.proxy_jump]
            jump.log_level = "DEBUG1"  # forwarded connections are logged at debug level only
            if unshare:
                hosts_file = jump.dir / "etc-hosts"
                text = Path("/etc/hosts").read_text()
                hosts_file.write_text(f"{text.rstrip()}\n{host.address} {BEHIND_NAME}\n")
                jump.binds.append((str(hosts_file), "/etc/hosts"))
                host.hostname = BEHIND_NAME
        root_rc = Path(pwd.getpwuid(0).pw_dir, ".bashrc")
        if unshare and root_rc.exists():  # root's shell start-up is slow here; hide it
            for host in self:
                host.binds.append(("/dev/null", str(root_rc)))

    def __iter__(self) -> Iterator[SshdHost]:
        return iter(self.hosts.values())

    def __getitem__(self, alias: str) -> SshdHost:
        return self.hosts[alias]

    gpu2 = property(lambda self: self.hosts["gpu2"], doc="2 stub GPUs")
    gpu1 = property(lambda self: self.hosts["gpu1"], doc="1 stub GPU")
    cpu = property(lambda self: self.hosts["cpu"], doc="no nvidia-smi")
    jump = property(lambda self: self.hosts["jump"], doc="the bastion in front of `behind`")
    behind = property(lambda self: self.hosts["behind"], doc="reached through ProxyJump jump")
    nfs1 = property(lambda self: self.hosts["nfs1"], doc="shares its user and home with nfs2")
    nfs2 = property(lambda self: self.hosts["nfs2"], doc="shares its user and home with nfs1")

    def client_config(self, known_hosts: Path) -> str:
        """~/.ssh/config text with one Host alias per host."""
        blocks = []
        for h in self:
            lines = [
                f"Host {h.alias}",
                f"    HostName {h.hostname}",
                f"    Port {h.port}",
                f"    User {h.user}",
                f"    IdentityFile {self.client_key}",
                "    IdentitiesOnly yes",
                f"    UserKnownHostsFile {known_hosts}",
            ] + ([f"    ProxyJump {h.proxy_jump}"] if h.proxy_jump else [])
            blocks.append("\n".join(lines) + "\n")
        return "\n".join([*blocks, "Host *\n    BatchMode yes\n"])

    def known_hosts(self) -> str:
        """known_hosts text for every host, under the name its alias connects to."""
        return "".join(f"[{h.hostname}]:{h.port} {h.host_key}\n" for h in self)

    def write_client_home(self, home: Path) -> Path:
        """Make ``home`` a client home: .ssh/config and known_hosts for every host."""
        ssh = home / ".ssh"
        ssh.mkdir(mode=0o700, parents=True, exist_ok=True)
        (ssh / "known_hosts").write_text(self.known_hosts())
        (ssh / "config").write_text(self.client_config(ssh / "known_hosts"))
        for name in ("config", "known_hosts"):
            (ssh / name).chmod(0o600)
        return home

    def heal(self) -> None:
        """Undo the faults a test left behind (frozen or stopped sshd, changed GPU tables)."""
        for host in self:
            host.heal()

    def close(self) -> None:
        """Stop every host (and everything running there), delete the users and files."""
        for host in self:
            host.close()
        for name in self.created_users:
            remove_user(name)
        shutil.rmtree(self.base, ignore_errors=True)
