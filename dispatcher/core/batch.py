"""One ``queue add`` as a ``TaskBatch``: a template, argument groups and the tasks' settings.

``assemble`` is the one path from user input (CLI flags, a sweep file, ``Queue.add``) to a batch,
and ``check_settings`` the one check of task settings. Pure: no database, no files; the store
stages and inserts batches (``dispatcher/store/add.py``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dispatcher.core.globs import expand_glob, glob_problem
from dispatcher.core.sweep import Grid, merge, overlap, with_axis, with_fixed
from dispatcher.core.sweep_file import SweepFile
from dispatcher.core.template import Template, compile_template, split
from dispatcher.core.values import DURATION_FORMS, SIZE_FORMS, Axis, duration_seconds, size_bytes
from dispatcher.errors import SweepError, TemplateError, UsageError

_INT64 = 2**63
ArgGroup = Grid | Sequence[Mapping[str, Any]]


def check_outputs(globs: Sequence[str]) -> tuple[str, ...]:
    """Output globs as a tuple; UsageError for one that is empty, absolute or climbs out (..)."""
    if isinstance(globs, str):
        raise UsageError(f"outputs must be a list of globs like ['out/*.json'], got {globs!r}")
    for g in globs:
        problem = glob_problem(g)
        if problem:
            raise UsageError(
                f"output glob {g!r} {problem}: give a pattern inside the task's working"
                " directory, like out/*.json or out/%{lr}/*.json (not empty, not absolute,"
                " no '..')"
            )
    return tuple(globs)


def timeout_seconds(value: float | str | None) -> float | None:
    """A task timeout in seconds from a number or a duration like ``"10m"``; UsageError if bad."""
    if value is None:
        return None
    seconds = duration_seconds(value)
    if not seconds:  # not a duration, or zero
        raise UsageError(f"timeout must be a positive duration {DURATION_FORMS}, got {value!r}")
    return seconds


def size_setting(value: int | str | None, what: str) -> int | None:
    """GPU memory in bytes from a count or a size like ``"10GiB"``; UsageError if bad or 0."""
    if value is None:
        return None
    n = size_bytes(value)
    if not n or n >= _INT64:
        raise UsageError(f"{what} must be a positive size {SIZE_FORMS}, got {value!r}")
    return n


def check_gpu_needs(
    gpus: int | None, memory: int | None, gpu_type: str | None, min_memory: int | None
) -> None:
    """UsageError for GPU needs the scheduler cannot honour (a GPU need on a slot task, ...)."""
    for what, n in (("gpu memory", memory), ("min gpu memory", min_memory)):
        if n is not None and not 0 < n < _INT64:
            raise UsageError(f"{what} must be a positive size {SIZE_FORMS}, got {n}")
    if gpu_type is not None and (
        not isinstance(gpu_type, str) or not all(p.strip() for p in gpu_type.split("|"))
    ):
        raise UsageError(
            f'gpu type must be names like "A100" or "A100|H100" (any one), got {gpu_type!r}'
        )
    if gpus == 0 and (memory or gpu_type or min_memory):
        raise UsageError("--gpus 0 asks for a slot without a GPU; drop it to state GPU needs")


def check_settings(
    *,
    priority: int,
    max_attempts: int,
    timeout: float | None,
    gpus: int | None,
    name: str | None,
    max_running: int | None = None,
    outputs: Sequence[str] = (),
    gpu_memory: int | None = None,
    gpu_type: str | None = None,
    min_gpu_memory: int | None = None,
) -> None:
    """Raise UsageError for a task setting the queue cannot hold or the dispatcher cannot honour."""
    check_gpu_needs(gpus, gpu_memory, gpu_type, min_gpu_memory)
    if not -_INT64 <= priority < _INT64:
        raise UsageError(f"priority {priority} is out of range (64-bit integer)")
    if not 1 <= max_attempts < 2**31:
        raise UsageError(f"max attempts must be at least 1, got {max_attempts}")
    if timeout is not None and not (timeout > 0 and math.isfinite(timeout)):
        raise UsageError(f"timeout must be a positive duration {DURATION_FORMS}, got {timeout!r}")
    if gpus is not None and not 0 <= gpus < 2**31:
        raise UsageError(f"gpus must be 0 or more, got {gpus}")
    if name is not None and "\0" in name:
        raise UsageError(f"task name {name!r} contains a NUL character")
    if max_running is not None and not 1 <= max_running < 2**31:
        raise UsageError(
            f"max running must be at least 1 (tasks of this sweep at once), got {max_running}"
        )
    check_outputs(outputs)


@dataclass(frozen=True)
class TaskBatch:
    """One ``queue add``: a template, argument groups (concatenated in order), shared settings."""

    template: str
    groups: Sequence[ArgGroup] = field(default_factory=lambda: [[{}]])
    name: str | None = None
    priority: int = 0
    max_attempts: int = 1
    timeout: float | None = None
    gpus: int | None = None
    after: tuple[int, ...] = ()
    max_running: int | None = None
    outputs: tuple[str, ...] = ()
    after_any: tuple[int, ...] = ()
    after_failed: tuple[int, ...] = ()
    gpu_memory: int | None = None
    gpu_type: str | None = None
    min_gpu_memory: int | None = None

    def __len__(self) -> int:
        return sum(len(g) for g in self.groups)

    def check(self) -> Template:
        """Validate the shared settings and parse the template; UsageError/TemplateError if bad."""
        check_settings(
            priority=self.priority,
            max_attempts=self.max_attempts,
            timeout=self.timeout,
            gpus=self.gpus,
            name=self.name,
            max_running=self.max_running,
            outputs=self.outputs,
            gpu_memory=self.gpu_memory,
            gpu_type=self.gpu_type,
            min_gpu_memory=self.min_gpu_memory,
        )
        tpl = compile_template(self.template)
        self._check_output_values()
        return tpl

    def _check_output_values(self) -> None:
        """UsageError, naming the task, when a ``%{key}`` of an output glob cannot be filled
        from a task's args (missing, or not one safe path component)."""
        named = [g for g in self.outputs if split(g)[1]]
        if not named:
            return
        total, offset = len(self), 0
        for group in self.groups:
            for k, args in enumerate(group, offset):
                for pattern in named:
                    try:
                        expand_glob(pattern, args, 0, "run")
                    except UsageError as err:
                        raise UsageError(f"task {k + 1} of {total}: {err}") from None
            offset += len(group)

    def rendered(self) -> Iterator[tuple[Mapping[str, Any], str]]:
        """Every task's (args, command) in order, rendered in Python; errors name the task."""
        tpl, total, offset = self.check(), len(self), 0
        for group in self.groups:
            for _, args, command in render(tpl, group, offset, total):
                yield args, command
            offset += len(group)


