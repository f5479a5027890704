"""Checks every message a host sends before the controller uses it: nothing from a host is trusted.

A line, an event or a reply that breaks the protocol's shape or the controller's own limits
raises ``ProtocolViolationError`` (``HOST: protocol violation: ...``); the caller drops the host.
What passes comes back as a new dict holding only checked values: run ids that match the helper's
pattern and that the controller asked about, texts bounded and free of control characters,
results bounded in size and depth. Pure: no I/O, whatever the other end is.
"""

from __future__ import annotations

import binascii
import json
import re
from collections.abc import Collection, Mapping
from typing import Any

from dispatcher.errors import ProtocolViolationError
from dispatcher.remote import protocol

#: The helper's run-id rule (helper.py ``_run_id``): also a safe file name on the controller.
RUN_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
#: Containers and elements in one line, counted as ``, [ {`` bytes (an upper bound): parsing a
#: line costs up to ~60 bytes of memory per element, so this bounds a line's parse at ~60 MiB.
MAX_ITEMS = 1_000_000
#: Characters of one text (an error, a reason, a name); NUL is refused, other controls replaced.
MAX_TEXT = 16 * 1024
#: Entries in one reply's map or list (runs, GPU processes, lines).
MAX_ENTRIES = 100_000
#: A result, as the controller stores it (compact JSON), and its nesting depth.
MAX_RESULT_BYTES = 1024 * 1024
MAX_RESULT_DEPTH = 64
#: How the helper says it left out a result over its own limit (helper.py ``report``).
_HELPER_RESULT_LIMIT = re.compile(r"result\.json is \d+ bytes; the limit is \d+")
_CONTROL = re.compile(r"[\x01-\x1f\x7f-\x9f]")
_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")  # a JSON escape of half a UTF-16 pair
_STATES = frozenset({"absent", "starting", "running", "exited", "lost"})
_LAUNCH_STATUS = frozenset({"started", "exists", "error"})
_REPORT_KEYS = frozenset(
    ("run_id", "state", "pid", "exit_code", "log_size", "timed_out", "cancelled", "inline_omitted",
     "started_at", "finished_at", "signal", "boot_id", "error", "result_error", "log", "result",
     "result_refused", "log_tail", "oom_killed")
)  # fmt: skip


def violation(host: str, what: str) -> ProtocolViolationError:
    """The one error line for a host that broke the protocol."""
    return ProtocolViolationError(
        f"{host}: protocol violation: {what}; the host is dropped (retried in a minute): "
        "check what runs there as labtasker's helper",
        host=host,
    )


def parse_line(host: str, line: bytes) -> dict[str, Any]:
    """One line from a helper as a JSON object, within ``MAX_ITEMS`` elements."""
    if line.count(b",") + line.count(b"[") + line.count(b"{") > MAX_ITEMS:
        raise violation(host, f"a line of {len(line)} bytes with over {MAX_ITEMS} JSON elements")
    try:
        msg = json.loads(line)
        if _SURROGATE.search(line):  # escapes of a pair are fine; a lone one is not text
            json.dumps(msg, ensure_ascii=False).encode()
    except (ValueError, RecursionError):  # too deep to be ours; UnicodeEncodeError is a ValueError
        msg = None
    if not isinstance(msg, dict):
        raise violation(host, f"a line that is not a JSON object of text: {line[:100]!r}")
    return msg


def text(
    host: str, where: str, value: Any, limit: int = MAX_TEXT, *, output: bool = False
) -> str | None:
    """A text field (None allowed): at most ``limit`` characters; control characters become
    spaces. A NUL is refused, except in ``output`` (a task's own output may hold anything)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise violation(host, f"{where} is {_kind(value)}, not a text")
    if len(value) > limit:
        raise violation(host, f"{where} is {len(value)} characters long (limit {limit})")
    if "\0" in value and not output:
        raise violation(host, f"{where} contains a NUL byte")
    return _CONTROL.sub(" ", value.replace("\0", " "))


def run_id(host: str, where: str, value: Any, asked: Collection[str]) -> str:
    """A run id that matches the helper's rule and is one the controller asked about."""
    if not isinstance(value, str) or not RUN_ID.fullmatch(value) or value in (".", ".."):
        raise violation(host, f"{where} has a malformed run id {str(value)[:100]!r}")
    if value not in asked:
        raise violation(host, f"{where} names run {value!r}, which was not asked about")
    return value


def check_hello(host: str, msg: Mapping[str, Any]) -> dict[str, Any]:
    """The helper's hello: flat, its texts bounded (they reach ``hosts check`` and messages)."""
    return _scalars(host, "the hello", msg)


