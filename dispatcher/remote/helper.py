"""labtasker's helper: runs on a lab server, shipped and started by ``protocol.BOOTSTRAP``.

Stdlib only, Python 3.8+, Linux (/proc), one file, shipped and hash-checked as one. Its sections,
in the order a request flows: the request loop (``main``, ``Helper``: one method per op); requests
checked; launch (``Fence``: may this helper still launch; ``Spares``: the run dir published whole);
the keeper (``Keeper``: starts every task, enforces timeouts and cancels, records exits); GPUs
(``GpuQuery``); files and processes (the small tools every section uses).

It owns STATE_DIR/runs/<run_id>/ (supervisor.json, started.json, exit.reserve, exit.json,
output.log, result.json, cancel.json, and cmd.sh for a script too long for an argument; dirs 0700,
files 0600), STATE_DIR/spare/ (ended run dirs that new runs reuse, see Spares) and STATE_DIR/fence/
(one generation per queue and host, see Fence), STATE_DIR/store/ and STATE_DIR/cwd/ (shipped
project snapshots and the runs' working directories, see Store), STATE_DIR/slurm/ (on a SLURM
cluster's login node: each job array's script, run list and job id, see Slurm), and answers one
JSON request
per stdin line with one JSON reply line on stdout.
Tasks run under the helper's *keeper*: one process forked at the first launch, in a session of its
own, that starts every task, enforces timeouts and cancels and records exits (see Keeper). Tasks
and keeper outlive the helper and its connection; a fork per task would cost more than the task.

Ops (request params -> reply fields; every reply also has "id" and "ok"):
  ping    {} -> {}
  gpus    {} -> {"gpus": [{index, uuid, name, memory_used_mib, memory_total_mib, utilization}],
          "processes": [{gpu_uuid, pid, user, used_memory_mib, name, run_id}], "error": null |
          text}. Values nvidia-smi reports as [N/A] are null; "No devices were found" gives no
          GPUs. run_id: the LABTASKER_RUN_ID in the process's environment, where readable.
  launch  {"run_id", "spec": {command, setup, workdir, env, timeout, kill_grace, task_id}}
          -> {"status": "started", "pid": keeper pid} | {"status": "exists", "run": REPORT}.
          The run dir is published with one rename (Spares), so one run_id never starts
          two processes; a helper superseded by a newer one of its queue (Fence) refuses
          every launch and then exits.
          The task sees LABTASKER_RESULT (write a JSON object there), LABTASKER_RUN_ID,
          LABTASKER_RUN_DIR and LABTASKER_TASK_ID, and the umask the helper was started with.
  launches {"runs": [{"run_id", "spec"}]} -> {"runs": {run_id: launch's reply |
          {"status": "error", "error": text, "snapshot_missing": true when the spec's
          snapshot is not on the host}}}: many launches in one request.
  probe   {"runs": [run_id]} -> {"runs": {run_id: REPORT}}; starting/running ones are watched.
  kill    {"run_id", "grace": s, "stray": bool} -> {"status": "signalled" | "absent" | "exited"}
          (stray: a run of an attempt the controller gave up on, not a user's cancel)
  read    {"run_id", "offset", "size" <= 1 MiB} -> {"data": base64, "size": log size now}
  tail    {"runs": [run_id], "bytes": n} -> {"lines": {run_id: last non-empty line | null}}
  cleanup {"runs": [run_id]} -> {"removed": n, "refused": [run_id still starting/running]}
  check   {"workdir": str | null} -> {"python", "workdir", "workdir_writable", "workdir_error",
          "state_dir_writable", "disk_free_bytes"}
  snapshot {"snapshot": sha256} -> {"store": id, "complete": true} once STATE_DIR/store/
          snapshots/<sha256> is there (materialised now if every blob is), else {"store": id,
          "complete": false, "missing": [the sha256 of up to 20000 blobs it lacks; the
          manifest, itself a blob, is asked first]}. id: the store's (see Store). With a
          payload (PAYLOAD_MARK): the manifest's bytes (zlib), stored first.
  put     PAYLOAD_MARK line {"blobs": [[sha256, offset, size, last, "z"|"raw"]]}, then the
          pieces' bytes -> {"stored": n}: pieces of blobs, each ``size`` bytes of the payload
          in turn (zlib data, or "raw"), appended in order; the last one checks the hash and
          publishes the blob. With "snapshot": sha256, the reply also has snapshot's fields.
  gc      {"queue": key, "needed": [sha256], "keep": s, "grace": s} -> {"runs", "snapshots",
          "blobs", "bytes"}: removes what no queue needs (see Store.gc).
A launch spec's "slurm" ({"sbatch": [long options], "poll": s, "time_limit": s | null, "gate":
[{"kind", "task", "run", "last"}]}) submits the run to SLURM in a job array instead (launch's
reply then has "job_id"); REPORTs of such runs add job_id, job_state and job_reason (squeue's).
A run submitted ahead of its dependencies ("gate": their runs, SLURM holding it back with
--dependency) that labtasker's rule then holds back never starts: its REPORT has "withdrawn"
(why), a failed sbatch of it a launch reply with "withdrawn": true. See Slurm.
A launch spec's "snapshot" (a sha256, present on the host) runs the task in STATE_DIR/cwd/
<run_id>/, a directory of symlinks to the snapshot's top-level entries (see Store).
A bad request gets {"ok": false, "error": text}; an unparsable line gets "id": null.

REPORT: {run_id, state: absent|starting|running|exited|lost, pid, started_at, finished_at,
exit_code (-N for signal N), signal, timed_out, cancelled, error, result, result_error, log_size,
log (base64, only when exited and log_size <= 64 KiB), boot_id, inline_omitted; when exited with
a non-zero status also log_tail (its last 4 KiB of output as text) and oom_killed (whether the
kernel's OOM killer killed a process of its cgroup while it ran; null where unknown)}.
inline_omitted is
true when log/result were left out to keep the reply under 1 MiB: probe that run alone or read it.
"starting": no started.json yet and the keeper named in supervisor.json (written at publish) lives
(a run dir without one, from an older helper: while under 60 s old); "lost": no exit.json and the
run's supervisor (the keeper named in started.json or supervisor.json) is gone, its pid reused, or
the host rebooted. Event {"event": "exit", "run": REPORT}: a watched run ended.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import hashlib
import json
import math
import os
import platform
import pwd
import re
import select
import selectors
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import zlib
from datetime import datetime, timezone
from typing import Any, Dict, List, Optional, Tuple

#: Must equal dispatcher.remote.protocol.PROTOCOL_VERSION (a unit test checks).
PROTOCOL_VERSION = 7
INLINE_LOG_LIMIT = 64 * 1024
#: Bytes of a failed run's output end sent with its report (what classifies the failure).
LOG_TAIL = 4096
#: Bounds one reply's inline logs and results, so a probe of many runs stays a sane line.
REPLY_INLINE_BUDGET = 1024 * 1024
RESULT_LIMIT = 256 * 1024
#: A result nested deeper is refused by the controller (wire.MAX_RESULT_DEPTH; a test holds
#: the two equal): a run whose result is refused did not succeed.
RESULT_DEPTH = 64
READ_LIMIT = 1024 * 1024
MAX_REQUEST = 4 * 1024 * 1024
#: Starts a request line followed by binary bytes: ``#payload N {json}\n`` then N bytes.
PAYLOAD_MARK = b"#payload "
GPU_QUERY_TIMEOUT = 15.0
ADOPTED_POLL_S = 0.5
LOST_AFTER_S = 60.0
DEFAULT_GRACE = 10.0
#: Held by each run until its end, then freed for exit.json: a task filling the disk must not
#: leave its run without an exit record.
RESERVE_BYTES = 16 * 1024
#: Longer task scripts go to cmd.sh: Linux caps one exec argument at 128 KiB.
SCRIPT_ARG_LIMIT = 64 * 1024
#: Less free space than this after a failed run means the disk was (or is) full.
NEARLY_FULL = 64 * 1024
#: Ended run dirs kept in STATE_DIR/spare for new runs (see Spares). Making and removing four
#: inodes per run costs more than a short task: ext4 without a journal scans every inode freed
#: in the last 30 s for each one it makes.
SPARE_MAX = 256
#: How a spare's files are reset: renamed to what a run dir is published with.
_SPARE_RESET = {"exit.json": "exit.reserve", "started.json": "started.json.tmp"}
#: Names the keeper of a run before its start is recorded; rewritten by every publish.
SUPERVISOR = "supervisor.json"
OPS = ("ping", "gpus", "launch", "launches", "probe", "kill", "read", "tail", "cleanup", "check",
       "snapshot", "put", "gc")  # fmt: skip
#: A ``put`` of at most this many pieces fsyncs and publishes each blob it completes; a larger
#: one's blobs are written back in the background and fsynced together later (see Store.put).
FSYNC_MAX = 16
#: Working directories of ended runs kept for reuse (see Store.recycle_workdir), at most.
IDLE_MAX = 256
#: Checked blobs (bytes) a helper holds back before it fsyncs and publishes them together; a
#: transfer cut before that sends them again.
FLUSH_BYTES = 32 * 1024 * 1024
#: Blob names a ``snapshot`` reply lists at most (the controller asks again after sending).
MISSING_LIMIT = 20000
_SHA256 = re.compile(r"[0-9a-f]{64}")
_STORE_ID = re.compile(r"[0-9a-f]{32}")
_RUN_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
_FENCE_KEY = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")
_QUERIES = (
    "--query-gpu=index,uuid,name,memory.used,memory.total,utilization.gpu",
    "--query-compute-apps=gpu_uuid,pid,used_memory,process_name",
)
_LIVE = ("starting", "running")
#: A command with any of these needs a shell (quoting, expansion, redirection, lists, comments).
_SHELL_SYNTAX = re.compile(r"[\n\r;&|<>(){}$`\\\"'*?\[\]~!#^]")
#: First words that are shell keywords or builtins that act on the shell itself.
_SHELL_WORDS = frozenset(
    [
        ".",
        ":",
        "alias",
        "bg",
        "bind",
        "break",
        "builtin",
        "caller",
        "case",
        "cd",
        "command",
        "compgen",
        "complete",
        "compopt",
        "continue",
        "coproc",
        "declare",
        "dirs",
        "disown",
        "do",
        "done",
        "elif",
        "else",
        "enable",
        "esac",
        "eval",
        "exec",
        "exit",
        "export",
        "fc",
        "fg",
        "fi",
        "for",
        "function",
        "getopts",
        "hash",
        "help",
        "history",
        "if",
        "in",
        "jobs",
        "let",
        "local",
        "logout",
        "mapfile",
        "popd",
        "pushd",
        "read",
        "readarray",
        "readonly",
        "return",
        "select",
        "set",
        "shift",
        "shopt",
        "source",
        "suspend",
        "then",
        "time",
        "times",
        "trap",
        "type",
        "typeset",
        "ulimit",
        "umask",
        "unalias",
        "unset",
        "until",
        "wait",
        "while",
    ]
)


class BadRequest(Exception):
    """A request the helper refuses; its text is the reply's error."""


# ------------------------------------------------------------------------------------------------
# The request loop: one JSON request per stdin line, one reply line each (ops in OPS order)
# ------------------------------------------------------------------------------------------------


def main(state_dir: str, fence_key: Optional[str] = None) -> None:
    """Entry point used by the bootstrap (and by ``python3 helper.py STATE_DIR [FENCE_KEY]``)."""
    Helper(state_dir, fence_key or None).serve()


