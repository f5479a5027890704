"""labtasker's helper: runs on a lab server, shipped and started by ``protocol.BOOTSTRAP``.

Stdlib only, Python 3.8+, one file. It owns STATE_DIR/runs/<run_id>/ (spec.json, cmd.sh,
supervisor.json, started.json, exit.json, output.log, result.json, cancel.json; dirs 0700, files
0600) and answers one JSON request per stdin line with one JSON reply line on stdout.
Each task runs under a forked supervisor in its own session, so tasks outlive the helper.

Ops (request params -> reply fields; every reply also has "id" and "ok"):
  ping    {} -> {}
  gpus    {} -> {"gpus": [{index, uuid, name, memory_used_mib, memory_total_mib, utilization}],
          "processes": [{gpu_uuid, pid, user, used_memory_mib, name}], "error": null | text}.
          Values nvidia-smi reports as [N/A] are null; "No devices were found" gives no GPUs.
  launch  {"run_id", "spec": {command, setup, workdir, env, timeout, kill_grace, task_id}}
          -> {"status": "started", "pid": supervisor pid} | {"status": "exists", "run": REPORT}.
          The run dir is made with os.mkdir, so one run_id never starts two processes.
          The task sees LABTASKER_RESULT (write a JSON object there), LABTASKER_RUN_ID,
          LABTASKER_RUN_DIR and LABTASKER_TASK_ID.
  probe   {"runs": [run_id]} -> {"runs": {run_id: REPORT}}; starting/running ones are watched.
  kill    {"run_id", "grace": s} -> {"status": "signalled" | "absent" | "exited"}
  read    {"run_id", "offset", "size" <= 1 MiB} -> {"data": base64, "size": log size now}
  tail    {"runs": [run_id], "bytes": n} -> {"lines": {run_id: last non-empty line | null}}
  cleanup {"runs": [run_id]} -> {"removed": n, "refused": [run_id still starting/running]}
  check   {"workdir": str | null} -> {"python", "workdir", "workdir_writable", "workdir_error",
          "state_dir_writable", "disk_free_bytes"}
A bad request gets {"ok": false, "error": text}; an unparsable line gets "id": null.

REPORT: {run_id, state: absent|starting|running|exited|lost, pid, started_at, finished_at,
exit_code (-N for signal N), signal, timed_out, cancelled, error, result, result_error, log_size,
log (base64, only when exited and log_size <= 64 KiB), boot_id, inline_omitted}. inline_omitted is
true when log/result were left out to keep the reply under 1 MiB: probe that run alone or read it.
"starting" means no started.json yet while the supervisor lives (or, before the supervisor has
said so, for 60 s after the run dir was made); "lost" means no exit.json and the supervisor is
gone, its pid reused, or the host rebooted. Events: {"event": "exit", "run": REPORT} when a
watched run ends (exited or lost).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import platform
import pwd
import re
import selectors
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from typing import Any, Callable, Dict, List, Optional, Tuple

#: Must equal dispatcher.remote.protocol.PROTOCOL_VERSION (a unit test checks).
PROTOCOL_VERSION = 1
INLINE_LOG_LIMIT = 64 * 1024
#: Lines stay well under asyncssh's 2 MiB receive window, past which it splits a line.
REPLY_INLINE_BUDGET = 1024 * 1024
RESULT_LIMIT = 256 * 1024
READ_LIMIT = 1024 * 1024
MAX_REQUEST = 4 * 1024 * 1024
GPU_QUERY_TIMEOUT = 15.0
ADOPTED_POLL_S = 0.5
LOST_AFTER_S = 60.0
DEFAULT_GRACE = 10.0
_RUN_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
_GPU_FIELDS = "index,uuid,name,memory.used,memory.total,utilization.gpu"
_APP_FIELDS = "gpu_uuid,pid,used_memory,process_name"


class BadRequest(Exception):
    """A request the helper refuses; its text is the reply's error."""


class _Budget:
    """Bytes of inline logs/results one reply may still carry."""

    def __init__(self, left: int = REPLY_INLINE_BUDGET) -> None:
        self.left = left

    def take(self, n: int) -> bool:
        if n > self.left:
            return False
        self.left -= n
        return True


def utc_now() -> str:
    """UTC time as ISO 8601 with a Z suffix."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def read_boot_id() -> str:
    """This boot's id (Linux), or "" where the kernel does not expose one."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def proc_stat(pid: int) -> Optional[Tuple[str, int, int]]:
    """(state, pgrp, start time) of a live or zombie process from /proc, or None."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            data = f.read()
        rest = data[data.rfind(b")") + 2 :].split()
        return rest[0].decode(), int(rest[2]), int(rest[19])
    except (OSError, IndexError, ValueError):
        return None


def process_matches(pid: Any, proc_start: Any) -> bool:
    """True if pid runs (not a zombie: pid 1 may never reap it) and is the same process."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    st = proc_stat(pid)
    if st is None:
        if os.path.isdir("/proc/self"):
            return False
        try:  # no /proc: trust kill(0), pid reuse goes unnoticed
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return st[0] != "Z" and (proc_start is None or st[2] == proc_start)