def check_event(host: str, msg: Mapping[str, Any], watched: Collection[str]) -> dict[str, Any]:
    """The exit event (the only one after the hello), its report checked: runs of ``watched``."""
    if msg.get("event") != "exit":
        raise violation(host, f"an unexpected event {str(msg.get('event'))[:100]!r}")
    return {"event": "exit", "run": check_report(host, msg.get("run"), watched, "an exit event")}


def check_reply(
    host: str, op: str, params: Mapping[str, Any], reply: Mapping[str, Any]
) -> dict[str, Any]:
    """The reply to ``op`` sent with ``params``; run ids must be among those it named."""
    ok = reply.get("ok")
    if not isinstance(ok, bool):
        raise violation(host, f"the reply to {op!r} has no true/false 'ok'")
    out: dict[str, Any] = {"id": reply.get("id"), "ok": ok}
    if not ok:
        out["error"] = text(host, f"the error of {op!r}", reply.get("error")) or "no reason given"
        return out
    check = _REPLIES.get(op)
    # An op without a checker here (one added later) gets its reply as parsed, bounded by the line.
    out.update(check(host, params, reply) if check is not None else reply)
    return out


def check_report(host: str, rep: Any, asked: Collection[str], where: str) -> dict[str, Any]:
    """A REPORT (helper.py's docstring) about one of the runs in ``asked``."""
    if not isinstance(rep, dict):
        raise violation(host, f"{where} carries a report that is {_kind(rep)}")
    rid = run_id(host, where, rep.get("run_id"), asked)
    where = f"the report of run {rid}"
    out = _scalars(host, where, rep, skip=_REPORT_KEYS)  # fields a later helper adds, bounded
    state = rep.get("state")
    if state not in _STATES:
        raise violation(host, f"{where} has state {str(state)[:100]!r}")
    out.update(run_id=rid, state=state)
    for key in ("pid", "exit_code"):
        out[key] = _int(host, f"{where}: {key}", rep.get(key), nullable=True)
    out["log_size"] = _int(host, f"{where}: log_size", rep.get("log_size", 0), lo=0)
    for key in ("timed_out", "cancelled", "inline_omitted"):
        value = rep.get(key, False)
        if not isinstance(value, bool):
            raise violation(host, f"{where}: {key} is {_kind(value)}, not true/false")
        out[key] = value
    for key in ("started_at", "finished_at", "signal", "boot_id"):
        out[key] = text(host, f"{where}: {key}", rep.get(key), limit=128)
    for key in ("error", "result_error"):
        out[key] = text(host, f"{where}: {key}", rep.get(key))
    out["log"] = _inline_log(host, where, rep.get("log"))
    out["log_tail"] = _lines(host, f"{where}: log_tail", rep.get("log_tail"))
    oom = rep.get("oom_killed")
    if oom is not None and not isinstance(oom, bool):
        raise violation(host, f"{where}: oom_killed is {_kind(oom)}, not true/false/null")
    out["oom_killed"] = oom
    out["result"], refused = _result(host, where, rep.get("result"))
    if refused is None and out["result_error"] and _HELPER_RESULT_LIMIT.search(out["result_error"]):
        refused = out["result_error"]
    if refused is not None:
        out["result_refused"] = refused
    return out


# -- per-op replies ---------------------------------------------------------------------------


def _launch_reply(host: str, run: str, got: Any) -> dict[str, Any]:
    where = f"the launch reply for run {run}"
    if not isinstance(got, dict) or got.get("status") not in _LAUNCH_STATUS:
        raise violation(host, f"{where} has no status started/exists/error")
    out: dict[str, Any] = {"status": got["status"]}
    if "pid" in got:
        out["pid"] = _int(host, f"{where}: pid", got["pid"], nullable=True)
    if "job_id" in got:  # a SLURM job; dispatch/cluster.py checks its form
        out["job_id"] = text(host, f"{where}: job_id", got["job_id"], limit=128)
    if got["status"] == "exists":
        out["run"] = check_report(host, got.get("run"), (run,), where)
    elif got["status"] == "error":
        out["error"] = text(host, f"{where}: error", got.get("error"))
        out.update((k, got.get(k) is True) for k in ("snapshot_missing", "withdrawn"))
    return out


def _launch(host: str, params: Mapping[str, Any], reply: Mapping[str, Any]) -> dict[str, Any]:
    return _launch_reply(host, str(params.get("run_id")), reply)