class Helper:
    """The request loop: one thread, one selector over stdin, the wakeup pipe and query pipes."""

    def __init__(self, state_dir: str, fence_key: Optional[str] = None) -> None:
        self.state_dir = os.path.abspath(os.path.expanduser(state_dir))
        if fence_key is not None and not _FENCE_KEY.fullmatch(fence_key):
            raise SystemExit("labtasker: bad fence key %r" % fence_key)
        self.fence_key = fence_key
        self.fence: Optional[Fence] = None  # taken in serve(), before the hello
        self.runs = os.path.join(self.state_dir, "runs")
        self.boot_id, self.host = read_boot_id(), socket.gethostname()
        self.keeper = 0  # pid of the keeper this helper forked (0: none yet, or it ended)
        self.keeper_start: Optional[int] = None
        self.keeper_cmd = self.keeper_note = -1  # the pipes to and from it
        self.keeper_runs: Dict[str, None] = {}  # given to the keeper, not yet reported ended
        self.notebuf = b""
        self.zombies: List[int] = []  # keepers replaced before they were reaped
        self.adopted: Dict[str, None] = {}  # other live runs: polled every ADOPTED_POLL_S
        self.next_poll = 0.0
        self.queries: List[GpuQuery] = []
        self.inbuf, self.discarding, self.running = bytearray(), False, True
        self.scanned = 0  # bytes of inbuf known to hold no newline
        self.waiting: Optional[Tuple[Optional[bytes], int]] = None  # a line, its payload size
        self.out: List[bytes] = []  # lines for stdout, written by flush()
        self.umask = 0o022
        self.sel: selectors.BaseSelector = selectors.DefaultSelector()
        self.spares = Spares(self.state_dir, self.host)
        self.store = Store(self.state_dir)
        self.slurm = Slurm(self)

    def run_dir(self, run_id: str) -> str:
        return os.path.join(self.runs, run_id)

    def live_state(self, run_id: str, started: Optional[Dict[str, Any]]) -> Tuple[str, Any]:
        """For a run without exit.json: (starting | running | lost, why it is lost)."""
        info = started or read_json(os.path.join(self.run_dir(run_id), "supervisor.json"))[0]
        sup = self.slurm_run(run_id, info)
        if sup is not None:
            state, why, record = self.slurm.live_state(run_id, sup)
            d = self.run_dir(run_id)
            if state == "lost" and not os.path.exists(os.path.join(d, "exit.json")):
                with contextlib.suppress(OSError):  # a record arriving after it is not trusted
                    write_file(os.path.join(d, "lost.json"), {"why": why})  # (run_outcome)
            if record:  # SLURM ended it before its wrapper could record why: recorded now
                record.update(started_at=(started or {}).get("started_at"),
                              finished_at=utc_now())  # fmt: skip
                with contextlib.suppress(OSError):
                    write_file(os.path.join(self.run_dir(run_id), "exit.json"), record, sync=True)
            return state, why
        if info is not None:
            if info.get("boot_id") and self.boot_id and info["boot_id"] != self.boot_id:
                return "lost", "%s rebooted since the run started" % self.host
            pid = info.get("supervisor_pid", info.get("pid"))
            if process_matches(pid, info.get("proc_start")):
                return ("running" if started else "starting"), None
            why = "its supervisor (pid %s) on %s ended without recording an exit" % (pid, self.host)
            full = disk_full(self.run_dir(run_id), self.host)
            return "lost", "%s; %s" % (why, full) if full else why
        if run_id in self.keeper_runs and process_matches(self.keeper, self.keeper_start):
            return "starting", None
        with contextlib.suppress(OSError):
            if time.time() - os.stat(self.run_dir(run_id)).st_mtime < LOST_AFTER_S:
                return "starting", None
        return "lost", "no supervisor started within %d s on %s" % (LOST_AFTER_S, self.host)

    def slurm_run(self, run_id: str, info: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
        """The supervisor.json of a run submitted to SLURM (``info``: its started.json or
        supervisor.json); None for a run of this host's keeper."""
        if not info or not ("slurm" in info or "slurm_job" in info):
            return None
        if "slurm" in info:
            return info
        return read_json(os.path.join(self.run_dir(run_id), SUPERVISOR))[0] or {}

    def report(self, run_id: str, budget: List[int]) -> Dict[str, Any]:
        """The REPORT of one run (module docstring); budget[0]: inline bytes still allowed."""
        rep: Dict[str, Any] = dict.fromkeys(("pid", "started_at", "finished_at", "exit_code",
                                             "signal", "error", "result", "result_error", "log",
                                             "boot_id"))  # fmt: skip
        rep.update(run_id=run_id, state="absent", timed_out=False, cancelled=False, log_size=0)
        rep["inline_omitted"] = False
        d = self.run_dir(run_id)
        if not os.path.isdir(d):
            return rep
        started, started_err = read_json(os.path.join(d, "started.json"))
        for key in ("pid", "started_at", "boot_id"):
            rep[key] = (started or {}).get(key)
        exit_info, exit_err = read_json(os.path.join(d, "exit.json"))
        if exit_info is None and exit_err is None:
            rep["state"], rep["error"] = self.live_state(run_id, started)
            if rep["state"] in ("lost", "exited"):  # it may have finished between two looks
                exit_info, exit_err = read_json(os.path.join(d, "exit.json"))
        elif exit_info and (exit_info.get("cancelled") or exit_info.get("terminated")) and \
                not os.path.exists(os.path.join(d, "cancel.json")):  # fmt: skip
            # Terminated, and not by us: a SLURM job's wrapper got SIGTERM. SLURM says why.
            sup = self.slurm_run(run_id, started or read_json(os.path.join(d, SUPERVISOR))[0])
            if sup is not None:
                rep["state"], rep["error"] = self.slurm.refine(run_id, exit_info)
                if rep["state"] != "exited":
                    rep.update(self.slurm.describe(run_id))
                    return rep
                with contextlib.suppress(OSError):
                    write_file(os.path.join(d, "exit.json"), exit_info, sync=True)
        if (started or {}).get("slurm_job") or rep["state"] in _LIVE:
            rep.update(self.slurm.describe(run_id))
        rep["log_size"] = size = file_size(os.path.join(d, "output.log"))
        if exit_info is None:
            if rep["state"] not in _LIVE:
                rep["state"], rep["error"] = "lost", exit_err or rep["error"] or started_err
            return rep
        rep.update((k, exit_info.get(k, rep[k])) for k in ("exit_code", "signal", "error"))
        rep.update((k, exit_info.get(k) or rep[k]) for k in ("started_at", "finished_at"))
        if exit_info.get("withdrawn"):  # a SLURM run held back by its dependencies: never ran
            return dict(rep, state="exited", withdrawn=str(exit_info["withdrawn"])[:500])
        rep.update(state="exited", timed_out=bool(exit_info.get("timed_out")),
                   cancelled=bool(exit_info.get("cancelled")))  # fmt: skip
        if rep["exit_code"] != 0:  # why it failed: its last output, and any OOM kill record
            rep["log_tail"] = log_tail(os.path.join(d, "output.log"), size)
            before = (started or {}).get("oom_kills")
            now = oom_kills((started or {}).get("cgroup"))
            rep["oom_killed"] = None if before is None or now is None else now > before
        rsize = file_size(os.path.join(d, "result.json"))
        if rsize > RESULT_LIMIT:
            rep["result_error"] = "result.json is %d bytes; the limit is %d" % (rsize, RESULT_LIMIT)
        elif rsize * 2 > budget[0]:  # * 2: JSON's ASCII escapes can grow it on the wire
            rep["inline_omitted"] = True
        else:
            budget[0] -= rsize * 2
            rep["result"], rep["result_error"] = read_json(os.path.join(d, "result.json"))
        if size <= INLINE_LOG_LIMIT and (size + 2) // 3 * 4 > budget[0]:
            rep["inline_omitted"] = True
        elif size <= INLINE_LOG_LIMIT:
            budget[0] -= (size + 2) // 3 * 4
            with contextlib.suppress(OSError), open(os.path.join(d, "output.log"), "rb") as f:
                rep["log"] = base64.b64encode(f.read(size)).decode("ascii")
        return rep

    def orphan_group(self, run_id: str) -> Optional[int]:
        """The task's process group if it lives on without its supervisor (should not happen)."""
        info = read_json(os.path.join(self.run_dir(run_id), "started.json"))[0] or {}
        pgid = info.get("pgid")
        if not (isinstance(pgid, int) and pgid > 1) or info.get("boot_id") != self.boot_id:
            return None
        leader = proc_stat(pgid)
        if leader is not None and leader[2] != info.get("task_start"):
            return None  # that number now belongs to another process: never ours to kill
        return pgid if group_alive(pgid) else None

    def op_ping(self, req: Dict[str, Any]) -> Dict[str, Any]:
        return {}

    def op_gpus(self, req: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        exe = shutil.which("nvidia-smi")
        if exe is None:
            return {"gpus": [], "processes": [], "error": "nvidia-smi not found on PATH"}
        try:
            query = GpuQuery(req.get("id"), exe)
        except OSError as exc:
            return {"gpus": [], "processes": [], "error": "nvidia-smi failed: %s" % exc}
        for fd in query.open:
            self.sel.register(fd, selectors.EVENT_READ, query)
        self.queries.append(query)
        return None  # answered by service() when both processes are done

    def op_launch(self, req: Dict[str, Any]) -> Dict[str, Any]:
        return self.launch(_run_id(req.get("run_id")), req.get("spec"))

    def op_launches(self, req: Dict[str, Any]) -> Dict[str, Any]:
        items = req.get("runs")
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise BadRequest("runs must be a list of {run_id, spec} objects")
        ids = [_run_id(i.get("run_id")) for i in items]
        out: Dict[str, Any] = {}
        jobs = [(ids[n], i.get("spec")) for n, i in enumerate(items)
                if isinstance(i.get("spec"), dict) and "slurm" in i["spec"]]  # fmt: skip
        if jobs:  # to a SLURM cluster: job arrays (see Slurm)
            out.update(self.slurm.submit(jobs))
        for n, run_id in enumerate(ids):
            if run_id in out:
                continue
            try:
                out[run_id] = self.launch(run_id, items[n].get("spec"))
            except Exception as exc:  # this run only: the ones before it have started
                why = str(exc) if isinstance(exc, BadRequest) else "%s: %s" % (
                    type(exc).__name__, exc)  # fmt: skip
                out[run_id] = {"status": "error", "error": why}
                if isinstance(exc, SnapshotMissing):  # removed by a clean-up: send it again
                    out[run_id]["snapshot_missing"] = True
        return {"runs": out}

    def supervisor(self) -> bytes:
        """SUPERVISOR's content: the keeper that will start a run, so that a run cut short
        before its start was recorded is known lost as soon as that keeper is gone."""
        return json.dumps({"supervisor_pid": self.keeper, "proc_start": self.keeper_start,
                           "boot_id": self.boot_id, "keeper": True}).encode()  # fmt: skip

    def launch(self, run_id: str, raw_spec: Any) -> Dict[str, Any]:
        spec = _spec(raw_spec)
        if spec["snapshot"]:
            try:
                with self.store.locked():
                    spec["workdir"] = self.store.workdir(run_id, spec["snapshot"])
            except OSError as exc:
                raise BadRequest("cannot make the working directory of run %s on %s: %s"
                                 % (run_id, self.host, exc)) from None  # fmt: skip
        d = self.run_dir(run_id)
        os.makedirs(self.runs, 0o700, exist_ok=True)
        error: Optional[OSError] = None
        try:
            self.start_keeper()
            keeper = self.keeper
            with self.fence.held(self.host) if self.fence else contextlib.nullcontext():
                made = self.spares.publish(d, self.supervisor())  # atomic: one launch makes it
        except Superseded:
            self.running = False  # its controller has moved on: serve nobody any more
            raise
        except OSError as exc:
            raise BadRequest("cannot make run dir %s on %s: %s" % (d, self.host, exc)) from None
        if not made:
            return {"status": "exists", "run": self.report(run_id, [REPLY_INLINE_BUDGET])}
        line = (json.dumps({"run_id": run_id, "spec": spec}) + "\n").encode()
        for _ in range(2):  # a keeper that died is replaced once
            try:
                self.start_keeper()
                if self.keeper != keeper:  # replaced: name the one that will start the run
                    keeper = self.keeper
                    write_file(os.path.join(d, SUPERVISOR), self.supervisor())
                write_all(self.keeper_cmd, line)
                break
            except OSError as exc:
                self.keeper_gone()
                error = exc
        else:
            shutil.rmtree(d, ignore_errors=True)  # nothing started: a retry may reuse the id
            msg = "cannot launch run %s in %s on %s: %s" % (run_id, d, self.host, error)
            raise BadRequest(msg) from None
        self.keeper_runs[run_id] = None
        self.adopted.pop(run_id, None)
        return {"status": "started", "pid": self.keeper}

    def start_keeper(self) -> None:
        """Fork the keeper (see Keeper) unless this helper's one still runs."""
        if self.keeper_cmd >= 0:
            return
        cmd_r, cmd_w = os.pipe()
        note_r, note_w = os.pipe()
        # Blocked until the keeper has its handlers, so an early cancel is never lost.
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGUSR1})
        try:
            pid = os.fork()
            if pid == 0:
                run_keeper(self, cmd_r, note_w)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
            os.close(cmd_r)
            os.close(note_w)
        st = proc_stat(pid)
        if self.keeper:
            self.zombies.append(self.keeper)
        self.keeper, self.keeper_start = pid, st[2] if st else None
        self.keeper_cmd, self.keeper_note, self.notebuf = cmd_w, note_r, b""
        self.sel.register(note_r, selectors.EVENT_READ, "keeper")

    def on_note(self) -> None:
        """Run ids the keeper finished: send their exit events. EOF: the keeper is gone."""
        try:
            data = os.read(self.keeper_note, 65536)
        except OSError:
            data = b""
        lines = (self.notebuf + data).split(b"\n")
        self.notebuf = lines.pop()
        for line in lines:
            run_id = line.decode("ascii", "replace")
            if run_id in self.keeper_runs:
                del self.keeper_runs[run_id]
                self.send({"event": "exit", "run": self.report(run_id, [REPLY_INLINE_BUDGET])})
        if not data:
            self.keeper_gone()

    def keeper_gone(self) -> None:
        """Stop talking to the keeper; its runs still live are watched like adopted ones."""
        if self.keeper_note >= 0:
            self.sel.unregister(self.keeper_note)
            os.close(self.keeper_note)
        if self.keeper_cmd >= 0:
            os.close(self.keeper_cmd)
        self.keeper_cmd = self.keeper_note = -1
        for run_id in list(self.keeper_runs):
            rep = self.report(run_id, [REPLY_INLINE_BUDGET])
            if rep["state"] in _LIVE:
                self.adopted[run_id] = None
            else:
                self.send({"event": "exit", "run": rep})
        self.keeper_runs.clear()

    def op_probe(self, req: Dict[str, Any]) -> Dict[str, Any]:
        budget, reports = [REPLY_INLINE_BUDGET], {}
        for run_id in _run_ids(req.get("runs")):
            reports[run_id] = rep = self.report(run_id, budget)
            if rep["state"] in _LIVE and run_id not in self.keeper_runs:
                self.adopted[run_id] = None
        return {"runs": reports}

    def op_kill(self, req: Dict[str, Any]) -> Dict[str, Any]:
        run_id, grace = _run_id(req.get("run_id")), _number(req, "grace", DEFAULT_GRACE)
        d = self.run_dir(run_id)
        if not os.path.isdir(d):
            return {"status": "absent"}
        if os.path.exists(os.path.join(d, "exit.json")):
            return {"status": "exited"}
        again = os.path.exists(os.path.join(d, "cancel.json"))
        with contextlib.suppress(OSError):  # without it the supervisor uses spec.kill_grace
            stray = req.get("stray") is True  # a run of an attempt given up on, not a cancel
            write_file(os.path.join(d, "cancel.json"), {"grace": grace, "stray": stray})
        started = read_json(os.path.join(d, "started.json"))[0]
        info = started or read_json(os.path.join(d, "supervisor.json"))[0] or {}
        if self.slurm_run(run_id, info) is not None:
            return {"status": self.slurm.kill(run_id, started is not None, again)}
        sups: List[Tuple[Any, Any, Any]] = []
        if started is None and run_id in self.keeper_runs:
            sups.append((self.keeper, self.keeper_start, signal.SIGUSR1))
        # A keeper looks for cancel.json on SIGUSR1; a run of an older helper has a supervisor
        # of its own, which cancels on SIGTERM.
        sig = signal.SIGUSR1 if info.get("keeper") else signal.SIGTERM
        sups.append((info.get("supervisor_pid", info.get("pid")), info.get("proc_start"), sig))
        for pid, proc_start, sig in sups:
            if process_matches(pid, proc_start):
                os.kill(pid, sig)  # the keeper does TERM, grace, KILL, and records the exit
                return {"status": "signalled"}
        pgid = self.orphan_group(run_id)
        if pgid is not None:
            os.killpg(pgid, signal.SIGKILL)  # orphaned by a dead supervisor: nobody to wait
            return {"status": "signalled"}
        return {"status": "exited"}

    def op_read(self, req: Dict[str, Any]) -> Dict[str, Any]:
        run_id, offset = _run_id(req.get("run_id")), int(_number(req, "offset", 0))
        size = int(_number(req, "size", READ_LIMIT))
        if size > READ_LIMIT:
            raise BadRequest("read size %d is over the %d byte limit" % (size, READ_LIMIT))
        if not os.path.isdir(self.run_dir(run_id)):
            raise BadRequest("no run %s in %s on %s" % (run_id, self.runs, self.host))
        total, data = 0, b""
        log = os.path.join(self.run_dir(run_id), "output.log")
        with contextlib.suppress(FileNotFoundError), open(log, "rb") as f:
            total = os.fstat(f.fileno()).st_size
            f.seek(offset)
            data = f.read(size)
        return {"data": base64.b64encode(data).decode("ascii"), "size": total}

    def op_tail(self, req: Dict[str, Any]) -> Dict[str, Any]:
        want = min(int(_number(req, "bytes", 4096)), READ_LIMIT)
        lines: Dict[str, Optional[str]] = {}
        for run_id in _run_ids(req.get("runs")):
            lines[run_id] = None
            with contextlib.suppress(OSError):
                with open(os.path.join(self.run_dir(run_id), "output.log"), "rb") as f:
                    f.seek(max(0, os.fstat(f.fileno()).st_size - want))
                    chunk = f.read(want).decode("utf-8", "replace")
                # Progress bars redraw with \r: the last segment is what a terminal shows.
                parts = [p.strip() for p in re.split(r"[\r\n]", chunk) if p.strip()]
                lines[run_id] = parts[-1] if parts else None
        return {"lines": lines}

    def op_cleanup(self, req: Dict[str, Any]) -> Dict[str, Any]:
        removed, refused = 0, []
        for run_id in _run_ids(req.get("runs")):
            d = self.run_dir(run_id)
            # exit.json: ended and recorded (the usual case; no full report needed).
            ended = os.path.exists(os.path.join(d, "exit.json"))
            state = "exited" if ended else self.report(run_id, [0])["state"]
            if state in _LIVE or (state == "lost" and self.orphan_group(run_id)):
                refused.append(run_id)
            elif state != "absent":
                self.slurm.keep_outcome(run_id)
                if not self.spares.recycle(d):
                    remove_tree(d)
                self.adopted.pop(run_id, None)
                removed += 1
                self.store.recycle_workdir(run_id)  # a shipped run's, if it made nothing
        return {"removed": removed, "refused": refused}

    def op_snapshot(self, req: Dict[str, Any]) -> Dict[str, Any]:
        sha = req.get("snapshot")
        if not isinstance(sha, str) or not _sha(sha):
            raise BadRequest("snapshot must be a sha256 (64 hex digits)")
        manifest = req.get("payload")  # its manifest's bytes (zlib), when sent along
        with self.store.locked():
            if manifest is not None and not os.path.exists(self.store.blob(sha)):
                self.store.put([[sha, 0, len(manifest), True, "z"]], manifest)
            return dict(self.store.materialise(sha), store=self.store.ident())

    def op_put(self, req: Dict[str, Any]) -> Dict[str, Any]:
        sha = req.get("snapshot")  # then answer as op_snapshot does
        if sha is not None and not _sha(sha):
            raise BadRequest("snapshot must be a sha256 (64 hex digits) or absent")
        with self.store.locked():
            stored = self.store.put(req.get("blobs"), req.get("payload"), flush=bool(sha))
            out: Dict[str, Any] = {"stored": stored}
            if sha:
                out.update(self.store.materialise(sha), store=self.store.ident())
            return out

    def op_gc(self, req: Dict[str, Any]) -> Dict[str, Any]:
        queue, needed = req.get("queue"), req.get("needed")
        if not isinstance(queue, str) or not _FENCE_KEY.fullmatch(queue):
            raise BadRequest("queue must be a key of 1-128 of A-Z a-z 0-9 . _ -")
        if not isinstance(needed, list) or not all(_sha(n) for n in needed):
            raise BadRequest("needed must be a list of snapshot ids")
        keep, grace = _number(req, "keep", 7 * 86400.0), _number(req, "grace", 3600.0)
        with self.store.locked(exclusive=True):
            return self.store.gc(queue, needed, keep, grace)

    def op_check(self, req: Dict[str, Any]) -> Dict[str, Any]:
        workdir = req.get("workdir")
        if workdir is not None and not isinstance(workdir, str):
            raise BadRequest("workdir must be a string or null")
        path = parent = expand_dir(workdir)
        while not os.path.lexists(parent):  # check creates nothing: look at what would hold it
            parent = os.path.dirname(parent)
        error = None
        if os.path.lexists(path) and not os.path.isdir(path):
            error = "workdir %s on %s exists and is not a directory" % (path, self.host)
        elif not (os.path.isdir(parent) and os.access(parent, os.W_OK | os.X_OK)):
            error = "workdir %s on %s: %s is not a writable directory for %s" % (
                path, self.host, parent, user_name(os.geteuid()))  # fmt: skip
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

    def send(self, obj: Dict[str, Any]) -> None:
        """Queue one line for the controller; ``flush`` writes them (one write per loop turn:
        the replies and exit events of a round travel in one SSH packet)."""
        self.out.append(json.dumps(obj).encode("ascii"))

    def flush(self) -> None:
        if not self.out:
            return
        data, self.out = b"\n".join(self.out) + b"\n", []
        try:
            write_all(1, data)
        except OSError:
            self.running = False  # the controller is gone

    def handle_line(self, line: bytes, payload: Optional[bytes] = None) -> None:
        """Answer one request line (its ``payload`` bytes once they have arrived, see
        on_stdin); nothing in it can end the helper."""
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
            req["payload"] = payload
            if op not in OPS:
                raise BadRequest("unknown op %r; known ops: %s" % (op, ", ".join(OPS)))
            result = getattr(self, "op_" + op)(req)
            if result is None:
                return
            reply: Dict[str, Any] = dict(id=req_id, ok=True, **result)
        except BadRequest as exc:
            reply = {"id": req_id, "ok": False, "error": str(exc)}
        except Exception as exc:
            msg = "helper on %s failed on op %r: %s: %s" % (self.host, op, type(exc).__name__, exc)
            reply = {"id": req_id, "ok": False, "error": msg}
        self.send(reply)

    def on_stdin(self) -> None:
        """Read requests: JSON lines; a line that starts with ``PAYLOAD_MARK`` N is followed
        by N bytes (at most MAX_REQUEST) of binary payload, handed to its op with it."""
        try:
            data = os.read(0, 1 << 20)
        except OSError:
            data = b""
        self.running = self.running and bool(data)
        buf = self.inbuf
        buf += data
        while True:
            if self.waiting is not None:  # a line whose payload is still arriving
                line, need = self.waiting
                if line is None:  # a refused payload's bytes: dropped as they come
                    drop = min(need, len(buf))
                    del buf[:drop]
                    self.waiting = (None, need - drop) if need > drop else None
                    if self.waiting is None:
                        continue
                    break
                if len(buf) < need:
                    break
                with memoryview(buf) as view:
                    payload = bytes(view[:need])
                del buf[:need]
                self.waiting = None
                if line is not None:
                    self.handle_line(line, payload)
                continue
            nl = buf.find(b"\n", self.scanned)
            if nl < 0:
                self.scanned = len(buf)
                break
            line, self.scanned = bytes(buf[:nl]), 0
            del buf[: nl + 1]
            if self.discarding:
                self.discarding = False
            elif line.startswith(PAYLOAD_MARK):
                self.expect_payload(line)
            else:
                self.handle_line(line)
        if self.waiting is None and len(buf) > MAX_REQUEST:  # answer once, drop the line's rest
            self.inbuf, self.discarding, self.scanned = bytearray(), True, 0
            self.send({"id": None, "ok": False, "error": "a request over %d bytes" % MAX_REQUEST})

    def expect_payload(self, line: bytes) -> None:
        """``PAYLOAD_MARK`` N, then the request's JSON: wait for its N payload bytes."""
        head, _, rest = line[len(PAYLOAD_MARK):].partition(b" ")  # fmt: skip
        size = int(head) if head.isdigit() and len(head) < 12 else -1
        if 0 <= size <= MAX_REQUEST:
            self.waiting = (rest, size)
            return
        if size > MAX_REQUEST:
            self.waiting = (None, size)  # skip its bytes: the stream stays in step
        self.send({"id": None, "ok": False, "error": "a payload over %d bytes" % MAX_REQUEST})

    def service(self) -> None:
        """Everything that is not a readable fd: ended supervisors, adopted runs, gpu queries."""
        if self.keeper:
            try:
                done = os.waitpid(self.keeper, os.WNOHANG)[0] == self.keeper
            except ChildProcessError:
                done = True
            if done:  # reaped; its note pipe's EOF (on_note) reports what it left
                self.keeper = 0
        for pid in list(self.zombies):
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(pid, os.WNOHANG)[0] == 0:
                    continue
            self.zombies.remove(pid)
        now = time.monotonic()
        if self.adopted and now >= self.next_poll:
            self.next_poll = now + ADOPTED_POLL_S
            for run_id in list(self.adopted):
                rep = self.report(run_id, [REPLY_INLINE_BUDGET])
                if rep["state"] not in _LIVE:
                    del self.adopted[run_id]
                    self.send({"event": "exit", "run": rep})
        for query in list(self.queries):
            finished = query.done()
            if finished or now >= query.deadline:
                self.queries.remove(query)
                self.drop(query)
                reply = query.result() if finished else {"gpus": [], "processes": [],
                         "error": "nvidia-smi failed: no answer within %d s on %s"
                         % (GPU_QUERY_TIMEOUT, self.host)}  # fmt: skip
                self.send(dict(reply, id=query.req_id, ok=True))

    def drop(self, query: GpuQuery) -> None:
        for fd in query.open:
            self.sel.unregister(fd)
        query.open.clear()
        query.close()

    def timeout(self) -> Optional[float]:
        ends = [q.deadline for q in self.queries] + ([self.next_poll] if self.adopted else [])
        return max(0.0, min(ends) - time.monotonic()) if ends else None

    def serve(self) -> None:
        """Print hello, then serve requests until stdin ends; started tasks keep running."""
        self.umask = os.umask(0o077)
        os.makedirs(self.runs, 0o700, exist_ok=True)
        if self.fence_key:
            self.fence = Fence(self.state_dir, self.fence_key)
        wake = _wakeup_pipe()
        signal.signal(signal.SIGCHLD, _noop)
        try:
            self.sel.register(0, selectors.EVENT_READ, "stdin")
        except (OSError, ValueError):  # epoll refuses regular files and /dev/null
            self.sel = selectors.SelectSelector()
            self.sel.register(0, selectors.EVENT_READ, "stdin")
        self.sel.register(wake, selectors.EVENT_READ, "wake")
        self.send({"event": "hello", "version": PROTOCOL_VERSION,
                   "python": platform.python_version(), "hostname": self.host,
                   "boot_id": self.boot_id, "pid": os.getpid(),
                   "user": user_name(os.geteuid()), "state_dir": self.state_dir,
                   "generation": self.fence.generation if self.fence else None})  # fmt: skip
        self.flush()
        while self.running:
            for key, _ in self.sel.select(self.timeout()):
                if key.data == "stdin":
                    self.on_stdin()
                elif key.data == "wake":
                    _drain(wake)
                elif key.data == "keeper":
                    self.on_note()
                elif not key.data.feed(key.fd):  # a gpu query's pipe reached EOF
                    self.sel.unregister(key.fd)
                    del key.data.open[key.fd]
            self.service()
            self.flush()
        for query in self.queries:
            self.drop(query)