def group_alive(pgid: int) -> bool:
    """True if a non-zombie process is in process group pgid."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        names = os.listdir("/proc")
    except OSError:
        return True
    for name in names:
        if name.isdigit():
            st = proc_stat(int(name))
            if st is not None and st[1] == pgid and st[0] != "Z":
                return True
    return False


def signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return "SIG%d" % num


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_file(path: str, data: bytes, sync: bool = False) -> None:
    """Write path atomically (temp file + rename), mode 0600."""
    tmp = "%s.tmp%d" % (path, os.getpid())
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            write_all(fd, data)
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_json(path: str, obj: Any, sync: bool = False) -> None:
    write_file(path, json.dumps(obj, sort_keys=True).encode(), sync)


def read_json(path: str) -> Tuple[Optional[Dict[str, Any]], Optional[str]]:
    """(object, None), (None, None) when missing, or (None, why) when unreadable."""
    try:
        with open(path, "rb") as f:
            obj = json.loads(f.read().decode("utf-8"))
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError) as exc:
        return None, "%s unreadable: %s" % (os.path.basename(path), exc)
    if not isinstance(obj, dict):
        return None, "%s is not a JSON object" % os.path.basename(path)
    return obj, None


def file_size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def expand_dir(path: Optional[str]) -> str:
    """A workdir as the task sees it: "~" expanded, relative to the home dir, like ssh does."""
    home = os.path.expanduser("~")
    if not path:
        return home
    return os.path.normpath(os.path.join(home, os.path.expanduser(path)))


def build_script(command: str, setup: Optional[str]) -> str:
    """cmd.sh: the setup line (stop with 126 when it fails), then the command."""
    lines = ["set +e"]
    if setup:
        lines += [
            setup,
            "__labtasker_rc=$?",
            'if [ "$__labtasker_rc" -ne 0 ]; then',
            "  printf 'labtasker: setup failed (exit %%s): %%s\\n' \"$__labtasker_rc\" %s"
            % shlex.quote(setup),
            "  exit 126",
            "fi",
        ]
    lines.append(command)
    return "\n".join(lines) + "\n"


def decode_status(status: int) -> Tuple[int, Optional[str]]:
    """waitpid status -> (exit code, signal name); a signal N gives -N like Popen.returncode."""
    if os.WIFSIGNALED(status):
        num = os.WTERMSIG(status)
        return -num, signal_name(num)
    return os.WEXITSTATUS(status), None


def _noop(signum: int, frame: Any) -> None:
    """Installed so the signal interrupts select() via the wakeup fd."""


def _wakeup_pipe() -> int:
    rfd, wfd = os.pipe()
    os.set_blocking(rfd, False)
    os.set_blocking(wfd, False)
    signal.set_wakeup_fd(wfd, warn_on_full_buffer=False)
    return rfd


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except (BlockingIOError, InterruptedError):
        pass


# --- the supervisor: a forked child of the helper, one per run ----------------------------------


class Supervisor:
    """Starts one task, enforces its timeout and cancellation, records exit.json, then _exits."""

    def __init__(
        self, run_dir: str, spec: Dict[str, Any], boot_id: str, host: str, umask: int
    ) -> None:
        self.umask = umask
        self.run_dir = run_dir
        self.spec = spec
        self.boot_id = boot_id
        self.host = host
        self.cancel_requested = False
        self.cancelled = False
        self.timed_out = False
        self.notes: List[str] = []
        self.started_at = utc_now()
        self.wake = -1

    def path(self, name: str) -> str:
        return os.path.join(self.run_dir, name)

    def on_term(self, signum: int, frame: Any) -> None:
        self.cancel_requested = True

    def detach(self) -> None:
        # The helper's pipes are the SSH channel: holding them would keep the session open.
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        try:
            fds: Any = [int(n) for n in os.listdir("/proc/self/fd")]
        except OSError:
            fds = range(3, min(os.sysconf("SC_OPEN_MAX"), 65536))
        for fd in fds:
            if fd > 2:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def run(self) -> None:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGTERM, self.on_term)
        for num in (signal.SIGCHLD, signal.SIGHUP, signal.SIGINT):
            signal.signal(num, _noop)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        pass
        self.detach()
        self.wake = _wakeup_pipe()
        me = os.getpid()
        st = proc_stat(me)
        ident = {"pid": me, "proc_start": st[2] if st else None, "boot_id": self.boot_id}
        try:
            write_json(self.path("supervisor.json"), ident)
        except OSError as exc:
            self.notes.append("could not write supervisor.json: %s" % exc)
        self.started_at = utc_now()
        workdir = expand_dir(self.spec.get("workdir"))
        try:
            os.makedirs(workdir, 0o700, exist_ok=True)
        except OSError as exc:
            self.fail("cannot create workdir %s on %s: %s" % (workdir, self.host, exc))
            return
        if self.cancel_requested:
            self.finish(-signal.SIGTERM, "SIGTERM", cancelled=True)
            return
        env = dict(os.environ)
        env.update(self.spec.get("env") or {})
        env["LABTASKER_RESULT"] = self.path("result.json")
        env["LABTASKER_RUN_DIR"] = self.run_dir
        env["LABTASKER_RUN_ID"] = os.path.basename(self.run_dir)
        env["LABTASKER_TASK_ID"] = str(self.spec.get("task_id", ""))
        shell = "/bin/bash" if os.path.exists("/bin/bash") else "/bin/sh"
        os.umask(self.umask)  # the task writes files as in the user's own shell
        try:
            log = os.open(self.path("output.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                proc = subprocess.Popen(
                    [shell, self.path("cmd.sh")],
                    cwd=workdir,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    close_fds=True,
                )
            finally:
                os.close(log)
        except OSError as exc:
            self.fail("cannot start the task in %s on %s: %s" % (workdir, self.host, exc))
            return
        started = {
            "pid": proc.pid,
            "pgid": proc.pid,
            "supervisor_pid": me,
            "started_at": self.started_at,
            "boot_id": self.boot_id,
            "hostname": self.host,
            "proc_start": ident["proc_start"],
        }
        try:
            write_json(self.path("started.json"), started)
        except OSError as exc:
            self.notes.append("could not write started.json: %s" % exc)
        status = self.wait(proc.pid)
        proc.returncode = decode_status(status)[0]  # we reaped it; keeps Popen quiet
        code, sig = decode_status(status)
        self.finish(code, sig, cancelled=self.cancelled)

    def grace(self, from_cancel: bool) -> float:
        if from_cancel:
            info, _ = read_json(self.path("cancel.json"))
            if info and isinstance(info.get("grace"), (int, float)):
                return max(0.0, float(info["grace"]))
        return float(self.spec.get("kill_grace", DEFAULT_GRACE))

    def wait(self, pid: int) -> int:
        """Wait for the task; TERM its group on timeout/cancel and KILL it after the grace."""
        timeout = self.spec.get("timeout")
        deadline = None if timeout is None else time.monotonic() + float(timeout)
        kill_at: Optional[float] = None
        killed = False
        status: Optional[int] = None
        while True:
            if status is None:
                try:
                    got, st = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    got, st = pid, 0
                if got == pid:
                    status = st
            now = time.monotonic()
            if status is not None and (kill_at is None or killed or not group_alive(pid)):
                return status
            due = self.cancel_requested or (deadline is not None and now >= deadline)
            if kill_at is None and due:
                self.cancelled = self.cancel_requested
                self.timed_out = not self.cancel_requested
                self.signal_group(pid, signal.SIGTERM)
                kill_at = now + self.grace(self.cancelled)
            if kill_at is not None and not killed and now >= kill_at:
                self.signal_group(pid, signal.SIGKILL)
                killed = True
                continue
            waits = []
            if kill_at is None and deadline is not None:
                waits.append(deadline - now)
            if kill_at is not None and not killed:
                waits.append(kill_at - now)
            if status is not None:
                waits.append(0.05)  # the leader is gone; poll the rest of its group
            self.sleep(max(0.0, min(waits)) if waits else None)

    def signal_group(self, pgid: int, sig: int) -> None:
        with contextlib.suppress(OSError):
            os.killpg(pgid, sig)

    def sleep(self, timeout: Optional[float]) -> None:
        sel = selectors.DefaultSelector()
        try:
            sel.register(self.wake, selectors.EVENT_READ)
            sel.select(timeout)
        finally:
            sel.close()
        _drain(self.wake)

    def fail(self, error: str) -> None:
        try:
            fd = os.open(self.path("output.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                write_all(fd, ("labtasker: %s\n" % error).encode())
            finally:
                os.close(fd)
        except OSError:
            pass
        self.notes.insert(0, error)
        self.finish(127, None, cancelled=False)

    def finish(self, code: int, sig: Optional[str], cancelled: bool) -> None:
        info = {
            "exit_code": code,
            "signal": sig,
            "timed_out": self.timed_out,
            "cancelled": cancelled,
            "started_at": self.started_at,
            "finished_at": utc_now(),
            "error": "; ".join(self.notes) or None,
        }
        path = self.path("exit.json")
        try:
            write_json(path, info, sync=True)
        except OSError:
            # Disk full: give back the block reserved at launch and try once more.
            with contextlib.suppress(OSError):
                os.unlink(self.path("exit.reserve"))
            write_json(path, info, sync=True)
        with contextlib.suppress(OSError):
            os.unlink(self.path("exit.reserve"))


def supervise(run_dir: str, spec: Dict[str, Any], boot_id: str, host: str, umask: int) -> None:
    """Body of the forked child: never returns into the helper's loop."""
    try:
        Supervisor(run_dir, spec, boot_id, host, umask).run()
    except BaseException as exc:
        try:
            path = os.path.join(run_dir, "exit.json")
            if not os.path.exists(path):
                err = "supervisor failed: %s: %s" % (type(exc).__name__, exc)
                write_json(path, {"exit_code": 127, "signal": None, "timed_out": False,
                                  "cancelled": False, "started_at": None,
                                  "finished_at": utc_now(), "error": err})  # fmt: skip
        except BaseException:
            pass
    finally:
        os._exit(0)