def _launches(host: str, params: Mapping[str, Any], reply: Mapping[str, Any]) -> dict[str, Any]:
    asked = {str(r.get("run_id")) for r in params.get("runs") or ()}
    runs = _map(host, "the reply to 'launches'", reply.get("runs"), asked)
    return {"runs": {k: _launch_reply(host, k, v) for k, v in runs.items()}}


def _probe(host: str, params: Mapping[str, Any], reply: Mapping[str, Any]) -> dict[str, Any]:
    runs = _map(host, "the reply to 'probe'", reply.get("runs"), set(params.get("runs") or ()))
    where = "the reply to 'probe'"
    return {"runs": {k: check_report(host, v, (k,), where) for k, v in runs.items()}}


def _tail(host: str, params: Mapping[str, Any], reply: Mapping[str, Any]) -> dict[str, Any]:
    lines = _map(host, "the reply to 'tail'", reply.get("lines"), set(params.get("runs") or ()))
    limit = int(params.get("bytes") or 4096)
    where = "the tail of a run"
    return {"lines": {k: text(host, where, v, limit, output=True) for k, v in lines.items()}}


def _read(host: str, params: Mapping[str, Any], reply: Mapping[str, Any]) -> dict[str, Any]:
    data = reply.get("data")
    if not isinstance(data, str) or len(data) > (int(params.get("size") or 0) + 2) // 3 * 4:
        raise violation(host, "the reply to 'read' has no base64 'data' within the size asked")
    try:
        binascii.a2b_base64(data, strict_mode=True)
    except binascii.Error:
        raise violation(host, "the reply to 'read' has data that is not base64") from None
    return {"data": data, "size": _int(host, "the reply to 'read': size", reply.get("size"), lo=0)}


def _cleanup(host: str, params: Mapping[str, Any], reply: Mapping[str, Any]) -> dict[str, Any]:
    asked = set(params.get("runs") or ())
    refused = reply.get("refused") or []
    if not isinstance(refused, list) or len(refused) > len(asked):
        raise violation(host, "the reply to 'cleanup' has a bad 'refused' list")
    where = "the reply to 'cleanup'"
    return {
        "removed": _int(host, f"{where}: removed", reply.get("removed", 0), lo=0),
        "refused": [run_id(host, where, r, asked) for r in refused],
    }


def _gpus(host: str, params: Mapping[str, Any], reply: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"error": text(host, "the GPU query's error", reply.get("error"))}
    for key in ("gpus", "processes"):
        rows = reply.get(key) or []
        if not isinstance(rows, list) or len(rows) > MAX_ENTRIES:
            raise violation(host, f"the reply to 'gpus' has a bad {key!r} list")
        out[key] = [_scalars(host, f"the reply to 'gpus': {key}", r) for r in rows]
    where = "the reply to 'gpus'"
    for gpu in out["gpus"]:
        _int(host, f"{where}: a GPU index", gpu.get("index"), nullable=True, lo=0)
        for key in ("memory_used_mib", "memory_total_mib"):
            _mib(host, f"{where}: a GPU's {key}", gpu.get(key))
        text(host, f"{where}: a GPU name", gpu.get("name"), 256)
    for proc in out["processes"]:
        _mib(host, f"{where}: a process's used_memory_mib", proc.get("used_memory_mib"))
        run = proc.get("run_id")
        if run is not None and (not isinstance(run, str) or not RUN_ID.fullmatch(run)):
            raise violation(host, f"{where}: a process has a bad run_id {str(run)[:80]!r}")
    return out


_CONTROL_BUT_NEWLINE = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")


def _lines(host: str, where: str, value: Any) -> str | None:
    """A task's last output lines: at most 8192 characters; controls but newlines become spaces."""
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 8192:
        raise violation(host, f"{where} is not a text of at most 8192 characters")
    return _CONTROL_BUT_NEWLINE.sub(" ", value)


#: GPU memory beyond any card (1 PiB, in MiB): a reply claiming more is not nvidia-smi's.
_MAX_MIB = 2**30