def render(
    tpl: Template, group: ArgGroup, offset: int, total: int
) -> Iterator[tuple[int, Mapping[str, Any], str]]:
    """(index in the batch, args, command) for each task of ``group``."""
    for k, args in enumerate(group, offset):
        try:
            yield k, args, tpl.render(args)
        except TemplateError as err:
            raise TemplateError(f"task {k + 1} of {total}: {err}") from None


def assemble(
    template: str | None,
    *,
    args: Sequence[Mapping[str, Any]] | None = None,
    grid: Grid | None = None,
    random: Axis | None = None,
    sweep: SweepFile | None = None,
    rows: Sequence[Mapping[str, Any]] | None = None,
    name: str | None = None,
    priority: int | None = None,
    max_attempts: int | None = None,
    timeout: float | str | None = None,
    gpus: int | None = None,
    max_running: int | None = None,
    outputs: Sequence[str] | None = None,
    after: Sequence[int] = (),
    after_any: Sequence[int] = (),
    after_failed: Sequence[int] = (),
    gpu_memory: int | str | None = None,
    gpu_type: str | None = None,
    min_gpu_memory: int | str | None = None,
) -> TaskBatch:
    """The batch of one add. The points in order: ``grid`` crossed with the ``random`` points,
    then the file's (a sweep file's points or JSONL ``rows``). With points, every ``args`` dict
    is merged into every point, as a sweep file's ``[args]`` is (the points once per dict); without,
    each dict is one task. Settings given here win over the sweep file's, which win over the
    defaults; the template likewise."""
    if isinstance(args, Mapping):
        raise SweepError("args must be a list of dicts, one per task: args=[{...}]")
    points: list[ArgGroup] = []
    if grid is not None or random is not None:
        points.append(with_axis(grid or Grid(), random))
    if sweep is not None:
        points.append(sweep.grid)
    if rows is not None:
        points.append(rows)
    groups = _with_fixed(args, points)
    file = sweep or SweepFile(grid=Grid())
    if template is None:
        template = file.command
    if template is None:
        raise UsageError("no command given: use --cmd TEXT, or put the command after --")
    if not template.strip():
        raise UsageError("the command is empty")

    def pick(given: Any, from_file: Any, default: Any) -> Any:
        return given if given is not None else (from_file if from_file is not None else default)

    return TaskBatch(
        template=template,
        groups=groups,
        name=pick(name, file.name, None),
        priority=pick(priority, file.priority, 0),
        max_attempts=pick(max_attempts, file.max_attempts, 1),
        timeout=timeout_seconds(pick(timeout, file.timeout, None)),
        gpus=pick(gpus, file.gpus, None),
        after=tuple(after or file.after),
        max_running=pick(max_running, file.max_running, None),
        outputs=check_outputs(pick(outputs, file.outputs, ())),
        after_any=tuple(after_any or file.after_any),
        after_failed=tuple(after_failed or file.after_failed),
        gpu_memory=size_setting(pick(gpu_memory, file.gpu_memory, None), "gpu memory"),
        gpu_type=pick(gpu_type, file.gpu_type, None),
        min_gpu_memory=size_setting(
            pick(min_gpu_memory, file.min_gpu_memory, None), "min gpu memory"
        ),
    )


def _with_fixed(args: Sequence[Mapping[str, Any]] | None, points: list[ArgGroup]) -> list[ArgGroup]:
    """The groups of an add: ``args`` merged into every point, or alone when there are none.

    A key set both by an ``args`` dict and by a point is a SweepError, as in a sweep file.
    """
    if not points:
        return [[dict(a) for a in args]] if args is not None else [[{}]]
    if not args:
        return points
    groups: list[ArgGroup] = []
    for fixed in args:
        for group in points:
            if isinstance(group, Grid):
                groups.append(with_fixed(group, fixed))
            else:
                groups.append([_merged_row(fixed, row, k) for k, row in enumerate(group, 1)])
    return groups


def _merged_row(fixed: Mapping[str, Any], row: Mapping[str, Any], line: int) -> dict[str, Any]:
    clash = overlap(fixed, row)
    if clash:
        raise SweepError(
            f"--args sets key {clash!r}, which line {line} of the file also sets;"
            " give each key in one place"
        )
    return merge(fixed, row)