# ------------------------------------------------------------------------------------------------
# Requests checked before anything is done
# ------------------------------------------------------------------------------------------------


def _run_id(value: Any) -> str:
    if not isinstance(value, str) or not _RUN_ID.fullmatch(value) or value in (".", ".."):
        raise BadRequest("bad run_id %r: use 1-128 of A-Z a-z 0-9 . _ -" % (value,))
    return value


def _run_ids(value: Any) -> List[str]:
    if not isinstance(value, list):
        raise BadRequest("runs must be a list of run ids")
    return [_run_id(v) for v in value]


def _number(req: Dict[str, Any], key: str, default: float) -> float:
    value = req.get(key, default)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value < 0:
        raise BadRequest("%s must be a finite number >= 0, got %r" % (key, value))
    return float(value)


def _spec(spec: Any) -> Dict[str, Any]:
    """Validate a launch spec; return it with defaults filled in."""
    if not isinstance(spec, dict):
        raise BadRequest("spec must be a JSON object")
    if not isinstance(spec.get("command"), str) or not spec["command"].strip():
        raise BadRequest("spec.command must be non-empty shell text")
    for key in ("setup", "workdir"):
        if not isinstance(spec.get(key), (str, type(None))):
            raise BadRequest("spec.%s must be a string or null" % key)
    for key in ("command", "setup", "workdir"):
        if "\0" in (spec.get(key) or ""):
            raise BadRequest("spec.%s must not contain NUL" % key)
    env = spec.get("env") or {}
    if not isinstance(env, dict) or not all(
        isinstance(v, str) and k and "=" not in k and "\0" not in k + v for k, v in env.items()
    ):
        raise BadRequest("spec.env must map names (no '=', no NUL) to strings (no NUL)")
    task_id = spec.get("task_id")
    if isinstance(task_id, bool) or not isinstance(task_id, (int, type(None))):
        raise BadRequest("spec.task_id must be an integer or null")
    timeout = None if spec.get("timeout") is None else _number(spec, "timeout", 0)
    grace = _number(spec, "kill_grace", DEFAULT_GRACE)
    snapshot = spec.get("snapshot")  # run in a working directory showing this snapshot
    if snapshot is not None and not _sha(snapshot):
        raise BadRequest("spec.snapshot must be a sha256 or null")
    host = spec.get("host")  # the controller's name for this host (hosts.toml), for messages
    if not isinstance(host, (str, type(None))) or "\0" in (host or ""):
        raise BadRequest("spec.host must be a string or null")
    return {"command": spec["command"], "setup": spec.get("setup") or None, "task_id": task_id,
            "workdir": spec.get("workdir"), "env": env, "timeout": timeout,
            "kill_grace": grace, "host": host, "snapshot": snapshot}  # fmt: skip


# ------------------------------------------------------------------------------------------------
# Launch: who may still launch (Fence), and the run dir published whole (Spares)
# ------------------------------------------------------------------------------------------------


class Superseded(BadRequest):
    """A newer helper of the same queue and host started: this one starts nothing any more."""


class Fence:
    """STATE_DIR/fence/<key>: the generation of the newest helper of one queue on one host.

    A helper started with a fence key (dispatch passes one: its queue and this host's name) takes
    the next generation under an exclusive lock. Every launch checks, under a shared lock held
    until its run dir is published, that the generation is still its own. So once a newer helper
    of that queue has started, an older one (a stalled session whose bytes arrive late, after a
    new controller probed and relaunched its runs) starts nothing, however late its request
    comes; and a run published by the old one before that is there for the new one to see.
    """

    def __init__(self, state_dir: str, key: str) -> None:
        folder = os.path.join(state_dir, "fence")
        os.makedirs(folder, 0o700, exist_ok=True)
        self.fd = os.open(os.path.join(folder, key), os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        try:
            self.generation = self.current() + 1
            data = b"%d\n" % self.generation
            os.pwrite(self.fd, data, 0)
            os.ftruncate(self.fd, len(data))
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)

    def current(self) -> int:
        try:
            return int(os.pread(self.fd, 64, 0).split()[0])
        except (OSError, ValueError, IndexError):
            return 0

    @contextlib.contextmanager
    def held(self, host: str) -> Any:
        """The shared lock, while this helper is still the newest; else Superseded."""
        fcntl.flock(self.fd, fcntl.LOCK_SH)
        try:
            now = self.current()
            if now != self.generation:
                raise Superseded(
                    "superseded on %s: a newer helper (generation %d) serves this queue; this one "
                    "(generation %d) starts nothing" % (host, now, self.generation))  # fmt: skip
            yield
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)


def reset_run_dir(path: str) -> None:
    """Turn an ended run's dir into one a new run can be published with (see Spares)."""
    names = os.listdir(path)
    for name in names:
        file = os.path.join(path, name)
        if name in _SPARE_RESET:
            os.rename(file, os.path.join(path, _SPARE_RESET[name]))
        elif name not in _SPARE_RESET.values() and name != SUPERVISOR:
            # output.log too: a process the task left behind may still write to it.
            os.unlink(file)  # a directory raises: that spare is not reused
    if "exit.json" not in names and "exit.reserve" not in names:  # a new dir, most often
        os.close(os.open(os.path.join(path, "exit.reserve"), os.O_WRONLY | os.O_CREAT, 0o600))
    os.utime(path)  # a run dir's age tells "starting" from "lost" until started.json exists


