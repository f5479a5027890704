"""The last-output-lines file the dispatcher writes for ``labtasker status``."""

from __future__ import annotations

import stat
import tempfile
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from dispatcher.dispatch.logs import last_lines_path, read_last_lines, write_last_lines


def test_lines_round_trip_privately_and_atomically(tmp_path: Path) -> None:
    db = tmp_path / "queue.duckdb"
    assert read_last_lines(db) == {}
    write_last_lines(db, {3: "epoch 2/10 loss=0.4", 1: "starting"})
    assert read_last_lines(db) == {1: "starting", 3: "epoch 2/10 loss=0.4"}
    path = last_lines_path(db)
    assert path.name == "queue.duckdb.status.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    write_last_lines(db, {})
    assert read_last_lines(db) == {}
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temp files left


def test_a_damaged_file_reads_as_no_lines(tmp_path: Path) -> None:
    db = tmp_path / "q.duckdb"
    for text in ("", "{", "[1, 2]", '{"lines": 5}', '{"lines": {"x": "a", "2": 7}}'):
        last_lines_path(db).write_text(text)
        assert read_last_lines(db) == {}


@given(st.dictionaries(st.integers(1, 10**9), st.text(max_size=200), max_size=20))
def test_any_lines_survive_the_file(lines: dict[int, str]) -> None:
    with tempfile.TemporaryDirectory() as d:
        db = Path(d) / "q.duckdb"
        write_last_lines(db, lines)
        assert read_last_lines(db) == lines