# --- GPU query: two nvidia-smi processes read through the helper's selector ---------------------


def _number(text: str) -> Any:
    t = text.strip()
    if not t or t.startswith("["):  # [N/A], [Not Supported]
        return None
    for kind in (int, float):
        try:
            return kind(t)
        except ValueError:
            pass
    return None


def parse_gpus(text: str) -> Tuple[List[Dict[str, Any]], Optional[str]]:
    """Rows of --query-gpu output; a name may hold commas, so it is what lies between."""
    gpus, bad = [], None
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if not line.strip():
            continue
        if len(parts) < 6 or _number(parts[0]) is None:
            bad = bad or "nvidia-smi output not understood: %s" % line.strip()[:200]
            continue
        gpus.append({"index": _number(parts[0]), "uuid": parts[1],
                     "name": ", ".join(parts[2:-3]), "memory_used_mib": _number(parts[-3]),
                     "memory_total_mib": _number(parts[-2]),
                     "utilization": _number(parts[-1])})  # fmt: skip
    return gpus, bad


def pid_user(pid: int) -> str:
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("Uid:"):
                    return user_name(int(line.split()[1]))
    except (OSError, ValueError, IndexError):
        pass
    return "?"


def parse_apps(text: str) -> List[Dict[str, Any]]:
    """Rows of --query-compute-apps output, each with the owner of its pid."""
    procs = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",", 3)]
        pid = _number(parts[1]) if len(parts) == 4 else None
        if not isinstance(pid, int):
            continue  # blank, or "No running processes found"
        procs.append({"gpu_uuid": parts[0], "pid": pid, "user": pid_user(pid),
                      "used_memory_mib": _number(parts[2]), "name": parts[3]})  # fmt: skip
    return procs