class Spares:
    """STATE_DIR/spare: ended run dirs that new runs reuse, so a run makes no new inodes.

    A run dir is published whole by one rename() and always holds exit.reserve, so it is never
    empty and a rename() onto it fails: claiming a run id stays atomic, as mkdir() was. A spare
    is reset when kept, then renamed to a name of this helper's own (helpers may share a state
    dir) and checked again before it is published.
    """

    def __init__(self, state_dir: str, host: str) -> None:
        self.dir = os.path.join(state_dir, "spare")
        self.names: Optional[List[str]] = None  # None: spare/ not listed yet
        self.tag = "%s-%d-" % (re.sub(r"[^A-Za-z0-9._-]", "_", host), os.getpid())
        self.made = 0

    def _name(self) -> str:
        self.made += 1
        return os.path.join(self.dir, "%s%d" % (self.tag, self.made))

    def _list(self) -> List[str]:
        """Spares on disk, listed once; more than SPARE_MAX, and ".new" ones claimed over 60 s
        ago (by a helper that died publishing them), removed. The cap holds for each helper's
        own list: helpers sharing the state dir may keep more, until the next one lists it."""
        if self.names is None:
            self.names = []
            with contextlib.suppress(OSError):
                os.makedirs(self.dir, 0o700, exist_ok=True)
                now = time.time()
                for name in os.listdir(self.dir):
                    path = os.path.join(self.dir, name)
                    staged = re.search(r"\.(\d+)\.new$", name)  # claimed at that time
                    with contextlib.suppress(OSError):
                        if not staged and len(self.names) < SPARE_MAX:
                            self.names.append(name)
                        elif not staged or now - int(staged.group(1)) > 60:
                            remove_tree(path)  # one too many, or left mid-launch by a crash
        return self.names

    def recycle(self, run_dir: str) -> bool:
        """Move an ended run's dir here and reset it at once (its log and result are on the
        controller by now: a spare holds no disk); False (left in place) when there are enough."""
        names = self._list()
        if len(names) >= SPARE_MAX:
            return False
        path = self._name()
        try:
            os.rename(run_dir, path)
        except OSError:
            return False
        try:
            reset_run_dir(path)
        except OSError:
            shutil.rmtree(path, ignore_errors=True)  # a directory the task made in it, say
            return True
        names.append(os.path.basename(path))
        return True

    def publish(self, run_dir: str, supervisor: bytes) -> bool:
        """Make ``run_dir`` from a spare (or a new dir) holding exit.reserve and ``supervisor``
        (SUPERVISOR: who will start the run); False if it exists."""
        if os.path.lexists(run_dir):
            return False
        names, stage = self._list(), "%s.%d.new" % (self._name(), time.time())
        while names:
            try:
                os.rename(os.path.join(self.dir, names.pop()), stage)  # now ours alone
            except OSError:
                continue  # taken by another helper
            try:
                reset_run_dir(stage)
                break
            except OSError:
                shutil.rmtree(stage, ignore_errors=True)
        else:
            os.makedirs(self.dir, 0o700, exist_ok=True)
            os.mkdir(stage, 0o700)
            try:
                reset_run_dir(stage)
            except OSError:
                shutil.rmtree(stage, ignore_errors=True)
                raise
        try:
            # Written in place: the stage is ours alone until the rename publishes it whole.
            fd = os.open(os.path.join(stage, SUPERVISOR), os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                         0o600)  # fmt: skip
            try:
                write_all(fd, supervisor)
            finally:
                os.close(fd)
            os.rename(stage, run_dir)
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                shutil.rmtree(stage, ignore_errors=True)
                raise
            if not self.recycle(stage):  # launched meanwhile by another helper
                shutil.rmtree(stage, ignore_errors=True)
            return False
        return True


# ------------------------------------------------------------------------------------------------
# The keeper: starts every task, enforces timeouts and cancels, records exits
# ------------------------------------------------------------------------------------------------


class KeptRun:
    """One task under the keeper: its process, deadlines and what finish() records."""

    def __init__(self, run_dir: str, spec: Dict[str, Any]) -> None:
        self.run_dir, self.spec = run_dir, spec
        self.pid = 0
        self.proc: Optional["subprocess.Popen[bytes]"] = None  # only where posix_spawn is not
        self.status: Optional[int] = None  # waitpid status once the task's leader ended
        timeout = spec["timeout"]
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.kill_at: Optional[float] = None
        self.killed = self.cancel_requested = self.cancelled = self.timed_out = False
        self.notes: List[str] = []
        self.started_at = utc_now()

    def path(self, name: str) -> str:
        return os.path.join(self.run_dir, name)

    def grace(self) -> float:
        if self.cancelled:
            info = read_json(self.path("cancel.json"))[0] or {}
            if isinstance(info.get("grace"), (int, float)):
                return max(0.0, float(info["grace"]))
        return float(self.spec["kill_grace"])

    def step(self, now: float) -> Optional[float]:
        """Advance timeout/cancel handling: None when the run is over, else seconds to wait."""
        pid = self.pid
        if self.status is not None and (self.kill_at is None or self.killed or
                                        not group_alive(pid)):  # fmt: skip
            return None
        if self.kill_at is None and (self.cancel_requested or (self.deadline or math.inf) <= now):
            self.cancelled, self.timed_out = self.cancel_requested, not self.cancel_requested
            signal_group(pid, signal.SIGTERM)
            self.kill_at = now + self.grace()
        if self.kill_at is not None and not self.killed and now >= self.kill_at:
            signal_group(pid, signal.SIGKILL)
            self.killed = True
            return 0.0
        waits = [self.deadline - now] if self.kill_at is None and self.deadline else [math.inf]
        waits += [self.kill_at - now] if self.kill_at is not None and not self.killed else []
        waits += [0.05] if self.status is not None else []  # the leader is gone, its group not
        return max(0.0, min(waits))


