"""``labtasker hosts check``: can each host be reached and used? One table row per host.
``hosts resume`` places tasks on suspended hosts again; ``hosts gc`` cleans their snapshot
stores."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from dispatcher.cli.app import app
from dispatcher.cli.dispatch import HostsOption

if TYPE_CHECKING:
    from dispatcher.config.hosts import HostSpec
    from dispatcher.ui.views import HostCheck

hosts_app = typer.Typer(help="Check and manage the hosts of hosts.toml.", no_args_is_help=True)
app.add_typer(hosts_app, name="hosts")


def describe_gpus(spec: HostSpec, inv: dict[str, Any]) -> tuple[bool, str]:
    """(usable, text): each GPU's memory use and whose processes are on it."""
    from dispatcher.dispatch.capacity import foreign_use, gpu_problem

    problem = gpu_problem(spec, inv)
    gpus = inv.get("gpus") or []
    if problem:
        return False, problem
    if not gpus:
        return True, "none (CPU-only)"
    parts = []
    processes = inv.get("processes") or []
    for g in gpus:
        used, total = g.get("memory_used_mib"), g.get("memory_total_mib")
        name = str(g.get("name") or "?").removeprefix("NVIDIA ")
        text = f"{g.get('index')}: {name} {used}/{total} MiB"
        mine = [p for p in processes if p.get("gpu_uuid") and p.get("gpu_uuid") == g.get("uuid")]
        owners = [_owner(p) for p in mine]
        ours = bool(owners) and all(o.startswith("task ") for o in owners)
        if not ours and foreign_use(g, processes, spec.max_gpu_memory_used):
            text += " busy"
        if owners:
            text += " by " + ", ".join(owners)
        parts.append(text)
    if any(not isinstance(p.get("used_memory_mib"), int | float) for p in processes):
        parts.append(
            "nvidia-smi gives no per-process memory here: tasks sharing a GPU count as using"
            " what they declared (--gpu-memory)"
        )
    return True, "; ".join(parts)


def _owner(p: dict[str, Any]) -> str:
    """A GPU process as ``hosts check`` names it: a labtasker task, or a user and pid."""
    run = str(p.get("run_id") or "")
    if run.startswith("t") and run[1:].partition("-")[0].isdigit():
        return f"task {run[1:].partition('-')[0]} (pid {p.get('pid')})"
    return f"{p.get('user') or '?'} (pid {p.get('pid')})"


async def check_host(spec: HostSpec, accept_new: bool) -> HostCheck:
    """Connect, start the helper and ask it about Python, the workdir and the GPUs."""
    from dispatcher.errors import DispatcherError
    from dispatcher.remote.session import ssh_options, start_helper
    from dispatcher.ui.views import HostCheck

    row = HostCheck(name=spec.name, ok=False)
    try:
        transport, client, hello = await start_helper(
            spec, ssh_options(spec, accept_new_host_keys=accept_new)
        )
    except DispatcherError as err:
        row.error = str(err)
        return row
    try:
        row.python, row.user = str(hello.get("python")), str(hello.get("user"))
        # A shipping host runs each task in STATE_DIR/cwd/<run id>, not in its workdir.
        runs = f"{str(hello.get('state_dir')).rstrip('/')}/cwd" if spec.sync else None
        info = await client.call("check", workdir=runs or spec.workdir)
        row.ok = bool(info.get("workdir_writable"))
        row.workdir = str(info.get("workdir")) + ("/RUN_ID" if runs else "")
        if not row.ok:
            row.error = f"workdir {row.workdir} is not writable: {info.get('workdir_error')}"
        if spec.slurm is not None:  # SLURM gives out the GPUs; sbatch is tried at dispatch
            offer = f"gres {spec.slurm.gres}" if spec.slurm.gres else "CPU jobs"
            row.gpus = f"SLURM cluster: {offer}, at most {spec.slurm.max_jobs} jobs"
        elif spec.gpus == ():
            row.gpus = f"none (CPU-only, {spec.slots} slots)"
        else:
            row.inventory = await client.call("gpus")
            gpus_ok, row.gpus = describe_gpus(spec, row.inventory)
            row.ok = row.ok and gpus_ok
    except DispatcherError as err:
        row.ok, row.error = False, str(err)
    finally:
        await client.close()
        await transport.close()
    return row


