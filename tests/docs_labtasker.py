"""The `labtasker` command the docs run puts first on PATH: the real CLI, started as the installed
``labtasker`` script starts it (``dispatcher.cli:main``, this checkout first on PYTHONPATH), with
every host of the hosts file it will read made local, and ``status --watch`` given Ctrl-C.

- Hosts: each ``[hosts.NAME]`` other than ``local`` gets ``ssh = false`` (its own ``ssh =`` line is
  dropped): the host runs its tasks on this machine, as docs/hosts.md says ``ssh = false`` does, so
  a doc's ``[hosts.gpu-a]`` runs here with the GPUs of the stub nvidia-smi on PATH. The file is
  the one ``--hosts`` names, else ./hosts.toml; it is rewritten in place before the command runs.
- ``status --watch`` runs until Ctrl-C by design: it gets SIGINT once it has printed a whole frame,
  as a user would press it, and that ending counts as success (no frame: exit 1).
- ``ui`` serves until Ctrl-C too: it runs with ``--no-browser``, and gets SIGINT once the address it
  printed has answered ``/api/overview`` with the token (200), which counts as success.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

_FRAME = re.compile(r"^-- \d\d:\d\d:\d\d --$")
_HEADER = re.compile(r"^\s*\[\s*hosts\.([^\]\s]+)\s*\]")
_TABLE = re.compile(r"^\s*\[")
_SSH = re.compile(r"^\s*ssh\s*=")
#: What the console script ``labtasker`` runs (pyproject.toml's [project.scripts]).
_MAIN = "import sys; from dispatcher.cli import main; sys.argv[0] = 'labtasker'; sys.exit(main())"


def localize(text: str) -> str:
    """``text`` (a hosts.toml) with every host but ``local`` reached as ``ssh = false``."""
    out: list[str] = []
    in_host = False
    for line in text.splitlines():
        if in_host and _SSH.match(line):
            continue
        out.append(line)
        header = _HEADER.match(line)
        if _TABLE.match(line):
            in_host = header is not None
        if header and header.group(1).strip("\"'") != "local":
            out.append("ssh = false  # made local by the docs run")
    return "\n".join(out) + "\n"


def main(args: list[str]) -> int:
    """Localize the hosts file, then run the real CLI with ``args``."""
    at = args.index("--hosts") + 1 if "--hosts" in args[:-1] else -1
    hosts = Path(args[at] if at > 0 else "hosts.toml")
    if hosts.is_file():
        text = hosts.read_text(encoding="utf-8")
        if localize(text) != text:
            hosts.write_text(localize(text), encoding="utf-8")
    argv = [sys.executable, "-c", _MAIN, *args]
    if "status" in args and {"--watch", "-w"} & set(args):
        return watch(argv)
    if "ui" in args and "--help" not in args:
        return serve([*argv, "--no-browser"])
    os.execv(sys.executable, argv)
    return 0  # not reached


def watch(argv: list[str]) -> int:
    """Run ``status --watch`` into a pipe, pass its output on, and press Ctrl-C once it has
    printed one whole frame (the next frame's ``-- HH:MM:SS --`` line has come)."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    headers = 0
    for line in proc.stdout:
        sys.stdout.write(line)
        headers += bool(_FRAME.match(line))
        if headers == 2:
            proc.send_signal(signal.SIGINT)
            break
    sys.stdout.write(proc.stdout.read())
    code = proc.wait()
    return 0 if headers == 2 and code in (0, 130, -signal.SIGINT) else code or 1


def serve(argv: list[str]) -> int:
    """Run ``ui``, ask its overview once with the printed token, then press Ctrl-C."""
    import urllib.request

    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    sys.stdout.write(line)
    status = 0
    if line.startswith("labtasker ui: http://"):
        base, _, token = line.split(": ", 1)[1].strip().partition("/?token=")
        with urllib.request.urlopen(f"{base}/api/overview?token={token}", timeout=60) as reply:
            status = reply.status
        proc.send_signal(signal.SIGINT)
    code = proc.wait()
    return 0 if status == 200 and code in (0, 130, -signal.SIGINT) else code or 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