class Keeper:
    """The forked process that starts and watches every task a helper launches.

    It lives in its own session with stdio on /dev/null, so it and its tasks outlive the helper
    and the SSH connection. It reads launch lines ({"run_id", "spec"}) from the helper's pipe,
    starts each command in a session of its own, enforces timeouts and cancels (TERM the group,
    KILL after the grace), writes exit.json, and tells the helper the run id on its note pipe.
    SIGUSR1: look for cancel.json in its runs; SIGTERM: cancel all of them; SIGHUP and SIGINT
    are ignored. It ends once the helper is gone and its last task is recorded.
    """

    def __init__(self, helper: "Helper", cmd_fd: int, note_fd: int) -> None:
        self.runs_dir, self.boot_id, self.host = helper.runs, helper.boot_id, helper.host
        self.umask, self.cmd, self.note = helper.umask, cmd_fd, note_fd
        self.runs: Dict[int, KeptRun] = {}  # task pid -> run
        self.inbuf, self.outbuf = b"", b""
        self.flags: Dict[int, bool] = {}
        self.me: Dict[str, Any] = {}
        self.wake = -1
        self.terminated = False  # a SIGTERM came (SLURM ending the job): exit.json says so

    def on_signal(self, signum: int, frame: Any) -> None:
        self.flags[signum] = True
        self.terminated = self.terminated or signum == signal.SIGTERM

    def detach(self) -> None:
        """Own session, stdio on /dev/null, no fds but its two pipes: the helper's pipes are
        the SSH channel, and holding them would keep the session open after the helper exits."""
        signal.set_wakeup_fd(-1)
        for num in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(num, self.on_signal)
        for num in (signal.SIGCHLD, signal.SIGHUP, signal.SIGINT):
            signal.signal(num, _noop)  # handlers, not SIG_IGN: exec gives the task defaults
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        for fd in [int(n) for n in os.listdir("/proc/self/fd")]:
            if fd > 2 and fd not in (self.cmd, self.note):
                with contextlib.suppress(OSError):
                    os.close(fd)
        os.set_blocking(self.note, False)
        self.wake = _wakeup_pipe()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGUSR1})
        st = proc_stat(os.getpid())
        self.me = {"supervisor_pid": os.getpid(), "proc_start": st[2] if st else None}

    def serve(self) -> None:
        self.detach()
        self.loop()

    def loop(self) -> None:
        """Serve until the helper is gone (or was never there) and the last run is recorded."""
        while True:
            wait = self.service()
            if self.cmd < 0 and not self.runs:
                break  # the helper is gone and the last run is recorded: nothing is left to do
            rd = [self.wake] + ([self.cmd] if self.cmd >= 0 else [])
            wr = [self.note] if self.outbuf and self.note >= 0 else []
            with contextlib.suppress(InterruptedError):
                ready = select.select(rd, wr, [], wait)
                if self.cmd in ready[0]:
                    self.on_cmd()
                if ready[1]:
                    self.flush()
            _drain(self.wake)
        self.flush()

    def on_cmd(self) -> None:
        data = b""
        with contextlib.suppress(OSError):
            data = os.read(self.cmd, 65536)
        if not data:  # the helper is gone: finish what runs, then leave
            os.close(self.cmd)
            self.cmd = -1
        lines = (self.inbuf + data).split(b"\n")
        self.inbuf = lines.pop()
        for line in lines:
            try:
                req = json.loads(line.decode("utf-8"))
                run_dir, spec = os.path.join(self.runs_dir, req["run_id"]), req["spec"]
            except (ValueError, KeyError, TypeError):
                continue
            try:
                self.start(run_dir, spec)
            except Exception as exc:  # never a run left "starting" without an exit record
                with contextlib.suppress(Exception):
                    self.fail(KeptRun(run_dir, spec), "cannot start the task on %s: %s: %s" % (
                        self.host, type(exc).__name__, exc))  # fmt: skip

    def service(self) -> Optional[float]:
        """Reap ended tasks, apply signals, step every run; the seconds until the next step."""
        while self.runs:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            if pid in self.runs:
                self.runs[pid].status = status
        if self.flags.pop(signal.SIGUSR1, False):
            for run in self.runs.values():
                if os.path.exists(run.path("cancel.json")):
                    run.cancel_requested = True
        if self.flags.pop(signal.SIGTERM, False):
            for run in self.runs.values():
                run.cancel_requested = True
        now, wait = time.monotonic(), math.inf
        for pid, run in list(self.runs.items()):
            left = run.step(now)
            if left is None:
                del self.runs[pid]
                code, sig = decode_status(run.status or 0)
                if run.proc is not None:
                    run.proc.returncode = code  # reaped by us
                self.finish(run, code, sig)
            else:
                wait = min(wait, left)
        return None if wait == math.inf else wait

    def start(self, run_dir: str, spec: Dict[str, Any]) -> None:
        run = KeptRun(run_dir, spec)
        with contextlib.suppress(OSError):  # no room even for this: finish() says the disk is full
            reserve(run.path("exit.reserve"))
        workdir = expand_dir(spec["workdir"])
        host = spec.get("host") or self.host  # the name the user gave it, else the machine's
        try:
            os.makedirs(workdir, 0o700, exist_ok=True)
        except OSError as exc:
            return self.fail(run, "cannot create workdir %s on %s: %s" % (workdir, host, exc))
        if os.path.exists(run.path("cancel.json")):  # cancelled before it could start
            run.cancelled = True
            return self.finish(run, -signal.SIGTERM, "SIGTERM")
        env = dict(os.environ, **spec["env"])
        env.update(LABTASKER_RESULT=run.path("result.json"), LABTASKER_RUN_DIR=run_dir,
                   LABTASKER_RUN_ID=os.path.basename(run_dir),
                   LABTASKER_TASK_ID=str(spec["task_id"]))  # fmt: skip
        words = plain_words(spec["command"], spec["setup"], env)
        if words:
            argv: List[Any] = words
            env["PWD"] = workdir  # what the shell would have set
        try:
            if not words:
                argv = shell_argv(spec)
                if len(argv[2]) > SCRIPT_ARG_LIMIT:  # over one exec argument's limit
                    write_file(run.path("cmd.sh"), argv[2])
                    argv = [argv[0], run.path("cmd.sh")]
            log = os.open(run.path("output.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                try:
                    got = spawn(argv, env, workdir, log, self.umask)
                except OSError as exc:  # a script without #!: bash runs those itself
                    if not (words and exc.errno == errno.ENOEXEC):
                        raise
                    words, argv = None, shell_argv(spec)
                    got = spawn(argv, env, workdir, log, self.umask)
            finally:
                os.close(log)
        except (OSError, ValueError) as exc:
            if words and isinstance(exc, (FileNotFoundError, PermissionError)):
                why = "%s: %s on %s" % (words[0], "command not found" if isinstance(
                    exc, FileNotFoundError) else "permission denied", host)  # fmt: skip
                return self.fail(run, why, 127 if isinstance(exc, FileNotFoundError) else 126)
            why = "cannot start the task in %s on %s: %s" % (workdir, host, exc)
            return self.fail(run, why)
        run.proc = None if isinstance(got, int) else got
        run.pid = pid = got if isinstance(got, int) else got.pid
        task = proc_stat(pid)
        started = dict(self.me, pid=pid, pgid=pid, started_at=run.started_at, keeper=True,
                       boot_id=self.boot_id, hostname=self.host,
                       task_start=task[2] if task else None,
                       cgroup=cgroup_of(pid))  # fmt: skip
        started["oom_kills"] = oom_kills(started["cgroup"])
        try:
            write_file(run.path("started.json"), started, tmp=run.path("started.json.tmp"))
        except OSError as exc:  # e.g. disk full: the task still runs; exit.json will say so
            run.notes.append("could not write started.json: %s" % exc)
        self.runs[pid] = run

    def fail(self, run: KeptRun, error: str, code: int = 127) -> None:
        append_log(run.path("output.log"), "labtasker: %s\n" % error)
        run.notes.insert(0, error)
        self.finish(run, code, None)

    def finish(self, run: KeptRun, code: int, sig: Optional[str]) -> None:
        if run.spec.get("snapshot"):  # its working directory's clean-up counts from now
            with contextlib.suppress(OSError):
                os.utime(run.spec["workdir"])
        full = disk_full(run.run_dir, self.host) if code != 0 and not run.cancelled else None
        if full:
            run.notes.append("%s (the task ended with %s)" % (full, sig or "exit %d" % code))
        info = {"exit_code": code, "signal": sig, "timed_out": run.timed_out,
                "cancelled": run.cancelled, "started_at": run.started_at,
                "finished_at": utc_now(), "error": "; ".join(run.notes) or None,
                "terminated": self.terminated}  # fmt: skip
        try:  # into the reserve's blocks, then renamed: there is room even on a full disk
            write_file(run.path("exit.json"), info, sync=True, tmp=run.path("exit.reserve"))
        except OSError:  # the reserve is gone now: its room may be enough for a new file
            with contextlib.suppress(OSError):
                write_file(run.path("exit.json"), info, sync=True)
        if self.note >= 0:
            self.outbuf += os.path.basename(run.run_dir).encode() + b"\n"
            self.flush()

    def flush(self) -> None:
        """Send queued run ids to the helper without blocking; drop them once it is gone."""
        try:
            while self.outbuf:
                self.outbuf = self.outbuf[os.write(self.note, self.outbuf) :]
        except BlockingIOError:
            pass
        except OSError:
            self.outbuf = b""
            os.close(self.note)
            self.note = -1


# ------------------------------------------------------------------------------------------------
# SLURM: runs submitted as job arrays from a cluster's login node, watched with one squeue a poll
# ------------------------------------------------------------------------------------------------

#: squeue states after which the run is lost (retried, not a failed attempt): the job was taken
#: from its node, or will run again under SLURM's own retry (requeue), never under ours.
SLURM_LOST = frozenset(("PREEMPTED", "NODE_FAIL", "BOOT_FAIL", "REQUEUED", "REQUEUE_FED",
                        "REQUEUE_HOLD", "REVOKED", "SPECIAL_EXIT", "RESV_DEL_HOLD"))  # fmt: skip
#: Final states that are the task's failure, and why.
SLURM_FAILED = {"TIMEOUT": "killed by SLURM at its time limit",
                "DEADLINE": "killed by SLURM at its deadline",
                "OUT_OF_MEMORY": "killed by SLURM: out of memory (its --mem limit)",
                "CANCELLED": "cancelled outside labtasker (scancel)"}  # fmt: skip
SLURM_LIVE = frozenset(("RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "STAGE_OUT",
                        "SIGNALING", "STOPPED", "RESIZING"))  # fmt: skip
SLURM_POLL_MIN = 5.0
#: A dependency's kind (core.deps.DepKind) -> the outcomes of its run that let the dependent
#: start; any other outcome, or a failure that is not its task's last, holds the dependent back.
GATE_READY = {"after": ("succeeded",), "after_any": ("succeeded", "failed", "cancelled"),
              "after_failed": ("failed", "cancelled")}  # fmt: skip
SLURM_CMD_TIMEOUT = 60.0
_JOB_ID = re.compile(r"[0-9]+(_[0-9]+)?")
#: The batch script: runs one element of an array (``slurm_element``) with the helper on disk.
SLURM_SCRIPT = """#!/bin/sh
exec %s -c 'import sys
p = sys.argv[1]
g = {"__name__": "labtasker_helper", "__file__": p}
exec(compile(open(p, "rb").read(), p, "exec"), g)
g["slurm_element"](sys.argv[2], sys.argv[3])' %s %s %s
"""


class Slurm:
    """The runs of a ``kind = "slurm"`` host: submitted by sbatch as job arrays (one per set of
    equal sbatch options), watched through one ``squeue`` of all our jobs every ``poll`` s.

    A run's record (supervisor.json: {"slurm": array name, "index", "spec"}; the array's job id
    in slurm/NAME.job)
    lives in the run dir on the shared file system; the wrapper on the compute node
    (``slurm_element``) writes started.json and exit.json there, and exit.json is the truth for
    the outcome. A job whose sbatch reply was lost is found by its name before anything is
    submitted again; a run id is never submitted twice (its run dir is published once).
    """

    def __init__(self, helper: "Helper") -> None:
        self.helper = helper
        self.dir = os.path.join(helper.state_dir, "slurm")
        self.poll = 30.0
        self.jobs: Dict[str, Tuple[str, str, str]] = {}  # "J_I" -> (state, reason, name)
        self.polled = 0.0  # time.time() of the last squeue that answered
        self.tried = 0.0  # time.monotonic() of the last squeue tried
        self.absent: Dict[str, float] = {}  # job -> the first poll (``polled``) not listing it
        self.accounted: Dict[str, str] = {}  # absent job -> its final state, as sacct says
        self.asked: Dict[str, None] = {}  # absent jobs sacct was asked about (once each)
        self.sacct = True  # accounting may answer (False once sacct failed: never asked again)
        self.requeued: Dict[str, None] = {}  # requeued jobs scancelled by us
        self.max_array: Optional[int] = None
        self.arrays: Dict[str, Optional[str]] = {}  # array name -> its job id (slurm/NAME.job)

    def run(self, argv: List[str]) -> Tuple[int, str, str]:
        try:
            p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, timeout=SLURM_CMD_TIMEOUT)  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as exc:
            return 127, "", "%s: %s" % (argv[0], exc)
        return (p.returncode, p.stdout.decode("utf-8", "replace"),
                p.stderr.decode("utf-8", "replace").strip())  # fmt: skip

    def refresh(self, force: bool = False) -> None:
        """One squeue of all our jobs (every state it still knows), at most every ``poll`` s."""
        now = time.monotonic()
        if now - self.tried < (SLURM_POLL_MIN if force else self.poll):
            return
        self.tried = now
        user = user_name(os.geteuid())
        code, out, _ = self.run(["squeue", "-h", "-r", "-t", "all", "-u", user,
                                 "-o", "%i|%T|%r|%j"])  # fmt: skip
        if code != 0:
            return  # slurmctld busy or down: nothing is decided on an unanswered poll
        jobs: Dict[str, Tuple[str, str, str]] = {}
        for line in out.splitlines():
            parts = line.split("|", 3)
            if len(parts) == 4 and parts[3].startswith("labtasker-"):
                jobs[parts[0]] = (parts[1], parts[2], parts[3])
        self.absent = {j: at for j, at in self.absent.items() if j not in jobs}
        self.accounted = {j: st for j, st in self.accounted.items() if j in self.absent}
        self.asked = {j: None for j in self.asked if j in self.absent}
        self.jobs, self.polled = jobs, time.time()
        self.account()

    def account(self) -> None:
        """One ``sacct`` for the jobs squeue stopped listing, where accounting answers: how a
        job that ended without an exit record ended (squeue forgets a job MinJobAge after its
        end, so one that ended while no controller ran is known to sacct alone)."""
        want = [j for j in self.absent if j not in self.asked][:1000]
        if not want or not self.sacct:
            return
        self.asked.update(dict.fromkeys(want))
        code, out, _ = self.run(["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j",
                                 ",".join(want)])  # fmt: skip
        if code != 0:
            self.sacct = False  # no accounting here (no slurmdbd): squeue alone decides
            return
        for line in out.splitlines():
            job, _, state = line.strip().partition("|")
            state = (state.split() or [""])[0]  # "CANCELLED by 1000"
            if job in want and state and state != "PENDING" and state not in SLURM_LIVE:
                self.accounted[job] = state

    def fresh(self, path: str) -> bool:
        """Whether the last squeue answered after ``path`` was written (with a second's
        margin for clocks): only then does what it says of the job follow that event."""
        try:
            return self.polled > os.stat(path).st_mtime + 1.0
        except OSError:
            return False

    def find(self, name: str, index: int) -> Optional[str]:
        for job, (_, _, got) in self.jobs.items():
            if got == name and job.endswith("_%d" % index):
                return job
        return None

    def max_array_size(self) -> int:
        if self.max_array is None:
            code, out, _ = self.run(["scontrol", "show", "config"])
            found = re.search(r"^MaxArraySize\s*=\s*(\d+)", out, re.M) if code == 0 else None
            self.max_array = max(1, int(found.group(1))) if found else 1000
        return self.max_array

    def submit(self, items: List[Tuple[str, Any]]) -> Dict[str, Any]:
        """Launch ``items`` ([(run_id, raw spec)]) as job arrays; launch's reply per run."""
        out: Dict[str, Any] = {}
        groups: Dict[Tuple[str, ...], List[Tuple[str, Dict[str, Any]]]] = {}
        for run_id, raw in items:
            try:
                spec, opts = _spec(raw), _slurm_spec(raw)
            except BadRequest as exc:
                out[run_id] = {"status": "error", "error": str(exc)}
                continue
            spec["slurm"] = opts
            self.poll = max(SLURM_POLL_MIN, opts["poll"])
            if os.path.lexists(self.helper.run_dir(run_id)):
                out[run_id] = {
                    "status": "exists",
                    "run": self.helper.report(run_id, [REPLY_INLINE_BUDGET]),
                }
                continue
            groups.setdefault(tuple(opts["sbatch"]), []).append((run_id, spec))
        size = self.max_array_size()
        if groups:
            self.prune()
        for opts_key, runs in groups.items():
            for start in range(0, len(runs), size):
                out.update(self.submit_array(list(opts_key), runs[start : start + size]))
        return out

    def prune(self) -> None:
        """Remove the scripts, run lists and SLURM output files of arrays a week old that
        squeue no longer lists (their runs' records live in their run dirs)."""
        live = {name for _, _, name in self.jobs.values()}
        old = time.time() - 7 * 86400
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.dir):
                name = re.sub(r"(_\d+\.out|\.sh|\.json|\.job|\.ended)$", "", entry.name)
                with contextlib.suppress(OSError):
                    if name not in live and entry.stat().st_mtime < old:
                        os.unlink(entry.path)

    def submit_array(self, opts: List[str], runs: List[Tuple[str, Dict[str, Any]]]
                     ) -> Dict[str, Any]:  # fmt: skip
        """Publish each run dir, then one sbatch for all; a lost reply is found by name."""
        h, out = self.helper, {}  # type: Tuple[Helper, Dict[str, Any]]
        name = "labtasker-" + hashlib.sha256(
            "\n".join(r for r, _ in runs).encode()).hexdigest()[:16]  # fmt: skip
        members: List[str] = []
        try:  # one fence check for the array: a superseded helper submits nothing
            with h.fence.held(h.host) if h.fence else contextlib.nullcontext():
                for run_id, spec in runs:
                    if self.publish(name, run_id, spec, len(members), out):
                        members.append(run_id)
        except Superseded:
            h.running = False
            raise
        if not members:
            return out
        job, error = self.sbatch(name, opts, members)
        ahead = bool(runs[0][1]["slurm"]["gate"])  # submitted ahead of its dependencies
        for n, run_id in enumerate(members):
            if job is None:  # nothing submitted: the id may be reused
                shutil.rmtree(h.run_dir(run_id), ignore_errors=True)
                # A dependency's job may have left SLURM meanwhile: the controller waits for
                # its outcome instead, counting nothing against the task.
                out[run_id] = {"status": "error", "error": error, "withdrawn": ahead}
                continue
            element = "%s_%d" % (job, n)
            self.jobs.setdefault(element, ("PENDING", "None", name))
            h.adopted[run_id] = None
            out[run_id] = {"status": "started", "pid": None, "job_id": element}
        return out

    def publish(self, name: str, run_id: str, spec: Dict[str, Any], index: int,
                out: Dict[str, Any]) -> bool:  # fmt: skip
        """Publish one run's dir, its spec in supervisor.json; False (``out`` says why) if not."""
        h = self.helper
        try:
            if spec["snapshot"]:
                with h.store.locked():
                    spec["workdir"] = h.store.workdir(run_id, spec["snapshot"])
            sup = json.dumps({"slurm": name, "index": index, "spec": spec}).encode()
            if h.spares.publish(h.run_dir(run_id), sup):
                return True
            out[run_id] = {"status": "exists", "run": h.report(run_id, [0])}
        except (OSError, BadRequest) as exc:
            out[run_id] = {"status": "error", "error": "cannot prepare run %s on %s: %s"
                           % (run_id, h.host, exc)}  # fmt: skip
            if isinstance(exc, SnapshotMissing):  # removed by a clean-up: send it again
                out[run_id]["snapshot_missing"] = True
        return False

    def job_of(self, run_id: str, sup: Optional[Dict[str, Any]] = None) -> Optional[str]:
        """The job ("J_I") of a run: its array's job id (slurm/NAME.job) and its index."""
        if sup is None:
            sup = read_json(os.path.join(self.helper.run_dir(run_id), SUPERVISOR))[0] or {}
        name, index = sup.get("slurm"), sup.get("index")
        if not isinstance(name, str) or not isinstance(index, int):
            return None
        job = self.arrays.get(name)
        if job is None:
            with contextlib.suppress(OSError), open(os.path.join(self.dir, name + ".job")) as f:
                text = f.read().strip()
                job = self.arrays[name] = text if _JOB_ID.fullmatch(text) else None
        return None if job is None else "%s_%d" % (job, index)

    def record_job(self, name: str, job: str) -> None:
        """slurm/NAME.job: the array's job id, once sbatch (or squeue, after a lost reply) said."""
        self.arrays[name] = job
        with contextlib.suppress(OSError):
            write_file(os.path.join(self.dir, name + ".job"), job.encode())

    def sbatch(self, name: str, opts: List[str], runs: List[str]
               ) -> Tuple[Optional[str], Optional[str]]:  # fmt: skip
        """Submit one array; (job id, None) or (None, why). Never twice for one name."""
        os.makedirs(self.dir, 0o700, exist_ok=True)
        write_file(os.path.join(self.dir, name + ".json"), {"runs": runs})
        script = os.path.join(self.dir, name + ".sh")
        q = shlex.quote
        here = self.helper_file()
        write_file(script, (SLURM_SCRIPT % (q(sys.executable), q(here), q(self.helper.state_dir),
                                            q(name))).encode())  # fmt: skip
        os.chmod(script, 0o700)
        argv = ["sbatch", "--parsable", "--job-name=" + name, "--array=0-%d" % (len(runs) - 1),
                "--output=" + os.path.join(self.dir, name + "_%a.out"), "--chdir=" +
                self.helper.state_dir, *opts, script]  # fmt: skip
        code, out, err = self.run(argv)
        job = out.strip().split(";")[0]
        if code == 0 and _JOB_ID.fullmatch(job):
            self.record_job(name, job)
            return job, None
        for _ in range(2):  # its reply may be lost while the job was queued: look first
            time.sleep(max(0.0, self.tried + SLURM_POLL_MIN - time.monotonic()))
            self.refresh(force=True)  # never two squeues within SLURM_POLL_MIN
            found = self.find(name, 0)
            if found:
                self.record_job(name, found.split("_")[0])
                return found.split("_")[0], None
        return None, "sbatch on %s failed: %s" % (self.helper.host, (err or out)[-500:])

    def helper_file(self) -> str:
        here = globals().get("__file__") or ""
        return os.path.abspath(here)

    def live_state(self, run_id: str, sup: Dict[str, Any]) -> Tuple[str, Any, Dict[str, Any]]:
        """A SLURM run without exit.json: (state, why, exit info to record or {})."""
        d = self.helper.run_dir(run_id)
        self.refresh()
        job, name = self.job_of(run_id, sup), sup.get("slurm")
        if job is None and isinstance(name, str):
            job = self.find(name, int(sup.get("index") or 0))
            if job:  # submitted, and the helper ended before it recorded sbatch's reply
                self.record_job(name, job.split("_")[0])
        started = os.path.exists(os.path.join(d, "started.json"))
        if not isinstance(job, str):
            age = time.time() - os.stat(d).st_mtime
            if age < LOST_AFTER_S:
                return "starting", None, {}
            return "lost", "its submission to SLURM on %s was not accepted" % self.helper.host, {}
        state, reason, _ = self.jobs.get(job, ("", "", ""))
        state = state or self.accounted.get(job, "")  # one squeue forgot: sacct's word
        gated = ((sup.get("spec") or {}).get("slurm") or {}).get("gate")
        never = reason == "DependencyNeverSatisfied" or state == "CANCELLED"
        if gated and never and not started and not os.path.exists(os.path.join(d, "cancel.json")):
            # afterok / afternotok on a run that did not allow it (kill_invalid_depend cancels)
            self.run(["scancel", job])
            withdraw(d, "SLURM job %s will never start (%s)" % (
                job, reason if state == "PENDING" else state.lower()))  # fmt: skip
            return "exited", None, {}
        if state == "PENDING" and started and not self.fresh(os.path.join(d, "started.json")):
            state = "RUNNING"  # pending in a poll from before it started: not news
        if (state == "PENDING" and started) or state in SLURM_LOST:
            self.requeue_cancel(job)
            return "lost", slurm_lost(job, state), {}
        if state in SLURM_FAILED:
            cancelled = state == "CANCELLED" and os.path.exists(os.path.join(d, "cancel.json"))
            why = None if cancelled else "%s (SLURM job %s)" % (SLURM_FAILED[state], job)
            return "exited", None, {"exit_code": -9 if started else -15, "cancelled": cancelled,
                                    "timed_out": state == "TIMEOUT", "error": why,
                                    "signal": "SIGKILL" if started else "SIGTERM"}  # fmt: skip
        listed = state == "PENDING" or state in SLURM_LIVE
        # Not listed: lost once a later poll does not list it either (squeue keeps ended jobs
        # for MinJobAge; the wrapper's record may reach the shared file system late).
        gone = not state and self.absent.setdefault(job, self.polled) < self.polled
        if listed or (not state and not gone):
            return ("running" if started else "starting"), None, {}
        if gated and not started and not os.path.exists(os.path.join(d, "cancel.json")):
            # Ended unstarted (kill_invalid_depend), then forgotten while no controller asked
            withdraw(d, "SLURM job %s ended before it started (%s)" % (
                job, state.lower() or "gone from squeue"))  # fmt: skip
            return "exited", None, {}
        # Listed as ended without an exit record, or gone from squeue for two polls.
        return "lost", "SLURM job %s ended without an exit record (%s)" % (
            job, state.lower() or "gone from squeue"), {}  # fmt: skip

    def describe(self, run_id: str) -> Dict[str, Any]:
        """REPORT fields of a SLURM run: job_id, job_state and job_reason (squeue's)."""
        if not self.jobs and not self.polled:
            return {}  # this helper has nothing to do with SLURM
        job = self.job_of(run_id)
        if not isinstance(job, str):
            return {}
        state, reason, _ = self.jobs.get(job, ("", "", ""))
        return {"job_id": job, "job_state": state or None,
                "job_reason": reason if reason not in ("", "None") else None}  # fmt: skip

    def keep_outcome(self, run_id: str) -> None:
        """Before a SLURM run's dir is removed: its outcome (``run_outcome``) in slurm/RUN.ended
        for a week, where runs submitted ahead of it look (``gate_held``)."""
        d = self.helper.run_dir(run_id)
        sup = read_json(os.path.join(d, SUPERVISOR))[0] or {}
        outcome = run_outcome(d) if "slurm" in sup else None
        if outcome is not None:
            with contextlib.suppress(OSError):
                write_file(os.path.join(self.dir, run_id + ".ended"), outcome.encode())

    def requeue_cancel(self, job: str) -> None:
        """A requeued job would run the task again under the same run id: cancel it (once)."""
        if job not in self.requeued:
            self.requeued[job] = None
            self.run(["scancel", job])

    def refine(self, run_id: str, exit_info: Dict[str, Any]) -> Tuple[str, Any]:
        """An exit record of a task SLURM terminated (SIGTERM, no cancel of ours): what SLURM
        says it was. ("exited" | "running" | "lost", why)."""
        d = self.helper.run_dir(run_id)
        job = self.job_of(run_id)
        if not self.fresh(os.path.join(d, "exit.json")):
            self.refresh(force=True)
            if not self.fresh(os.path.join(d, "exit.json")):
                return "running", None  # SLURM's word on it is not in yet
        state = self.jobs.get(str(job), ("", "", ""))[0]
        if state == "PENDING" or state in SLURM_LOST:
            self.requeue_cancel(str(job))
            return "lost", slurm_lost(str(job), state)
        if state in SLURM_LIVE and time.time() - self.polled < 600:
            return "running", None  # SLURM has not said yet why it ended the job
        why = (
            SLURM_FAILED.get(state)
            or "terminated by SLURM (SIGTERM): scancel, preemption or a node problem"
        )
        exit_info["timed_out"] = state == "TIMEOUT"
        exit_info["cancelled"] = False
        exit_info["error"] = "%s (SLURM job %s)" % (why, job)
        return "exited", None

    def kill(self, run_id: str, started: bool, again: bool) -> str:
        """Cancel a run: the wrapper is told (SIGUSR1: it reads cancel.json, TERMs the task,
        KILLs after the grace and records the exit); a job still pending is removed."""
        d = self.helper.run_dir(run_id)
        job = self.job_of(run_id)
        if not isinstance(job, str) or not _JOB_ID.fullmatch(job):
            return "exited"
        if started and not again:
            self.run(["scancel", "--batch", "--signal=USR1", job])
            return "signalled"
        self.run(["scancel", job])
        if not started:  # it never ran: its record says so now (a late start sees it, and stops)
            info = {"exit_code": -15, "signal": "SIGTERM", "timed_out": False, "cancelled": True,
                    "started_at": None, "finished_at": utc_now(), "error": None}  # fmt: skip
            with contextlib.suppress(OSError):
                if not os.path.exists(os.path.join(d, "exit.json")):
                    write_file(os.path.join(d, "exit.json"), info, sync=True)
        return "signalled"