@hosts_app.command("check")
def check(
    ctx: typer.Context,
    hosts: HostsOption = Path("hosts.toml"),
    accept_new_host_keys: Annotated[
        bool, typer.Option("--accept-new-host-keys", help="Record keys of never-seen hosts.")
    ] = False,
) -> None:
    """Per host: reachable, authenticated, Python version, GPUs and who uses them, workdir;
    then the GPU table of `status --watch`: memory used, declared by the tasks sharing each GPU
    (read from the queue, when there is one), free, and who uses it.

    Exit status 1 when some host fails a check.
    """
    import asyncio

    from rich.console import Console

    from dispatcher.cli.app import db_option
    from dispatcher.config.hosts import load_hosts
    from dispatcher.config.paths import resolve_db_path
    from dispatcher.ui.views import gpu_table, hosts_table

    # Local hosts are checked as this project's queue (found or to be made here) would use them.
    config = load_hosts(hosts, resolve_db_path(db_option(ctx)))
    enabled = [h for h in config.hosts if h.enabled]

    async def run_all() -> list[HostCheck]:
        return await asyncio.gather(*(check_host(h, accept_new_host_keys) for h in enabled))

    rows = asyncio.run(run_all())
    console = Console(highlight=False)
    console.print(hosts_table(rows))
    table = gpu_table(gpu_views(enabled, rows, db_option(ctx)))
    if table is not None:
        console.print()
        console.print(table)
    raise typer.Exit(0 if all(r.ok for r in rows) else 1)


def gpu_views(
    specs: list[HostSpec], rows: list[HostCheck], db: Path | None
) -> dict[str, dict[str, Any]]:
    """Each checked host's GPUs as ``status --watch`` shows them, with what our running tasks
    there declared and use, read from the project's queue when there is one (never made here)."""
    from dispatcher.config.paths import locate_db
    from dispatcher.core.models import ACTIVE_STATES
    from dispatcher.dispatch.capacity import gpu_rows
    from dispatcher.store.queue import Store

    path = locate_db(db)[0]
    active = []
    if path.is_file():
        with Store(path, create=False).transaction() as tx:
            active = tx.tasks(states=ACTIVE_STATES)
    views: dict[str, dict[str, Any]] = {}
    for spec, row in zip(specs, rows, strict=True):
        if row.inventory is not None and spec.gpus != ():
            ours = [t for t in active if t.host == spec.name]
            gpus = gpu_rows(spec, row.inventory, ours)
            if gpus:  # a host without GPUs or nvidia-smi: its row above says so
                views[spec.name] = {"gpus": gpus}
    return views


@hosts_app.command("resume")
def resume(
    ctx: typer.Context,
    names: Annotated[list[str], typer.Argument(help="Suspended host names (as in hosts.toml).")],
) -> None:
    """Place tasks on suspended hosts again (a running dispatcher sees it within a tick)."""
    from dispatcher.cli.common import open_store
    from dispatcher.errors import UsageError
    from dispatcher.store.suspensions import resume_hosts, suspended_hosts

    store = open_store(ctx)
    with store.transaction() as tx:
        known = suspended_hosts(tx)
        resumed = resume_hosts(tx, names)
    unknown = [n for n in names if n not in known]
    for name in resumed:
        typer.echo(f"{name}: resumed")
    if unknown:
        have = ", ".join(sorted(known)) or "none"
        raise UsageError(
            f"not suspended: {', '.join(unknown)} (suspended hosts: {have});"
            " `labtasker status` lists them"
        )


async def collect_host(
    spec: HostSpec, queue_key: str, needed: set[str], keep: float, now: bool
) -> str:
    """Clean one host's snapshot store (``remote.ship.collect``); one line saying what went."""
    from dispatcher.errors import DispatcherError
    from dispatcher.remote.session import ssh_options, start_helper
    from dispatcher.remote.ship import collect, describe_collected

    try:
        transport, client, _ = await start_helper(spec, ssh_options(spec))
    except DispatcherError as err:
        return f"{spec.name}: not cleaned: {err}"
    try:
        got = await collect(client.call, queue_key, needed, keep, now=now)
        return f"{spec.name}: {describe_collected(got)}"
    except DispatcherError as err:
        return f"{spec.name}: not cleaned: {err}"
    finally:
        await client.close()
        await transport.close()


@hosts_app.command("gc")
def gc(
    ctx: typer.Context,
    hosts: HostsOption = Path("hosts.toml"),
    now: Annotated[
        bool,
        typer.Option("--now", help="Remove every ended run's directory, not only those past keep."),
    ] = False,
) -> None:
    """Clean the hosts that ship snapshots: ended runs' directories past [sync] keep, snapshots
    no unfinished task of this queue needs, files no snapshot left uses.

    dispatch does the same on each host when it connects.
    """
    import asyncio

    from dispatcher.cli.common import open_store
    from dispatcher.config.hosts import load_hosts
    from dispatcher.remote.session import fence_key

    store = open_store(ctx)
    config = load_hosts(hosts, store.path)
    needed, queue_id = store.snapshots(unfinished=True), store.queue_id()
    shipping = [h for h in config.hosts if h.enabled and h.sync]

    async def run_all() -> list[str]:
        return await asyncio.gather(
            *(collect_host(h, fence_key(queue_id, h.name), needed, config.sync.keep, now)
              for h in shipping)
        )  # fmt: skip

    lines = asyncio.run(run_all())
    for line in lines or ["no host ships snapshots (every host sets workdir, or sync = false)"]:
        typer.echo(line)
    raise typer.Exit(1 if any(": not cleaned: " in line for line in lines) else 0)
