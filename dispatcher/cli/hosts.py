"""``labtasker hosts check``: can each host be reached and used? One line per host."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from dispatcher.cli import app
from dispatcher.cli.dispatch import HostsOption

if TYPE_CHECKING:
    from dispatcher.hosts import HostSpec

hosts_app = typer.Typer(help="Check and manage the hosts of hosts.toml.", no_args_is_help=True)
app.add_typer(hosts_app, name="hosts")


async def check_host(spec: HostSpec, accept_new: bool) -> tuple[bool, str, list[str]]:
    """Connect, start the helper and ask it about Python, the workdir and the GPUs."""
    from dispatcher.capacity import foreign_use, gpu_problem
    from dispatcher.errors import DispatcherError
    from dispatcher.hostsession import ssh_options, start_helper

    try:
        transport, client, hello = await start_helper(
            spec, ssh_options(spec, accept_new_host_keys=accept_new)
        )
    except DispatcherError as err:
        return False, str(err), []
    try:
        info = await client.call("check", workdir=spec.workdir)
        parts = [f"python {hello.get('python')}", f"user {hello.get('user')}"]
        ok = True
        if info.get("workdir_writable"):
            parts.append(f"workdir {info.get('workdir')} writable")
        else:
            ok = False
            parts.append(
                f"workdir {info.get('workdir')} NOT writable ({info.get('workdir_error')})"
            )
        gpu_lines: list[str] = []
        if spec.gpus != ():
            inv: dict[str, Any] = await client.call("gpus")
            problem = gpu_problem(spec, inv)
            if problem:
                ok = False
                parts.append(problem)
            gpus = inv.get("gpus") or []
            if not problem:
                parts.append(f"{len(gpus)} GPU(s)" if gpus else "no GPU found: CPU-only")
            for g in gpus:
                other = foreign_use(g, inv.get("processes") or [], spec.max_gpu_memory_used)
                gpu_lines.append(
                    f"  GPU {g.get('index')} {g.get('name')}: "
                    f"{g.get('memory_used_mib')}/{g.get('memory_total_mib')} MiB used"
                    + (f" — busy: {other}" if other else " — free")
                )
        else:
            parts.append(f"CPU-only, {spec.slots} slot(s)")
        return ok, ", ".join(parts), gpu_lines
    except DispatcherError as err:
        return False, str(err), []
    finally:
        await client.close()
        await transport.close()


@hosts_app.command("check")
def check(
    hosts: HostsOption = Path("hosts.toml"),
    accept_new_host_keys: Annotated[
        bool, typer.Option("--accept-new-host-keys", help="Record keys of never-seen hosts.")
    ] = False,
) -> None:
    """Per host: reachable, authenticated, Python version, GPUs and who uses them, workdir."""
    from rich.console import Console
    from rich.markup import escape

    from dispatcher.hosts import load_hosts

    config = load_hosts(hosts)
    console = Console(highlight=False, soft_wrap=True)

    async def run_all() -> list[tuple[bool, str, list[str]]]:
        return await asyncio.gather(
            *(check_host(h, accept_new_host_keys) for h in config.hosts if h.enabled)
        )

    results = asyncio.run(run_all())
    failed = 0
    for spec, (ok, line, gpu_lines) in zip(
        [h for h in config.hosts if h.enabled], results, strict=True
    ):
        mark = "[green]ok[/]  " if ok else "[red]FAIL[/]"
        console.print(f"{mark} [bold]{escape(spec.name)}[/]: {escape(line)}")
        for gl in gpu_lines:
            console.print(escape(gl))
        failed += not ok
    raise typer.Exit(1 if failed else 0)