def slurm_lost(job: str, state: str) -> str:
    """Why a run whose job SLURM took from its node (or requeued: pending again) is lost."""
    if state == "PENDING":
        return "SLURM job %s was requeued" % job
    if state == "PREEMPTED":
        return "SLURM job %s was preempted" % job
    return "SLURM job %s ended as %s (its node or SLURM failed it)" % (job, state)


def _slurm_spec(raw: Any) -> Dict[str, Any]:
    opts = raw.get("slurm") if isinstance(raw, dict) else None
    if not isinstance(opts, dict):
        raise BadRequest("spec.slurm must be an object")
    args = opts.get("sbatch")
    if not isinstance(args, list) or not all(
        isinstance(a, str)
        and a.startswith("--")
        and "\0" not in a
        and "\n" not in a
        and not a.startswith(("--array", "--job-name", "--output", "--wrap", "--chdir"))
        for a in args
    ):
        raise BadRequest("spec.slurm.sbatch must be a list of long sbatch options")
    limit = opts.get("time_limit")
    if limit is not None and not (isinstance(limit, (int, float)) and limit > 0):
        raise BadRequest("spec.slurm.time_limit must be a number of seconds > 0 or null")
    gate = opts.get("gate") or []
    if not isinstance(gate, list) or not all(
        isinstance(g, dict) and isinstance(g.get("kind"), str) and g["kind"] in GATE_READY
        and isinstance(g.get("last"), bool)
        and type(g.get("task")) is int for g in gate
    ):  # fmt: skip
        raise BadRequest("spec.slurm.gate must be a list of {kind, task, run, last}")
    for g in gate:
        _run_id(g.get("run"))
    return {"sbatch": args, "poll": _number(opts, "poll", 30.0), "time_limit": limit,
            "gate": gate}  # fmt: skip


def run_outcome(run_dir: str) -> Optional[str]:
    """What a run's exit record says its task became: "succeeded", "failed" or "cancelled" as
    the controller decides it (core.outcome.outcome_of); None without a readable record, when
    it was withdrawn (then it never ran), or when SLURM ended it (the controller asks squeue)."""
    info = read_json(os.path.join(run_dir, "exit.json"))[0]
    if info is None or info.get("withdrawn") or os.path.exists(os.path.join(run_dir, "lost.json")):
        return None  # no record, never ran, or reported lost (a record written after is late)
    cancel = read_json(os.path.join(run_dir, "cancel.json"))[0]
    if (info.get("cancelled") or info.get("terminated")) and (cancel or {"stray": 1}).get("stray"):
        # SLURM ended it (only squeue says how: Slurm.refine), or labtasker stopped a run of
        # an attempt it gave up on (a stray): neither is its task's outcome.
        return None
    if info.get("cancelled"):
        return "cancelled"
    if info.get("exit_code") != 0 or info.get("error") or info.get("timed_out"):
        return "failed"
    path = os.path.join(run_dir, "result.json")
    if file_size(path) > RESULT_LIMIT:
        return "failed"  # the controller refuses a result over the helper's limit
    result = read_json(path)[0]  # missing, unreadable, not an object: noted, not a failure
    return "succeeded" if result is None or _depth_ok(result, RESULT_DEPTH) else "failed"


def _depth_ok(value: Any, limit: int) -> bool:
    stack = [(value, 1)]  # type: List[Tuple[Any, int]]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return False
        kids = item.values() if isinstance(item, dict) else item
        stack.extend((k, depth + 1) for k in kids if isinstance(k, (dict, list)))
    return True


def gate_held(helper: "Helper", gate: List[Dict[str, Any]]) -> Optional[str]:
    """Why a run submitted ahead of its dependencies must not start its task, by labtasker's
    rule (core.deps) from their runs' exit records; None when every one allows it. A failure
    counts only when it was its task's last attempt; no record (a lost run) never allows."""
    for g in gate:
        outcome = run_outcome(helper.run_dir(g["run"]))
        if outcome is None:  # its run dir removed once its end was recorded: what it kept
            with contextlib.suppress(OSError), open(os.path.join(helper.slurm.dir, g["run"] +
                                                                 ".ended")) as f:  # fmt: skip
                outcome = f.read().strip() or None
        if outcome == "failed" and not g["last"]:
            return "run %s of task %d failed and will be retried" % (g["run"], g["task"])
        if outcome is None:
            return "run %s of task %d ended without an outcome" % (g["run"], g["task"])
        if outcome not in GATE_READY[g["kind"]]:
            return "task %d %s" % (g["task"], outcome)
    return None


def withdraw(run_dir: str, why: str) -> None:
    """Record that a run never started its task and never will (``gate_held``): exit.json
    says "withdrawn" (the controller puts the task back to pending). Never over a record."""
    info = {"exit_code": None, "signal": None, "timed_out": False, "cancelled": False,
            "started_at": None, "finished_at": utc_now(), "error": None,
            "withdrawn": why}  # fmt: skip
    with contextlib.suppress(OSError):
        if not os.path.exists(os.path.join(run_dir, "exit.json")):
            write_file(os.path.join(run_dir, "exit.json"), info, sync=True)


def slurm_element(state_dir: str, name: str) -> None:
    """The batch script's body on the compute node: run this array element's task under a
    keeper in the foreground, exactly once (an element run again, requeued, starts nothing)."""
    try:
        index = int(os.environ.get("SLURM_ARRAY_TASK_ID", ""))
        runs = (read_json(os.path.join(state_dir, "slurm", name + ".json"))[0] or {})["runs"]
        run_id = _run_id(runs[index])
    except (ValueError, KeyError, IndexError, TypeError, BadRequest):
        sys.exit("labtasker: no run for element %s of %s" % (
            os.environ.get("SLURM_ARRAY_TASK_ID"), name))  # fmt: skip
    helper = Helper(state_dir)
    d = helper.run_dir(run_id)
    sup = read_json(os.path.join(d, SUPERVISOR))[0] or {}
    if sup.get("slurm") != name or sup.get("index") != index:
        sys.exit("labtasker: run %s does not belong to %s_%d" % (run_id, name, index))
    if any(os.path.exists(os.path.join(d, f)) for f in ("started.json", "exit.json")):
        sys.exit("labtasker: run %s has started before: not run again" % run_id)
    spec = sup.get("spec") or {}
    held = gate_held(helper, (spec.get("slurm") or {}).get("gate") or [])
    if held is not None:  # SLURM let it start; labtasker's rule holds it back
        withdraw(d, held)
        sys.exit(1)  # failed in SLURM's eyes: nothing after it starts on its account
    gpus = os.environ.get("SLURM_STEP_GPUS") or os.environ.get("SLURM_JOB_GPUS")
    if gpus and not os.environ.get("CUDA_VISIBLE_DEVICES"):
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus  # SLURM without device cgroups leaves it unset
    helper.umask = os.umask(0o077)
    keeper = Keeper(helper, -1, -1)
    keeper.wake = _wakeup_pipe()
    for num in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(num, keeper.on_signal)
    signal.signal(signal.SIGCHLD, _noop)
    st = proc_stat(os.getpid())
    keeper.me = {
        "supervisor_pid": os.getpid(),
        "proc_start": st[2] if st else None,
        "slurm_job": "%s_%s" % (os.environ.get("SLURM_ARRAY_JOB_ID"), index),
    }
    try:
        keeper.start(d, _spec(spec))
    except Exception as exc:  # never a run left without an exit record
        keeper.fail(KeptRun(d, _spec(spec)), "cannot start the task on %s: %s" % (
            helper.host, exc))  # fmt: skip
    keeper.loop()
    # SLURM's afterok / afternotok see this: success as labtasker counts it.
    sys.exit(0 if run_outcome(d) == "succeeded" else 1)


def run_keeper(helper: "Helper", cmd_fd: int, note_fd: int) -> None:
    """Body of the forked keeper: serves until done and always ends the process."""
    try:
        Keeper(helper, cmd_fd, note_fd).serve()
    finally:
        os._exit(0)


def spawn(argv: List[Any], env: Dict[str, str], workdir: str, log: int, umask: int) -> Any:
    """Start argv in workdir, in a session of its own, stdin on /dev/null, stdout and stderr
    to ``log``; return its pid, or a Popen (keep it: its pid is reaped by the caller).

    os.posix_spawn runs no Python in the child (a third of subprocess's cost per task); the
    program is looked up on the task's own PATH, as a shell would.
    """
    old = os.umask(umask)  # the task creates files as from the user's own shell
    try:
        os.chdir(workdir)
        exe = argv[0] if "/" in str(argv[0]) else _which(argv[0], env.get("PATH"))
        if exe is None:
            raise FileNotFoundError(errno.ENOENT, "command not found", argv[0])
        actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                   (os.POSIX_SPAWN_DUP2, log, 1), (os.POSIX_SPAWN_DUP2, log, 2)]  # fmt: skip
        with contextlib.suppress(TypeError, AttributeError):  # Python 3.8 without setsid
            return os.posix_spawn(exe, argv, env, setsid=True, setsigmask=(),
                                  setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
                                  file_actions=actions)  # fmt: skip
        return subprocess.Popen(argv, executable=exe, env=env, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                close_fds=True)  # fmt: skip
    finally:
        os.umask(old)
        os.chdir("/")


_FOUND: Dict[Tuple[str, Optional[str]], str] = {}


