"""Random sweep points: ``[random]`` in sweep files, ``--random`` (CLI), ``random=`` (API).

Pure and reproducible. Each key draws from its own ``random.Random`` seeded with the text
``"SEED:KEY"`` (text seeds go through SHA-512, never Python's per-process hash), so one spec always
gives the same points, more samples keep the earlier ones, and adding a key leaves the others'
values alone. Floats are rounded to ``DIGITS`` significant digits. The points form one grid axis.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dispatcher.core.values import Axis, Path_, check_json, parse_scalar
from dispatcher.errors import SweepError

#: Distributions a key may draw from; bounds are inclusive.
KINDS = ("uniform", "loguniform", "randint", "choice")
#: Significant digits kept of a drawn float: short printed commands, exact re-submission.
DIGITS = 6
#: Most samples one sweep may draw (each is one task).
MAX_SAMPLES = 1_000_000
#: Settings inside ``[random]`` (as plain integers; a distribution there is an arg instead).
SETTINGS = ("samples", "seed")
_ALLOWED = (
    "{ uniform = [LOW, HIGH] }, { loguniform = [LOW, HIGH] } (LOW > 0),"
    " { randint = [LOW, HIGH] } (integers, inclusive) or { choice = [V1, V2, ...] }"
)


@dataclass(frozen=True)
class Dist:
    """One key's distribution: ``kind`` (one of ``KINDS``) and its bounds or choices."""

    kind: str
    values: tuple[Any, ...]

    def draw(self, rng: random.Random) -> Any:
        """One value; floats rounded to ``DIGITS`` significant digits, kept within the bounds."""
        if self.kind == "choice":
            return rng.choice(self.values)
        lo, hi = self.values
        if self.kind == "randint":
            return rng.randint(lo, hi)
        if self.kind == "uniform":
            x = rng.uniform(lo, hi)
        else:
            x = math.exp(rng.uniform(math.log(lo), math.log(hi)))
        return min(max(float(f"{x:.{DIGITS}g}"), lo), hi)


def is_spec(value: Any) -> bool:
    """Whether ``value`` is written as a distribution (``{ KIND = [...] }``), not a nested table."""
    return (
        isinstance(value, Mapping)
        and len(value) == 1
        and next(iter(value)) in KINDS
        and isinstance(next(iter(value.values())), list | tuple)
    )


def _spec_like(table: Mapping[str, Any]) -> bool:
    # A distribution, maybe a misspelt one ({ normal = [0, 1] }); a nested table holds tables.
    values = list(table.values())
    return bool(set(table) & set(KINDS)) or (len(values) == 1 and isinstance(values[0], list))


def parse_dist(spec: Any, where: str) -> Dist:
    """A ``Dist`` from ``{KIND: [...]}``; SweepError names ``where`` and what is allowed."""
    if isinstance(spec, Mapping) and len(spec) == 1 and next(iter(spec)) not in KINDS:
        raise SweepError(
            f"{where}: unknown distribution {next(iter(spec))!r}; use one of {_ALLOWED}"
        )
    if not is_spec(spec):
        raise SweepError(f"{where}: expected a distribution, one of {_ALLOWED}; got {spec!r}")
    ((kind, raw),) = spec.items()
    values = tuple(raw)
    if kind == "choice":
        if not values:
            raise SweepError(f"{where}: choice needs at least one value")
        check_json(values, where)
        return Dist(kind, values)
    if len(values) != 2:
        raise SweepError(f"{where}: {kind} needs [LOW, HIGH], got {list(values)!r}")
    lo, hi = values
    number = int if kind == "randint" else int | float
    if any(isinstance(v, bool) or not isinstance(v, number) for v in values):
        what = "integers" if kind == "randint" else "numbers"
        raise SweepError(f"{where}: {kind} bounds must be {what}, got {list(values)!r}")
    if not all(math.isfinite(v) for v in values) or lo > hi:
        raise SweepError(f"{where}: {kind} needs finite LOW <= HIGH, got {list(values)!r}")
    if kind == "loguniform" and lo <= 0:
        raise SweepError(f"{where}: loguniform needs LOW > 0, got {list(values)!r}")
    if kind != "randint":
        lo, hi = float(lo), float(hi)
    return Dist(kind, (lo, hi))


