"""What a soak found, for a person: the violations and the figures of ``Soak.verdict()``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Verdict:
    """What the soak found: violations (empty when all is well) and the figures."""

    violations: list[str]
    summary: dict[str, Any]

    def text(self) -> str:
        """The summary for a person."""
        s = self.summary
        kinds = ", ".join(f"{k} {n}" for k, n in s["faults"].items())
        delays = s["lost_delay_s"]
        lines = [
            f"soak seed {s['seed']}: {s['tasks']} tasks on "
            + ", ".join(f"{h} ({k} slots)" for h, k in s["slots"].items())
            + f", {s['seconds']:.0f} s, {s['controllers']} dispatch processes",
            f"faults: {kinds}",
            f"stalled sessions with a launch in flight: {s['stalled_with_launch']}"
            f" of {s['faults'].get('stalled_session', 0)}",
            f"runs: {s['runs']}, declared lost: {s['lost']}, without DONE: {s['cut_short']}",
            f"duplicates: {s['duplicates']}, leftovers: {len(s['leftovers'])}",
            "lost after the host answered again: "
            + (
                f"median {delays['median']:.2f} s, max {delays['max']:.2f} s"
                f" ({delays['count']} runs)"
                if delays["count"]
                else "no run was lost"
            ),
            f"last dispatch exit code: {s['last_exit']}",
            f"violations: {len(self.violations)}",
        ]
        lines += [f"  - {v}" for v in self.violations]
        lines += ["faults (epoch seconds, as in the journals):"]
        lines += [f"  {x}" for x in s["timeline"]]
        return "\n".join(lines)