def _which(name: str, path: Optional[str]) -> Optional[str]:
    """shutil.which, remembering what it found (a program removed since fails at exec with
    the same "command not found"); a miss is looked up again next time."""
    key = (name, path)
    if key not in _FOUND:
        found = shutil.which(name, path=path)
        if found is None or not os.path.isabs(found):  # relative PATH entries: not cached
            return found
        _FOUND[key] = found
    return _FOUND[key]


def build_script(command: str, setup: Optional[str]) -> str:
    """cmd.sh: the setup line (exit 126 with a message when it fails), then the command."""
    lines = ["set +e"]
    if setup:
        lines += [setup, "__labtasker_rc=$?", 'if [ "$__labtasker_rc" -ne 0 ]; then',
                  "  printf 'labtasker: setup failed (exit %%s): %%s\\n' \"$__labtasker_rc\" %s"
                  % shlex.quote(setup), "  exit 126", "fi"]  # fmt: skip
    return "\n".join([*lines, command]) + "\n"


def shell_argv(spec: Dict[str, Any]) -> List[Any]:
    """bash (sh where there is none) -c the script of setup line and command."""
    shell = "/bin/bash" if os.path.exists("/bin/bash") else "/bin/sh"
    script = build_script(spec["command"], spec["setup"]).encode("utf-8", "surrogateescape")
    return [shell, "-c", script, "labtasker"]


def plain_words(command: str, setup: Optional[str], env: Dict[str, str]) -> Optional[List[str]]:
    """The argv of a command that needs no shell (words only, as make checks), else None.

    Such a command is executed directly: bash -c would exec it in the same way, after spending
    about 2 ms of CPU starting up.
    """
    if setup or _SHELL_SYNTAX.search(command) or "BASH_ENV" in env:
        return None
    words = [w for w in re.split(r"[ \t]+", command) if w]  # bash's default IFS, no newline
    if not words or "=" in words[0] or words[0] in _SHELL_WORDS:
        return None
    return words


def decode_status(status: int) -> Tuple[int, Optional[str]]:
    """waitpid status -> (exit code, signal name); signal N gives -N like Popen.returncode."""
    if not os.WIFSIGNALED(status):
        return os.WEXITSTATUS(status), None
    num = os.WTERMSIG(status)
    try:
        return -num, signal.Signals(num).name
    except ValueError:
        return -num, "SIG%d" % num


def signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(OSError):
        os.killpg(pgid, sig)


def _noop(signum: int, frame: Any) -> None:
    """Installed so that the signal wakes select() through the wakeup fd."""


def _wakeup_pipe() -> int:
    rfd, wfd = os.pipe()
    os.set_blocking(rfd, False)
    os.set_blocking(wfd, False)
    signal.set_wakeup_fd(wfd, warn_on_full_buffer=False)
    return rfd


def _drain(fd: int) -> None:
    with contextlib.suppress(BlockingIOError, InterruptedError):
        while os.read(fd, 4096):
            pass


# ------------------------------------------------------------------------------------------------
# GPUs: nvidia-smi asked without blocking the loop
# ------------------------------------------------------------------------------------------------


class GpuQuery:
    """One `gpus` request in flight: both nvidia-smi outputs are read by the helper's selector."""

    def __init__(self, req_id: Any, exe: str) -> None:
        self.req_id = req_id
        self.deadline = time.monotonic() + GPU_QUERY_TIMEOUT
        self.procs: List[subprocess.Popen[bytes]] = []
        for query in _QUERIES:
            argv = [exe, query, "--format=csv,noheader,nounits"]
            pipe, out = subprocess.PIPE, subprocess.STDOUT
            self.procs.append(
                subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=pipe, stderr=out)
            )
        self.out = [bytearray(), bytearray()]
        self.open = {p.stdout.fileno(): i for i, p in enumerate(self.procs) if p.stdout}

    def feed(self, fd: int) -> bool:
        """Read what fd has; False at EOF."""
        data = os.read(fd, 65536)
        if len(self.out[self.open[fd]]) < READ_LIMIT:
            self.out[self.open[fd]] += data
        return bool(data)

    def done(self) -> bool:
        return not self.open and all(p.poll() is not None for p in self.procs)

    def close(self) -> None:
        for p in self.procs:
            if p.stdout:
                p.stdout.close()
            if p.poll() is None:
                p.kill()  # a hung driver can make it unkillable: never wait for it here

    def result(self) -> Dict[str, Any]:
        reply: Dict[str, Any] = {"gpus": [], "processes": [], "error": None}
        texts = [bytes(b).decode("utf-8", "replace") for b in self.out]
        if "No devices were found" in texts[0]:
            return reply  # a host without GPUs is not an error
        for i, proc in enumerate(self.procs):
            if proc.returncode != 0:
                first = [x.strip() for x in texts[i].splitlines() if x.strip()]
                why = first[0] if first else "exit %s" % proc.returncode
                reply["error"] = reply["error"] or "nvidia-smi failed: %s" % why
            elif i == 0:
                reply["gpus"], bad = parse_gpus(texts[0])
                reply["error"] = reply["error"] or bad
            else:
                reply["processes"] = parse_apps(texts[1])
        return reply


def parse_gpus(text: str) -> Tuple[List[Dict[str, Any]], Optional[str]]:
    """Rows of --query-gpu output; a name may hold commas, so it is what lies between."""
    gpus, bad = [], None
    for line in filter(str.strip, text.splitlines()):
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 6 or _smi_value(parts[0]) is None:
            bad = bad or "nvidia-smi output not understood: %s" % line.strip()[:200]
            continue
        gpus.append({"index": _smi_value(parts[0]), "uuid": parts[1],
                     "name": ", ".join(parts[2:-3]), "memory_used_mib": _smi_value(parts[-3]),
                     "memory_total_mib": _smi_value(parts[-2]),
                     "utilization": _smi_value(parts[-1])})  # fmt: skip
    return gpus, bad


def parse_apps(text: str) -> List[Dict[str, Any]]:
    """Rows of --query-compute-apps output, each with the owner of its pid."""
    procs = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",", 3)]
        pid = _smi_value(parts[1]) if len(parts) == 4 else None
        if isinstance(pid, int):  # skips blanks and "No running processes found"
            procs.append({"gpu_uuid": parts[0], "pid": pid, "user": pid_user(pid),
                          "used_memory_mib": _smi_value(parts[2]), "name": parts[3],
                          "run_id": pid_run(pid)})  # fmt: skip
    return procs


def pid_run(pid: int) -> Optional[str]:
    """The labtasker run a process belongs to: LABTASKER_RUN_ID in its environment (readable
    for our own user's processes only), or None."""
    try:
        with open("/proc/%d/environ" % pid, "rb") as f:
            env = f.read(READ_LIMIT)
    except OSError:
        return None
    for item in env.split(b"\0"):
        if item.startswith(b"LABTASKER_RUN_ID="):
            run_id = item[len(b"LABTASKER_RUN_ID=") :].decode("ascii", "replace")
            return run_id if _RUN_ID.fullmatch(run_id) else None
    return None


def _smi_value(text: str) -> Any:
    """An nvidia-smi value as int/float; None for [N/A], [Not Supported] and the like."""
    for kind in (int, float):
        with contextlib.suppress(ValueError):
            return kind(text.strip())
    return None


def log_tail(path: str, size: int) -> Optional[str]:
    """The last LOG_TAIL bytes of a run's output, as text (the reasons of a failure)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, size - LOG_TAIL))
            return f.read(LOG_TAIL).decode("utf-8", "replace").replace("\0", " ")
    except OSError:
        return None


def cgroup_of(pid: int) -> Optional[str]:
    """The memory cgroup directory of ``pid``: cgroup v2's, else v1's memory controller's."""
    try:
        with open("/proc/%d/cgroup" % pid) as f:
            lines = [x.strip().split(":", 2) for x in f]
    except OSError:
        return None
    for parts in lines:
        if len(parts) == 3 and "memory" in parts[1].split(","):
            path = "/sys/fs/cgroup/memory" + parts[2]
            return path if os.path.isdir(path) else "/sys/fs/cgroup/memory"
    for parts in lines:
        if len(parts) == 3 and parts[0] == "0" and not parts[1]:
            return "/sys/fs/cgroup" + parts[2]
    return None


def oom_kills(cgroup: Optional[str]) -> Optional[int]:
    """The kernel OOM killer's kills so far in ``cgroup`` (v2 memory.events, v1
    memory.oom_control); None where it cannot be read."""
    if not isinstance(cgroup, str) or not cgroup.startswith("/sys/fs/cgroup"):
        return None
    for name in ("memory.events", "memory.oom_control"):
        try:
            with open(os.path.join(cgroup, name)) as f:
                for row in f:
                    key, _, value = row.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        except (OSError, ValueError):
            continue
    return None


def pid_user(pid: int) -> str:
    """The owner of pid (from /proc/PID/status), or "?"."""
    with contextlib.suppress(OSError, ValueError, IndexError), open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("Uid:"):
                return user_name(int(line.split()[1]))
    return "?"


# ------------------------------------------------------------------------------------------------
# Files and processes: small tools every section uses
# ------------------------------------------------------------------------------------------------


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
    """(state, pgrp, start time) of a live or zombie process from /proc/PID/stat, or None."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            rest = f.read().rsplit(b")", 1)[1].split()
        return rest[0].decode(), int(rest[2]), int(rest[19])
    except (OSError, IndexError, ValueError):
        return None


def process_matches(pid: Any, proc_start: Any) -> bool:
    """True if pid runs, is not a zombie (pid 1 may never reap it) and started at proc_start."""
    st = proc_stat(pid) if isinstance(pid, int) and pid > 1 else None
    return st is not None and st[0] != "Z" and proc_start in (None, st[2])


def group_alive(pgid: int) -> bool:
    """True if a process that is not a zombie is in process group pgid."""
    for name in os.listdir("/proc"):
        st = proc_stat(int(name)) if name.isdigit() else None
        if st is not None and st[1] == pgid and st[0] != "Z":
            return True
    return False


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_file(path: str, data: Any, sync: bool = False, tmp: Optional[str] = None) -> None:
    """Write bytes, or an object as JSON, atomically (temp file + rename) with mode 0600.
    ``tmp``: the temp file's name, when only this process writes ``path``: a run dir holds
    one already (exit.reserve, started.json.tmp), so no inode is made and the reserve's
    blocks take the data. The temp file is removed if anything fails."""
    if not isinstance(data, bytes):
        data = json.dumps(data, sort_keys=True).encode()
    tmp = tmp or "%s.tmp%d" % (path, os.getpid())
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            write_all(fd, data)
            os.ftruncate(fd, len(data))
            if sync:
                os.fsync(fd)  # the outcome must survive a crash right after the task
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def reserve(path: str) -> None:
    """Make ``path`` (the file a run dir is published with) hold RESERVE_BYTES of disk
    (allocated, or written where a file system cannot allocate); emptied if there is no room,
    but kept: a run dir is never empty (see Spares)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        try:
            os.posix_fallocate(fd, 0, RESERVE_BYTES)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
            write_all(fd, bytes(RESERVE_BYTES))
    except OSError:
        os.ftruncate(fd, 0)
        raise
    finally:
        os.close(fd)


def remove_tree(path: str) -> None:
    """Remove a run dir: its files, then itself (shutil.rmtree for anything deeper)."""
    try:
        for name in os.listdir(path):
            os.unlink(os.path.join(path, name))
        os.rmdir(path)
    except OSError:  # a directory the task made in it, say
        shutil.rmtree(path)


def append_log(path: str, text: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            write_all(fd, text.encode())
        finally:
            os.close(fd)


def read_json(path: str) -> Tuple[Optional[Dict[str, Any]], Optional[str]]:
    """(object, None), (None, None) when missing, or (None, why) when unreadable."""
    try:
        with open(path, "rb") as f:
            obj = json.loads(f.read().decode("utf-8"))
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError) as exc:
        return None, "%s is unreadable: %s" % (os.path.basename(path), exc)
    if isinstance(obj, dict):
        return obj, None
    return None, "%s is not a JSON object" % os.path.basename(path)


