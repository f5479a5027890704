"""The controller <-> helper protocol: version, the helper's source and hash, the bootstrap line.

Wire format: one JSON object per line (UTF-8) in each direction over the helper's stdin/stdout.

Start-up (see ``BOOTSTRAP``): the controller runs
``python3 -c BOOTSTRAP STATE_DIR SHA256 SIZE [FENCE_KEY]``.
The bootstrap checks the interpreter (>= 3.8) and creates STATE_DIR (0700). It refuses (exit 5,
one ``labtasker: state_dir ...`` line on stderr) a STATE_DIR that is the home directory or holds
it, belongs to another user (or is a symlink another user owns), or is writable by others: it
would otherwise make someone's directory private, or trust files others can place. It then looks
for ``STATE_DIR/helper-<sha16>.py``. If that file's SHA-256 equals SHA256 it prints ``have``;
otherwise it prints ``need``, reads exactly SIZE bytes of helper source from stdin, checks their
hash, writes them atomically (0600) and runs them. A file changed by anyone else fails the hash
and is replaced, never trusted. The helper then prints its hello event and serves requests.

Requests:  {"id": N, "op": NAME, ...params}
           or ``#payload N {"id": N, ...}`` then N bytes of binary payload (``put``'s pieces)
Replies:   {"id": N, "ok": true, ...result}  |  {"id": N, "ok": false, "error": TEXT}
Events:    {"event": "hello", ...}  |  {"event": "exit", "run": RUN_REPORT}

Ops, their params and replies are documented in ``dispatcher/remote/helper.py``.
"""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import resources

#: Bumped whenever a message changes shape; the controller refuses a helper with another version.
PROTOCOL_VERSION = 7
#: Starts a request line whose JSON is followed by binary bytes (must equal the helper's).
PAYLOAD_MARK = b"#payload "

#: Reports of runs whose log is at most this size carry the log inline.
INLINE_LOG_LIMIT = 64 * 1024

#: Runs inside ``python3 -c`` on the host. Keep it tiny and valid for Python 3.8+.
BOOTSTRAP = r"""
import sys,os,hashlib
if sys.version_info<(3,8):
    sys.stderr.write("labtasker: Python >= 3.8 needed on this host, found %s\n"
                     %sys.version.split()[0]);sys.exit(3)
d,h,n=os.path.expanduser(sys.argv[1]),sys.argv[2],int(sys.argv[3])
os.makedirs(d,0o700,exist_ok=True);r=os.path.realpath(d);l=os.lstat(d);s=os.stat(r);u=os.geteuid()
m=os.path.realpath(os.path.expanduser("~"))
for b,w in ((os.path.islink(d) and l.st_uid!=u,"is a symbolic link owned by uid %d"%l.st_uid),
            (m==r or m.startswith(r.rstrip("/")+"/"),"is your home directory or holds it"),
            (s.st_uid!=u,"belongs to uid %d, not to you (uid %d)"%(s.st_uid,u)),
            (s.st_mode&0o022,"is writable by other users")):
    if b:sys.stderr.write("labtasker: state_dir %s (%s) %s; set state_dir in hosts.toml to a "
                          "directory of its own, like ~/.labtasker\n"%(sys.argv[1],r,w));sys.exit(5)
os.chmod(r,0o700)
p=os.path.join(d,"helper-%s.py"%h[:16])
try:
    f=open(p,"rb");s=f.read();f.close()
except OSError:
    s=b""
if hashlib.sha256(s).hexdigest()==h:
    os.write(1,b"have\n")
else:
    os.write(1,b"need\n");c=[]
    while n>0:
        b=os.read(0,min(n,65536))
        if not b:sys.exit(4)
        c.append(b);n-=len(b)
    s=b"".join(c)
    if hashlib.sha256(s).hexdigest()!=h:
        sys.stderr.write("labtasker: helper upload corrupted\n");sys.exit(4)
    t="%s.%d.tmp"%(p,os.getpid());fd=os.open(t,os.O_WRONLY|os.O_CREAT|os.O_TRUNC,0o600)
    os.write(fd,s);os.close(fd);os.replace(t,p)
g={"__name__":"labtasker_helper","__file__":p}
exec(compile(s,p,"exec"),g)
g["main"](d,*sys.argv[4:5])
""".strip()


@cache
def helper_source() -> bytes:
    """The bytes of the helper module shipped to hosts."""
    return resources.files("dispatcher.remote").joinpath("helper.py").read_bytes()


@cache
def helper_sha256() -> str:
    """Hex SHA-256 of ``helper_source()``; names the file on the host and proves its integrity."""
    return hashlib.sha256(helper_source()).hexdigest()


def bootstrap_argv(python: str, state_dir: str, fence: str | None = None) -> list[str]:
    """The argv that starts the helper on a host (quote with ``shlex.join`` for a remote shell).

    ``fence``: the key of the queue and host this helper launches for (see the helper's
    ``Fence``): starting it fences off every older helper with that key. Only dispatch passes
    one; a helper without a key (``hosts check``, ``logs --follow``) fences nobody.
    """
    argv = [python, "-c", BOOTSTRAP, state_dir, helper_sha256(), str(len(helper_source()))]
    return [*argv, fence] if fence else argv