def _mib(host: str, where: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise violation(host, f"{where} is {_kind(value)}, not a number")
    if not 0 <= value <= _MAX_MIB:
        raise violation(host, f"{where} is {value!r}, outside 0 to {_MAX_MIB}")


_SHA256 = re.compile(r"[0-9a-f]{64}")


def _snapshot(host: str, params: Mapping[str, Any], reply: Mapping[str, Any]) -> dict[str, Any]:
    """Whether the snapshot is complete there; if not, the blobs it lacks (sha256s, bounded)."""
    where, missing = "the reply to 'snapshot'", reply.get("missing") or []
    if not isinstance(reply.get("complete"), bool):
        raise violation(host, f"{where} has no true/false 'complete'")
    bad = not isinstance(missing, list) or len(missing) > MAX_ENTRIES
    if bad or not all(isinstance(m, str) and _SHA256.fullmatch(m) for m in missing):
        raise violation(host, f"{where} has a bad 'missing' list (sha256s expected)")
    store = reply.get("store")
    if not isinstance(store, str) or not re.fullmatch(r"[0-9a-f]{32}|unknown", store):
        raise violation(host, f"{where} has a bad 'store' id")
    return {"complete": reply["complete"], "missing": list(missing), "store": store}


def _flat(host: str, params: Mapping[str, Any], reply: Mapping[str, Any]) -> dict[str, Any]:
    return _scalars(host, "a reply", reply, skip=("id", "ok"))


def _put(host: str, params: Mapping[str, Any], reply: Mapping[str, Any]) -> dict[str, Any]:
    """Blobs stored; with ``snapshot`` asked, that snapshot's state as ``snapshot`` says it."""
    got = {"stored": _int(host, "the reply to 'put': stored", reply.get("stored"))}
    return {**_snapshot(host, params, reply), **got} if params.get("snapshot") else got


_REPLIES = {
    "ping": _flat,
    "kill": _flat,
    "check": _flat,
    "launch": _launch,
    "launches": _launches,
    "probe": _probe,
    "tail": _tail,
    "read": _read,
    "cleanup": _cleanup,
    "gpus": _gpus,
    "snapshot": _snapshot,
    "put": _put,
    "gc": _flat,
}


# -- values -----------------------------------------------------------------------------------


def _kind(value: Any) -> str:
    return "null" if value is None else f"a {type(value).__name__}"


def _int(host: str, where: str, value: Any, *, nullable: bool = False, lo: int = -(2**63)) -> Any:
    if value is None and nullable:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value < 2**63:
        raise violation(host, f"{where} is {str(value)[:100]!r}, not a number >= {lo}")
    return value


def _map(host: str, where: str, value: Any, asked: Collection[str]) -> dict[str, Any]:
    """A JSON object keyed by run ids, each one of ``asked``."""
    if not isinstance(value, dict):
        raise violation(host, f"{where} is {_kind(value)}, not an object")
    if len(value) > len(asked):
        raise violation(host, f"{where} has {len(value)} entries for {len(asked)} runs asked about")
    for key in value:
        run_id(host, where, key, asked)
    return value


def _scalars(host: str, where: str, value: Any, skip: Collection[str] = ()) -> dict[str, Any]:
    """A flat object: its texts checked, numbers and booleans kept, anything nested dropped
    (and the keys in ``skip``, which the caller checks)."""
    if not isinstance(value, dict):
        raise violation(host, f"{where} is {_kind(value)}, not an object")
    out: dict[str, Any] = {}
    for key, item in value.items():
        if key in skip:
            continue
        if len(key) > 128:
            raise violation(host, f"{where} has a key {len(key)} characters long")
        if isinstance(item, str):
            out[key] = text(host, f"{where}: {key[:50]}", item)
        elif item is None or isinstance(item, bool | int | float):
            out[key] = item
    return out


def _inline_log(host: str, where: str, log: Any) -> str | None:
    if log is None:
        return None
    limit = (protocol.INLINE_LOG_LIMIT + 2) // 3 * 4
    if not isinstance(log, str) or len(log) > limit:
        raise violation(host, f"{where} has an inline log that is not base64 within {limit} bytes")
    try:
        binascii.a2b_base64(log, strict_mode=True)
    except binascii.Error:
        raise violation(host, f"{where} has an inline log that is not base64") from None
    return log


def _result(host: str, where: str, result: Any) -> tuple[dict[str, Any] | None, str | None]:
    """(the result, None) or (None, why the controller refuses to record it)."""
    if result is None:
        return None, None
    if not isinstance(result, dict):
        raise violation(host, f"{where} has a result that is {_kind(result)}, not an object")
    depth = _depth(result, MAX_RESULT_DEPTH)
    if depth > MAX_RESULT_DEPTH:
        return None, f"the result is nested more than {MAX_RESULT_DEPTH} levels deep"
    size = len(json.dumps(result, ensure_ascii=False, separators=(",", ":")).encode())
    if size > MAX_RESULT_BYTES:
        return None, f"the result is {size} bytes; the limit is {MAX_RESULT_BYTES}"
    return result, None


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of ``value``, counted without recursion; stops past ``limit``."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    deepest = 0
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        children = item.values() if isinstance(item, dict) else item
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return deepest