def file_size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def disk_full(path: str, host: str) -> Optional[str]:
    """Why a run on a (nearly) full disk went wrong, or None when there is room at ``path``."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    if st.f_bavail * st.f_frsize >= NEARLY_FULL:
        return None
    return (
        "no space left on device (ENOSPC) in %s on %s: the task's output was cut short; "
        "free space there or set state_dir to a larger disk" % (path, host)
    )


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def expand_dir(path: Optional[str]) -> str:
    """A workdir as the task sees it: "~" expanded, relative to the home dir (as ssh does)."""
    home = os.path.expanduser("~")
    return os.path.normpath(os.path.join(home, os.path.expanduser(path))) if path else home


# ------------------------------------------------------------------------------------------------
# Snapshots: the content-addressed blob store, materialised trees, each run's working directory
# ------------------------------------------------------------------------------------------------


class Store:
    """STATE_DIR/store: blobs/<aa>/<sha256> (0444, written to tmp/, renamed once the hash checks
    and the data is on disk: fsynced per FLUSH_BYTES of blobs, after their write-back began),
    snapshots/<id>/ (a tree materialised from the manifest blob <id>, renamed into
    place whole once every blob is there, then read-only), needs/<queue> (the snapshots a queue
    still needs, for clean-up), id (names the store: two hosts on one home give the same one).
    STATE_DIR/cwd/<run_id>/ is a run's working directory: one symlink per top-level entry of its
    snapshot (which also names the snapshot), touched by the keeper when the run ends.
    Every op holds the store's flock, shared; clean-up holds it exclusive."""

    def __init__(self, state_dir: str) -> None:
        self.dir = os.path.join(state_dir, "store")
        self.work = os.path.join(state_dir, "cwd")
        self.runs = os.path.join(state_dir, "runs")
        self.hashing: Dict[str, Any] = {}  # sha256 -> the hash of its part file so far
        self.manifests: Dict[str, List[List[Any]]] = {}  # checked manifests, the last 8
        self.pending: Dict[str, str] = {}  # blob -> its checked part, not yet published
        self.pending_bytes, self.unsynced = 0, False  # its size; some part is not fsynced
        self.made = False  # the store's directories exist (made once per helper)

    def ensure(self) -> None:
        if self.made:
            return
        for sub in ("blobs", "snapshots", "tmp", "needs", "idle"):
            os.makedirs(os.path.join(self.dir, sub), 0o700, exist_ok=True)
        os.makedirs(self.work, 0o700, exist_ok=True)
        self.made = True

    def ident(self) -> str:
        """The store's id, made once (O_EXCL: two hosts sharing a home agree on it)."""
        self.ensure()
        path = os.path.join(self.dir, "id")
        with contextlib.suppress(FileExistsError):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            write_all(fd, base64.b16encode(os.urandom(16)).lower() + b"\n")
            os.fsync(fd)
            os.close(fd)
        with open(path, "rb") as f:
            text = f.read().decode("ascii", "replace").strip()
        return text if _STORE_ID.fullmatch(text) else "unknown"

    @contextlib.contextmanager
    def locked(self, exclusive: bool = False) -> Any:
        self.ensure()
        fd = os.open(os.path.join(self.dir, "lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    def blob(self, sha: str) -> str:
        return os.path.join(self.dir, "blobs", sha[:2], sha)

    def snapshot(self, sha: str) -> str:
        return os.path.join(self.dir, "snapshots", sha)

    def put(self, items: Any, payload: Any, flush: bool = True) -> int:
        """Append each piece [sha, offset, size, last, "z"|"raw"] (its ``size`` bytes taken in
        turn from the request's payload; "z": zlib data) to its blob's part file; the last
        piece checks the hash. A few blobs are fsynced and published at once; more wait (as
        checked parts, their write-back started) until FLUSH_BYTES of them, or ``flush``, then
        are fsynced and published together. Returns the blobs completed."""
        ok = isinstance(items, list) and len(items) <= 10000 and isinstance(payload, bytes)
        if not ok or not all(isinstance(i, list) and len(i) == 5 and _sha(i[0])
                             and type(i[1]) is int and type(i[2]) is int and i[2] >= 0
                             and i[4] in ("z", "raw") for i in items):  # fmt: skip
            raise BadRequest("put needs blobs [[sha256, offset, size, last, z|raw]] and the"
                             " pieces' bytes as its payload")  # fmt: skip
        if sum(i[2] for i in items) != len(payload):
            raise BadRequest("put: the pieces' sizes do not add up to the payload's")
        view, at, done = memoryview(payload), 0, 0
        few = len(items) <= FSYNC_MAX  # each complete file fsynced; else one sync for many
        for sha, offset, size, last, enc in items:
            data = view[at : at + size]
            part = self.put_piece(sha, offset, data, last is True, enc == "z", few)
            at += size
            if part:
                self.pending[sha] = part
                self.pending_bytes += size
                self.unsynced = self.unsynced or not few
                done += 1
        if few or flush or self.pending_bytes >= FLUSH_BYTES:
            self.flush()
        return done

    def flush(self) -> None:
        """Publish the checked parts: an fdatasync of each (unless done; their write-back began
        as they were written, so most have reached the disk: cheaper than an fsync per write,
        and unlike sync() it never waits for data others wrote), then the renames (a blob is
        never named before its bytes are on disk). A part removed meanwhile (``hosts gc
        --now``) is dropped: the next ``snapshot`` lists it as missing."""
        if self.pending and self.unsynced:
            for part in self.pending.values():  # written back already (see put_piece)
                with contextlib.suppress(FileNotFoundError):
                    fd = os.open(part, os.O_RDONLY)
                    try:
                        os.fdatasync(fd)
                    finally:
                        os.close(fd)
        for sha, part in self.pending.items():
            try:
                try:
                    os.replace(part, self.blob(sha))
                except FileNotFoundError:  # the first blob of its directory
                    os.makedirs(os.path.dirname(self.blob(sha)), 0o700, exist_ok=True)
                    os.replace(part, self.blob(sha))
            except FileNotFoundError:
                pass
        self.pending, self.pending_bytes, self.unsynced = {}, 0, False

    def put_piece(
        self, sha: str, offset: int, data: Any, last: bool, z: bool, sync: bool
    ) -> Optional[str]:
        """Append one piece (zlib-compressed when ``z``); the part file once the last piece
        has checked (on disk first when ``sync``), else None."""
        if sha in self.pending or os.path.exists(self.blob(sha)):
            return None  # here already; or another host of this store (a shared home) wrote it
        raw = data
        if z:
            inflate = zlib.decompressobj()
            raw = inflate.decompress(data, MAX_REQUEST)
            if inflate.unconsumed_tail:
                raise BadRequest("blob %s: a piece inflates past %d bytes" % (sha, MAX_REQUEST))
        part = os.path.join(self.dir, "tmp", "%s.%d.part" % (sha, os.getpid()))
        if offset == 0 and last:  # a whole blob: checked before anything is written
            self.hashing.pop(sha, None)
            got = hashlib.sha256(raw).hexdigest()
            if got != sha:
                raise BadRequest("blob %s arrived corrupted (sha256 %s): send it again"
                                 % (sha, got))  # fmt: skip
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
            try:
                fd = os.open(part, flags, 0o444)
            except FileExistsError:  # left by an earlier helper with this pid (read-only)
                os.unlink(part)
                fd = os.open(part, flags, 0o444)
            try:
                write_all(fd, raw)
                if sync:
                    os.fdatasync(fd)
                else:  # start writing it back now: its fdatasync at the flush waits less
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
            return part
        fd = os.open(part, os.O_RDWR | os.O_CREAT | (os.O_TRUNC if offset == 0 else 0), 0o600)
        try:
            have = os.fstat(fd).st_size
            if have != offset:
                raise BadRequest("blob %s: piece at %d, have %d bytes: send it again from 0"
                                 % (sha, offset, have))  # fmt: skip
            if offset == 0:
                self.hashing[sha] = hashlib.sha256()
            elif sha not in self.hashing:  # a part left by an earlier helper with this pid
                raise BadRequest("blob %s: piece at %d of no transfer: send it again from 0"
                                 % (sha, offset))  # fmt: skip
            os.lseek(fd, offset, os.SEEK_SET)
            write_all(fd, raw)
            if sync and last:
                os.fdatasync(fd)
            elif not sync:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        h = self.hashing[sha]  # hashed as it arrives: the file is not read back
        h.update(raw)
        if not last:
            return None
        del self.hashing[sha]
        if h.hexdigest() != sha:
            os.unlink(part)
            raise BadRequest("blob %s arrived corrupted (sha256 %s): send it again"
                             % (sha, h.hexdigest()))  # fmt: skip
        os.chmod(part, 0o444)
        return part

    def manifest(self, sha: str) -> List[List[Any]]:
        """The checked rows of manifest blob ``sha`` (kept for the next request: a blob never
        changes)."""
        if sha in self.manifests:
            return self.manifests[sha]
        with open(self.blob(sha), "rb") as f:
            doc = json.loads(f.read().decode("ascii"))
        rows = doc.get("files") if isinstance(doc, dict) and doc.get("version") == 1 else None
        if not isinstance(rows, list):
            raise BadRequest("blob %s is not a snapshot manifest" % sha)
        for row in rows:
            ok = isinstance(row, list) and len(row) == 4 and row[1] in ("f", "x", "l")
            if not (ok and isinstance(row[0], str) and _sha(row[3]) and _rel(row[0])):
                raise BadRequest("snapshot %s: bad manifest entry %.80r" % (sha, row))
        if len(self.manifests) >= 8:
            self.manifests.pop(next(iter(self.manifests)))
        self.manifests[sha] = rows
        return rows

    def materialise(self, sha: str) -> Dict[str, Any]:
        """{"complete": true} once snapshots/<sha> is there (made now if every blob is), else
        {"complete": false, "missing": [sha256 of blobs to send, the manifest's first]}."""
        self.flush()
        if os.path.isdir(self.snapshot(sha)):
            return {"complete": True}
        if not os.path.exists(self.blob(sha)):
            return {"complete": False, "missing": [sha]}
        rows = self.manifest(sha)
        blobs = os.path.join(self.dir, "blobs", "")
        have = os.path.exists
        missing = sorted({r[3] for r in rows if not have("%s%s/%s" % (blobs, r[3][:2], r[3]))})
        if missing:
            return {"complete": False, "missing": missing[:MISSING_LIMIT]}
        tmp = os.path.join(self.dir, "tmp", "%s.%d.tree" % (sha, os.getpid()))
        if os.path.lexists(tmp):
            remove_all(tmp)
        os.mkdir(tmp, 0o700)
        self.fill(tmp, rows, blobs)
        try:  # the tree appears whole, or not at all (moving a directory needs it writable)
            os.rename(tmp, self.snapshot(sha))
        except OSError:
            remove_all(tmp)
            if not os.path.isdir(self.snapshot(sha)):  # not made first by another helper
                raise
        os.chmod(self.snapshot(sha), 0o555)
        return {"complete": True, "files": len(rows)}

    def fill(self, tmp: str, rows: List[List[Any]], blobs: str) -> None:
        """Place every file of ``rows`` under ``tmp``, then make its directories read-only."""
        made = {""}
        link = os.geteuid() != 0
        for path, mode, _, blob in rows:
            parent = path.rpartition("/")[0]
            if parent not in made:
                os.makedirs("%s/%s" % (tmp, parent), 0o700, exist_ok=True)
                while parent not in made:
                    made.add(parent)
                    parent = parent.rpartition("/")[0]
            self.place("%s/%s" % (tmp, path), mode, "%s%s/%s" % (blobs, blob[:2], blob), link)
        for d in made:
            if d:
                os.chmod("%s/%s" % (tmp, d), 0o555)

    def place(self, dest: str, mode: str, blob: str, link: bool) -> None:
        if mode == "l":
            with open(blob, "rb") as f:
                os.symlink(f.read(), dest)
            return
        # A hard link: the tree costs no second copy. Not for root, whom 0444 does not stop:
        # a task writing into its tree would change the blob every later snapshot links to.
        if mode == "f" and link:
            with contextlib.suppress(OSError):
                return os.link(blob, dest)
        shutil.copyfile(blob, dest)
        os.chmod(dest, 0o555 if mode == "x" else 0o444)

    def workdir(self, run_id: str, sha: str) -> str:
        """Make cwd/<run_id>/: a symlink to each top-level entry of snapshot ``sha`` (so a
        run's start costs the same whatever the tree's file count); its path."""
        tree = self.snapshot(sha)
        if not os.path.isdir(tree):
            raise SnapshotMissing("snapshot %s is not on this host: it is sent before its runs"
                                  % sha)  # fmt: skip
        work = os.path.join(self.work, run_id)
        idle = os.path.join(self.dir, "idle")
        for name in os.listdir(idle) if not os.path.lexists(work) else ():
            if name.startswith(sha + "."):  # an ended run's, showing this tree and nothing else
                with contextlib.suppress(FileNotFoundError):  # taken by another helper
                    os.rename(os.path.join(idle, name), work)
                    return work
        os.makedirs(work, 0o700, exist_ok=True)
        for name in os.listdir(tree):
            with contextlib.suppress(FileExistsError):
                os.symlink(os.path.join(tree, name), os.path.join(work, name))
        return work

    def recycle_workdir(self, run_id: str) -> None:
        """Keep cwd/<run_id>/ of an ended run for the next run of its snapshot (idle/<sha>.
        <run_id>) when it holds exactly the links ``workdir`` made: the run made nothing that
        ``keep`` should keep, and making a directory and links costs new inodes per run."""
        work = os.path.join(self.work, run_id)
        try:
            st, names = os.lstat(work), sorted(os.listdir(work))
            target = os.readlink(os.path.join(work, names[0])) if names else ""
            sha = os.path.basename(os.path.dirname(target))
            tree = self.snapshot(sha)
            if not (_sha(sha) and st.st_mode & 0o177777 == 0o40700 and names == sorted(
                    os.listdir(tree))):  # fmt: skip
                return
            for name in names:
                if os.readlink(os.path.join(work, name)) != os.path.join(tree, name):
                    return
            with self.locked():
                idle = os.path.join(self.dir, "idle")
                if len(os.listdir(idle)) < IDLE_MAX:
                    os.rename(work, os.path.join(idle, "%s.%s" % (sha, run_id)))
        except (OSError, IndexError):
            return  # not a shipped run's, or changed by it: it stays until `keep`

    def gc(self, queue: str, needed: List[str], keep: float, grace: float) -> Dict[str, int]:
        """Remove work dirs of runs ended (exit.json, or their record cleaned up) and untouched
        for ``keep`` s, snapshots no queue needs and no
        kept work dir uses, then blobs no kept snapshot names, and parts of cut transfers.
        Snapshots, blobs and parts younger than ``grace`` s stay: another dispatch may be
        sending them for tasks it has not told us of. The caller holds the exclusive lock."""
        self.flush()
        remove_all(os.path.join(self.dir, "idle"))  # reusable run dirs: a cache, made again
        os.mkdir(os.path.join(self.dir, "idle"), 0o700)
        now, out = time.time(), {"runs": 0, "snapshots": 0, "blobs": 0, "bytes": 0}
        young = now - grace
        write_file(os.path.join(self.dir, "needs", queue), {"snapshots": needed})
        used = set()
        for run in os.listdir(self.work):
            work = os.path.join(self.work, run)
            record = os.path.join(self.runs, run)
            ended = os.path.exists(os.path.join(record, "exit.json")) or not os.path.isdir(record)
            if ended and os.lstat(work).st_mtime + keep <= now:  # the keeper touches it at the end
                remove_all(work)
                out["runs"] += 1
                continue
            snapshots = os.path.join(self.dir, "snapshots") + "/"
            with os.scandir(work) as entries:
                for entry in entries:  # its snapshot: where its links lead
                    target = os.readlink(entry.path) if entry.is_symlink() else ""
                    if target.startswith(snapshots):
                        used.add(target[len(snapshots) :].partition("/")[0])
                        break
        for name in os.listdir(os.path.join(self.dir, "needs")):
            doc = read_json(os.path.join(self.dir, "needs", name))[0] or {}
            used.update(s for s in doc.get("snapshots") or () if _sha(s))
        for name in os.listdir(os.path.join(self.dir, "snapshots")):
            if name not in used and os.lstat(self.snapshot(name)).st_mtime < young:
                remove_all(self.snapshot(name))
                out["snapshots"] += 1
        named = set(used)
        for sha in used:
            with contextlib.suppress(OSError, ValueError, BadRequest):
                named.update(r[3] for r in self.manifest(sha))
        for sub in os.listdir(os.path.join(self.dir, "blobs")):
            for sha in os.listdir(os.path.join(self.dir, "blobs", sub)):
                st = os.lstat(self.blob(sha))
                if sha not in named and st.st_mtime < young:
                    out["bytes"] += st.st_size
                    os.unlink(self.blob(sha))
                    out["blobs"] += 1
        for name in os.listdir(os.path.join(self.dir, "tmp")):  # cut transfers' parts
            if os.lstat(os.path.join(self.dir, "tmp", name)).st_mtime < young:
                remove_all(os.path.join(self.dir, "tmp", name))
        return out


class SnapshotMissing(BadRequest):
    """A launch's snapshot is not (or no longer: a clean-up) on this host."""


def _sha(value: Any) -> bool:
    return isinstance(value, str) and _SHA256.fullmatch(value) is not None


def _rel(path: str) -> bool:
    """A manifest path: relative, no empty, . or .. component, no NUL."""
    parts = path.split("/")
    return bool(path) and "\0" not in path and all(p not in ("", ".", "..") for p in parts)


def remove_all(path: str) -> None:
    """Remove a tree, making its read-only directories writable first (snapshots are 0555)."""
    if not os.path.lexists(path):
        return
    if os.path.islink(path) or not os.path.isdir(path):
        os.unlink(path)
        return
    for root, dirs, _ in os.walk(path):
        for d in dirs:
            with contextlib.suppress(OSError):
                if not os.path.islink(os.path.join(root, d)):
                    os.chmod(os.path.join(root, d), 0o700)
    with contextlib.suppress(OSError):
        os.chmod(path, 0o700)
    shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "~/.labtasker", *sys.argv[2:3])