def sample_axis(dists: Sequence[tuple[Path_, Dist]], samples: int, seed: int) -> Axis:
    """``samples`` points as one axis: per key a stream seeded by ``"SEED:KEY"`` (module doc)."""
    columns = []
    for path, dist in dists:
        rng = random.Random(f"{seed}:{'.'.join(path)}")
        columns.append([dist.draw(rng) for _ in range(samples)])
    rows = tuple(zip(*columns, strict=True)) if columns else ()
    return tuple(p for p, _ in dists), rows


def check_counts(samples: Any, seed: Any, where: str) -> tuple[int, int]:
    """Validated ``(samples, seed)``: samples in 1..MAX_SAMPLES, seed any integer."""
    if isinstance(samples, bool) or not isinstance(samples, int):
        raise SweepError(f"{where}: samples must be an integer (how many random points), got"
                         f" {samples!r}")  # fmt: skip
    if not 1 <= samples <= MAX_SAMPLES:
        raise SweepError(f"{where}: samples must be 1 to {MAX_SAMPLES:,}, got {samples}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise SweepError(f"{where}: seed must be an integer, got {seed!r}")
    return samples, seed


def from_table(table: Mapping[str, Any], where: str) -> Axis | None:
    """The ``[random]`` table of a sweep file (nested tables build nested args); None if empty."""
    settings = {k: table[k] for k in SETTINGS if k in table and not is_spec(table[k])}
    specs = {k: v for k, v in table.items() if k not in settings}
    dists: list[tuple[Path_, Dist]] = []

    def walk(node: Mapping[str, Any], prefix: Path_) -> None:
        for key, value in node.items():
            path = (*prefix, key)
            if isinstance(value, Mapping) and value and not _spec_like(value):
                walk(value, path)
            else:
                dists.append((path, parse_dist(value, f"{where}.{'.'.join(path)}")))

    walk(specs, ())
    if not dists:
        if settings:
            raise SweepError(f"{where}: samples/seed given but no key to draw; add one like"
                             " lr = { loguniform = [1e-5, 1e-1] }")  # fmt: skip
        return None
    if "samples" not in settings:
        raise SweepError(f"{where}: add samples = N, the number of random points to draw")
    samples, seed = check_counts(settings["samples"], settings.get("seed", 0), where)
    return sample_axis(dists, samples, seed)


def from_mapping(specs: Mapping[str, Any], samples: Any, seed: Any) -> Axis:
    """The API's ``random={"lr": {"loguniform": [1e-5, 0.1]}}`` (dotted keys nest)."""
    if samples is None:
        raise SweepError("random= needs samples=N, the number of random points to draw")
    samples, seed = check_counts(samples, seed, "random=")
    dists = []
    for key, spec in specs.items():
        path = tuple(str(key).split("."))
        if not all(path):
            raise SweepError(f"random key {key!r}: use a name or dotted names like model.depth")
        dists.append((path, parse_dist(spec, f"random key {key!r}")))
    if not dists:
        raise SweepError("random= is empty; give keys like {'lr': {'uniform': [0, 1]}}")
    return sample_axis(dists, samples, seed)


def from_items(items: Sequence[str], samples: int | None, seed: int) -> Axis:
    """``--random KEY=KIND:A,B`` items: ``lr=loguniform:1e-5,0.1``, ``act=choice:relu,gelu``."""
    if samples is None:
        raise SweepError("--random needs --samples N, the number of random points to draw")
    samples, seed = check_counts(samples, seed, "--samples/--seed")
    dists: list[tuple[Path_, Dist]] = []
    for item in items:
        source = f"--random {item!r}"
        key, sep, spec = item.partition("=")
        kind, colon, values = spec.partition(":")
        path = tuple(key.strip().split("."))
        if not sep or not colon or not all(path):
            raise SweepError(f"{source}: expected KEY=KIND:A,B with KIND one of {', '.join(KINDS)}"
                             " (e.g. lr=loguniform:1e-5,0.1)")  # fmt: skip
        if path in (p for p, _ in dists):
            raise SweepError(f"{source}: key {key.strip()!r} given twice")
        parsed = [parse_scalar(v) for v in values.split(",")] if values else []
        dists.append((path, parse_dist({kind.strip(): parsed}, source)))
    return sample_axis(dists, samples, seed)