class GpuQuery:
    """One `gpus` request in flight: both nvidia-smi outputs collected without blocking."""

    def __init__(self, req_id: Any, exe: str) -> None:
        self.req_id = req_id
        self.deadline = time.monotonic() + GPU_QUERY_TIMEOUT
        self.procs: List[subprocess.Popen[bytes]] = []
        self.out: Dict[int, bytearray] = {}
        for query, fields in (("--query-gpu", _GPU_FIELDS), ("--query-compute-apps", _APP_FIELDS)):
            argv = [exe, "%s=%s" % (query, fields), "--format=csv,noheader,nounits"]
            self.procs.append(subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                               close_fds=True))  # fmt: skip
        self.bufs: Dict[Tuple[int, bool], bytearray] = {}
        self.files: Dict[int, Tuple[Any, Tuple[int, bool]]] = {}  # fd -> (file, buffer key)
        for i, p in enumerate(self.procs):
            for is_err, f in ((False, p.stdout), (True, p.stderr)):
                if f is not None:
                    self.bufs[(i, is_err)] = bytearray()
                    self.files[f.fileno()] = (f, (i, is_err))

    def feed(self, fd: int) -> bool:
        """Read what fd has; False (and close it) at EOF."""
        f, key = self.files[fd]
        data = os.read(fd, 65536)
        if data:
            if len(self.bufs[key]) < READ_LIMIT:
                self.bufs[key] += data
            return True
        f.close()
        del self.files[fd]
        return False

    def text(self, i: int, err: bool) -> str:
        return bytes(self.bufs.get((i, err), b"")).decode("utf-8", "replace")

    def done(self) -> bool:
        return not self.files and all(p.poll() is not None for p in self.procs)

    def result(self) -> Dict[str, Any]:
        reply: Dict[str, Any] = {"gpus": [], "processes": [], "error": None}
        texts = [(self.text(i, False), self.text(i, True)) for i in range(2)]
        if "No devices were found" in texts[0][0] + texts[0][1]:
            return reply  # a host without GPUs is not an error
        for i, proc in enumerate(self.procs):
            out, err = texts[i]
            if proc.returncode != 0:
                first = [x.strip() for x in (err + "\n" + out).splitlines() if x.strip()]
                why = first[0] if first else "exit %s" % proc.returncode
                reply["error"] = reply["error"] or "nvidia-smi failed: %s" % why
            elif i == 0:
                reply["gpus"], bad = parse_gpus(out)
                reply["error"] = reply["error"] or bad
            else:
                reply["processes"] = parse_apps(out)
        return reply


# --- run reports ------------------------------------------------------------------------------


class Helper:
    """The request loop: one thread, one selector over stdin, the wakeup pipe and query pipes."""

    def __init__(self, state_dir: str) -> None:
        self.state_dir = os.path.abspath(os.path.expanduser(state_dir))
        self.runs = os.path.join(self.state_dir, "runs")
        self.boot_id = read_boot_id()
        self.host = socket.gethostname()
        self.children: Dict[int, str] = {}  # supervisor pid -> run_id
        self.adopted: Dict[str, None] = {}  # runs watched by polling exit.json
        self.next_poll = 0.0
        self.queries: List[GpuQuery] = []
        self.stray: List[subprocess.Popen[bytes]] = []  # killed, not yet reaped
        self.timers: List[Tuple[float, int]] = []  # (when, pgid to SIGKILL)
        self.inbuf = b""
        self.discarding = False
        self.running = True
        self.umask = 0o022
        self.ops: Dict[str, Callable[[Dict[str, Any]], Optional[Dict[str, Any]]]] = {
            "ping": lambda req: {},
            "gpus": self.op_gpus,
            "launch": self.op_launch,
            "probe": self.op_probe,
            "kill": self.op_kill,
            "read": self.op_read,
            "tail": self.op_tail,
            "cleanup": self.op_cleanup,
            "check": self.op_check,
        }
        self.sel: selectors.BaseSelector = selectors.DefaultSelector()

    def run_dir(self, run_id: str) -> str:
        return os.path.join(self.runs, run_id)

    def live_state(self, run_id: str, started: Optional[Dict[str, Any]]) -> Tuple[str, Any]:
        """For a run without exit.json: (starting | running | lost, why it is lost)."""
        info = started or read_json(os.path.join(self.run_dir(run_id), "supervisor.json"))[0]
        if info is not None:
            boot = info.get("boot_id") or ""
            if boot and self.boot_id and boot != self.boot_id:
                return "lost", "%s rebooted since the run started" % self.host
            pid = info.get("supervisor_pid", info.get("pid"))
            if process_matches(pid, info.get("proc_start")):
                return ("running" if started else "starting"), None
            return "lost", "its supervisor (pid %s) on %s ended without recording an exit" % (
                pid,
                self.host,
            )
        for pid, rid in self.children.items():
            if rid == run_id and process_matches(pid, None):
                return "starting", None
        try:
            age = time.time() - os.stat(self.run_dir(run_id)).st_mtime
        except OSError:
            age = LOST_AFTER_S
        if age < LOST_AFTER_S:
            return "starting", None
        return "lost", "no supervisor started within %d s on %s" % (LOST_AFTER_S, self.host)

    def report(self, run_id: str, budget: _Budget) -> Dict[str, Any]:
        """The REPORT of one run (see the module docstring)."""
        rep: Dict[str, Any] = {
            "run_id": run_id, "state": "absent", "pid": None, "started_at": None,
            "finished_at": None, "exit_code": None, "signal": None, "timed_out": False,
            "cancelled": False, "error": None, "result": None, "result_error": None,
            "log_size": 0, "log": None, "boot_id": None, "inline_omitted": False,
        }  # fmt: skip
        d = self.run_dir(run_id)
        if not os.path.isdir(d):
            return rep
        started, err = read_json(os.path.join(d, "started.json"))
        if started:
            rep.update(pid=started.get("pid"), started_at=started.get("started_at"))
            rep["boot_id"] = started.get("boot_id")
        exit_info, exit_err = read_json(os.path.join(d, "exit.json"))
        if exit_info is None and exit_err is None:
            rep["state"], rep["error"] = self.live_state(run_id, started)
            if rep["state"] != "lost":
                rep["log_size"] = file_size(os.path.join(d, "output.log"))
                return rep
            # The supervisor may have finished between the two looks.
            exit_info, exit_err = read_json(os.path.join(d, "exit.json"))
        rep["log_size"] = file_size(os.path.join(d, "output.log"))
        if exit_info is None:
            rep["error"] = exit_err or rep["error"] or err
            rep["state"] = "lost"
            return rep
        rep["state"] = "exited"
        for key in ("exit_code", "signal", "started_at", "finished_at", "error"):
            rep[key] = exit_info.get(key, rep[key])
        rep["timed_out"] = bool(exit_info.get("timed_out"))
        rep["cancelled"] = bool(exit_info.get("cancelled"))
        self.add_result(rep, os.path.join(d, "result.json"), budget)
        size = rep["log_size"]
        if size <= INLINE_LOG_LIMIT:
            if budget.take((size + 2) // 3 * 4):
                with open(os.path.join(d, "output.log"), "rb") as f:
                    rep["log"] = base64.b64encode(f.read(size)).decode("ascii")
            else:
                rep["inline_omitted"] = True
        return rep

    def add_result(self, rep: Dict[str, Any], path: str, budget: _Budget) -> None:
        try:
            size = os.stat(path).st_size
        except OSError:
            return
        if size > RESULT_LIMIT:
            rep["result_error"] = "result.json is %d bytes; the limit is %d" % (size, RESULT_LIMIT)
            return
        if not budget.take(size * 2):  # ASCII escapes can double it on the wire
            rep["inline_omitted"] = True
            return
        obj, why = read_json(path)
        if obj is None and why is None:
            return
        rep["result"], rep["result_error"] = obj, why

    # --- ops ----------------------------------------------------------------------------------

    def op_gpus(self, req: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        exe = shutil.which("nvidia-smi")
        if exe is None:
            return {"gpus": [], "processes": [], "error": "nvidia-smi not found on PATH"}
        try:
            query = GpuQuery(req.get("id"), exe)
        except OSError as exc:
            return {"gpus": [], "processes": [], "error": "nvidia-smi failed: %s" % exc}
        for fd in query.files:
            self.sel.register(fd, selectors.EVENT_READ, query)
        self.queries.append(query)
        return None  # answered when both processes are done

    def op_launch(self, req: Dict[str, Any]) -> Dict[str, Any]:
        run_id = _run_id(req.get("run_id"))
        spec = _spec(req.get("spec"))
        d = self.run_dir(run_id)
        os.makedirs(self.runs, 0o700, exist_ok=True)
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            return {"status": "exists", "run": self.report(run_id, _Budget())}
        try:
            write_json(os.path.join(d, "spec.json"), spec)
            write_file(os.path.join(d, "cmd.sh"), build_script(spec["command"], spec["setup"])
                       .encode("utf-8", "surrogateescape"))  # fmt: skip
            write_file(os.path.join(d, "exit.reserve"), b" " * 4096)
            old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
            try:
                pid = os.fork()
                if pid == 0:
                    supervise(d, spec, self.boot_id, self.host, self.umask)
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, old)
        except OSError as exc:
            shutil.rmtree(d, ignore_errors=True)  # nothing started: a retry may reuse the id
            raise BadRequest(
                "cannot launch run %s in %s on %s: %s" % (run_id, d, self.host, exc)
            ) from None
        self.children[pid] = run_id
        self.adopted.pop(run_id, None)
        return {"status": "started", "pid": pid}

    def op_probe(self, req: Dict[str, Any]) -> Dict[str, Any]:
        budget = _Budget()
        reports = {}
        mine = set(self.children.values())
        for run_id in _run_ids(req.get("runs")):
            rep = reports[run_id] = self.report(run_id, budget)
            if rep["state"] in ("starting", "running") and run_id not in mine:
                self.adopted[run_id] = None
        return {"runs": reports}

    def op_kill(self, req: Dict[str, Any]) -> Dict[str, Any]:
        run_id = _run_id(req.get("run_id"))
        grace = _number_param(req, "grace", DEFAULT_GRACE)
        d = self.run_dir(run_id)
        if not os.path.isdir(d):
            return {"status": "absent"}
        if os.path.exists(os.path.join(d, "exit.json")):
            return {"status": "exited"}
        with contextlib.suppress(OSError):  # the supervisor falls back to the spec's kill_grace
            write_json(os.path.join(d, "cancel.json"), {"grace": grace})
        started = read_json(os.path.join(d, "started.json"))[0]
        info = started or read_json(os.path.join(d, "supervisor.json"))[0] or {}
        candidates: List[Tuple[Any, Any]] = [
            (p, None) for p, r in self.children.items() if r == run_id
        ]
        candidates.append((info.get("supervisor_pid", info.get("pid")), info.get("proc_start")))
        for pid, start in candidates:
            if process_matches(pid, start):
                os.kill(pid, signal.SIGTERM)
                return {"status": "signalled"}
        pgid = started.get("pgid") if started else None
        if isinstance(pgid, int) and pgid > 1 and group_alive(pgid):
            # The supervisor died (it should not); end the task ourselves.
            os.killpg(pgid, signal.SIGTERM)
            self.timers.append((time.monotonic() + grace, pgid))
            return {"status": "signalled"}
        return {"status": "exited"}

    def op_read(self, req: Dict[str, Any]) -> Dict[str, Any]:
        run_id = _run_id(req.get("run_id"))
        offset = int(_number_param(req, "offset", 0))
        size = int(_number_param(req, "size", READ_LIMIT))
        if size > READ_LIMIT:
            raise BadRequest("read size %d is over the %d byte limit" % (size, READ_LIMIT))
        if not os.path.isdir(self.run_dir(run_id)):
            raise BadRequest("no run %s in %s on %s" % (run_id, self.runs, self.host))
        path = os.path.join(self.run_dir(run_id), "output.log")
        try:
            with open(path, "rb") as f:
                total = os.fstat(f.fileno()).st_size
                f.seek(offset)
                data = f.read(size)
        except FileNotFoundError:
            total, data = 0, b""
        return {"data": base64.b64encode(data).decode("ascii"), "size": total}

    def op_tail(self, req: Dict[str, Any]) -> Dict[str, Any]:
        want = int(_number_param(req, "bytes", 4096))
        want = min(want, READ_LIMIT)
        lines: Dict[str, Optional[str]] = {}
        for run_id in _run_ids(req.get("runs")):
            lines[run_id] = None
            try:
                with open(os.path.join(self.run_dir(run_id), "output.log"), "rb") as f:
                    f.seek(max(0, os.fstat(f.fileno()).st_size - want))
                    chunk = f.read(want).decode("utf-8", "replace")
            except OSError:
                continue
            # Progress bars redraw with \r: the last segment is what a terminal would show.
            parts = [p.strip() for p in re.split(r"[\r\n]", chunk) if p.strip()]
            lines[run_id] = parts[-1] if parts else None
        return {"lines": lines}

    def op_cleanup(self, req: Dict[str, Any]) -> Dict[str, Any]:
        removed, refused = 0, []
        for run_id in _run_ids(req.get("runs")):
            rep = self.report(run_id, _Budget(0))
            if rep["state"] == "absent":
                continue
            started = read_json(os.path.join(self.run_dir(run_id), "started.json"))[0] or {}
            pgid = started.get("pgid")
            busy = rep["state"] in ("starting", "running") or (
                rep["state"] == "lost" and isinstance(pgid, int) and pgid > 1 and group_alive(pgid)
            )
            if busy:
                refused.append(run_id)
                continue
            shutil.rmtree(self.run_dir(run_id))
            self.adopted.pop(run_id, None)
            removed += 1
        return {"removed": removed, "refused": refused}

    def op_check(self, req: Dict[str, Any]) -> Dict[str, Any]:
        workdir = req.get("workdir")
        if workdir is not None and not isinstance(workdir, str):
            raise BadRequest("workdir must be a string or null")
        path = expand_dir(workdir)
        error = None
        if os.path.isdir(path):
            if not os.access(path, os.W_OK | os.X_OK):
                error = "workdir %s on %s is not writable by %s" % (
                    path, self.host, user_name(os.geteuid()))  # fmt: skip
        elif os.path.lexists(path):
            error = "workdir %s on %s exists and is not a directory" % (path, self.host)
        else:
            parent = os.path.dirname(path)
            while parent != os.path.dirname(parent) and not os.path.lexists(parent):
                parent = os.path.dirname(parent)
            if not (os.path.isdir(parent) and os.access(parent, os.W_OK | os.X_OK)):
                error = "workdir %s on %s does not exist and %s is not writable" % (
                    path, self.host, parent)  # fmt: skip
        probe = os.path.join(self.state_dir, ".write-check.%d" % os.getpid())
        try:
            write_file(probe, b"ok")
            os.unlink(probe)
            writable = True
        except OSError:
            writable = False
        vfs = os.statvfs(self.state_dir)
        return {"python": platform.python_version(), "workdir": path,
                "workdir_writable": error is None, "workdir_error": error,
                "state_dir_writable": writable,
                "disk_free_bytes": vfs.f_bavail * vfs.f_frsize}  # fmt: skip

    # --- the loop -----------------------------------------------------------------------------

    def send(self, obj: Dict[str, Any]) -> None:
        try:
            write_all(1, (json.dumps(obj) + "\n").encode("ascii"))
        except OSError:
            self.running = False  # the controller is gone

    def handle_line(self, line: bytes) -> None:
        req_id: Any = None
        op: Any = None
        try:
            try:
                req = json.loads(line.decode("utf-8"))
            except ValueError as exc:  # UnicodeDecodeError is a ValueError too
                raise BadRequest("request is not valid JSON: %s" % exc) from None
            if not isinstance(req, dict):
                raise BadRequest("a request must be a JSON object, not %s" % type(req).__name__)
            req_id, op = req.get("id"), req.get("op")
            handler = self.ops.get(op) if isinstance(op, str) else None
            if handler is None:
                raise BadRequest("unknown op %r; known ops: %s" % (op, ", ".join(sorted(self.ops))))
            result = handler(req)
            if result is None:
                return
            reply: Dict[str, Any] = {"id": req_id, "ok": True}
            reply.update(result)
        except BadRequest as exc:
            reply = {"id": req_id, "ok": False, "error": str(exc)}
        except Exception as exc:
            reply = {"id": req_id, "ok": False,
                     "error": "helper on %s failed on op %r: %s: %s"
                     % (self.host, op, type(exc).__name__, exc)}  # fmt: skip
        self.send(reply)

    def on_stdin(self) -> None:
        try:
            data = os.read(0, 65536)
        except OSError:
            data = b""
        if not data:
            self.running = False
            return
        lines = (self.inbuf + data).split(b"\n")
        self.inbuf = lines.pop()
        for line in lines:
            if self.discarding:
                self.discarding = False
            else:
                self.handle_line(line)
        if len(self.inbuf) > MAX_REQUEST:
            self.inbuf, self.discarding = b"", True
            self.send(
                {"id": None, "ok": False, "error": "request line over %d bytes" % MAX_REQUEST}
            )

    def on_query(self, query: GpuQuery, fd: int) -> None:
        if not query.feed(fd):
            self.sel.unregister(fd)

    def service(self) -> None:
        """Everything that is not a readable fd: exits, adopted runs, queries, timers."""
        for pid in list(self.children):
            try:
                got = os.waitpid(pid, os.WNOHANG)[0]
            except ChildProcessError:
                got = pid
            if got == pid:
                run_id = self.children.pop(pid)
                self.send({"event": "exit", "run": self.report(run_id, _Budget())})
        now = time.monotonic()
        if self.adopted and now >= self.next_poll:
            self.next_poll = now + ADOPTED_POLL_S
            for run_id in list(self.adopted):
                rep = self.report(run_id, _Budget())
                if rep["state"] not in ("starting", "running"):
                    del self.adopted[run_id]
                    self.send({"event": "exit", "run": rep})
        for query in list(self.queries):
            if query.done() or now >= query.deadline:
                self.queries.remove(query)
                if query.done():
                    reply = query.result()
                else:
                    self.drop_query(query)
                    reply = {"gpus": [], "processes": [], "error": "nvidia-smi failed: no answer "
                             "within %d s on %s" % (GPU_QUERY_TIMEOUT, self.host)}  # fmt: skip
                reply.update(id=query.req_id, ok=True)
                self.send(reply)
        self.stray = [p for p in self.stray if p.poll() is None]
        for when, pgid in list(self.timers):
            if now >= when:
                self.timers.remove((when, pgid))
                with contextlib.suppress(OSError):
                    os.killpg(pgid, signal.SIGKILL)

    def drop_query(self, query: GpuQuery) -> None:
        for fd, (f, _) in list(query.files.items()):
            self.sel.unregister(fd)
            f.close()
        query.files.clear()
        for proc in query.procs:
            if proc.poll() is None:
                proc.kill()  # a hung driver may keep it unkillable: reap later, never block
                self.stray.append(proc)

    def timeout(self) -> Optional[float]:
        now = time.monotonic()
        ends = [q.deadline for q in self.queries] + [w for w, _ in self.timers]
        if self.adopted:
            ends.append(self.next_poll)
        if self.stray:
            ends.append(now + 1.0)
        return max(0.0, min(ends) - now) if ends else None

    def serve(self) -> None:
        """Print hello, then serve requests until stdin ends; started tasks keep running."""
        self.umask = os.umask(0o077)
        os.makedirs(self.runs, 0o700, exist_ok=True)
        wake = _wakeup_pipe()
        signal.signal(signal.SIGCHLD, _noop)
        try:
            self.sel.register(0, selectors.EVENT_READ, "stdin")
        except (OSError, ValueError):
            # epoll refuses regular files and /dev/null; select() takes them.
            self.sel.close()
            self.sel = selectors.SelectSelector()
            self.sel.register(0, selectors.EVENT_READ, "stdin")
        self.sel.register(wake, selectors.EVENT_READ, "wake")
        self.send({"event": "hello", "version": PROTOCOL_VERSION,
                   "python": platform.python_version(), "hostname": self.host,
                   "boot_id": self.boot_id, "pid": os.getpid(),
                   "user": user_name(os.geteuid()), "state_dir": self.state_dir})  # fmt: skip
        while self.running:
            for key, _ in self.sel.select(self.timeout()):
                if key.data == "stdin":
                    self.on_stdin()
                elif key.data == "wake":
                    _drain(wake)
                else:
                    self.on_query(key.data, key.fd)
            self.service()
        for query in self.queries:
            self.drop_query(query)


def _run_id(value: Any) -> str:
    if not isinstance(value, str) or not _RUN_ID.fullmatch(value) or value in (".", ".."):
        raise BadRequest("bad run_id %r: use 1-128 of A-Z a-z 0-9 . _ -" % (value,))
    return value


def _run_ids(value: Any) -> List[str]:
    if not isinstance(value, list):
        raise BadRequest("runs must be a list of run ids")
    return [_run_id(v) for v in value]


def _number_param(req: Dict[str, Any], key: str, default: float) -> float:
    value = req.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise BadRequest("%s must be a number, got %r" % (key, value))
    if value < 0:
        raise BadRequest("%s must not be negative, got %r" % (key, value))
    return value


def _spec(spec: Any) -> Dict[str, Any]:
    """Validate a launch spec; return it with defaults filled in."""
    if not isinstance(spec, dict):
        raise BadRequest("spec must be a JSON object")
    command = spec.get("command")
    if not isinstance(command, str) or not command.strip():
        raise BadRequest("spec.command must be non-empty shell text")
    for key in ("setup", "workdir"):
        if spec.get(key) is not None and not isinstance(spec.get(key), str):
            raise BadRequest("spec.%s must be a string or null" % key)
    env = spec.get("env") or {}
    if not isinstance(env, dict):
        raise BadRequest("spec.env must be an object of strings")
    for k, v in env.items():
        if not (isinstance(v, str) and k and "=" not in k and "\0" not in k + v):
            raise BadRequest("spec.env[%r] must be a string without NUL (names without =)" % k)
    timeout = spec.get("timeout")
    if timeout is not None:
        timeout = _number_param(spec, "timeout", 0)
    task_id = spec.get("task_id")
    if task_id is not None and (isinstance(task_id, bool) or not isinstance(task_id, int)):
        raise BadRequest("spec.task_id must be an integer")
    return {"command": command, "setup": spec.get("setup") or None,
            "workdir": spec.get("workdir"), "env": env, "timeout": timeout,
            "kill_grace": _number_param(spec, "kill_grace", DEFAULT_GRACE),
            "task_id": task_id}  # fmt: skip


def main(state_dir: str) -> None:
    """Entry point used by the bootstrap (and by ``python3 helper.py STATE_DIR``)."""
    Helper(state_dir).serve()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "~/.labtasker")
