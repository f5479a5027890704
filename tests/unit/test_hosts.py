"""Loading hosts.toml: defaults, inheritance, every error message, and the shipped example."""

from __future__ import annotations

import json
import re
import tomllib
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatcher.config.hosts import (
    CONTROLLER_KEYS,
    DEFAULTS_KEYS,
    GIB,
    HOST_KEYS,
    HostsConfig,
    hosts_from_mapping,
    load_hosts,
    make_host,
    parse_hosts_text,
)
from dispatcher.config.values import parse_duration, parse_size, split_ssh_target
from dispatcher.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def load_text(tmp_path: Path, text: str) -> HostsConfig:
    path = tmp_path / "hosts.toml"
    path.write_text(text, encoding="utf-8")
    return load_hosts(path)


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as err:
        parse_hosts_text(text, Path("hosts.toml"))
    return str(err.value)


# --- defaults and inheritance ----------------------------------------------------------------


def test_a_bare_host_gets_every_default() -> None:
    h = make_host("gpu-a")
    assert (h.name, h.ssh, h.local, h.gpus, h.slots, h.slots_given) == (
        "gpu-a",
        None,
        False,
        "auto",
        0,
        False,
    )
    assert h.max_gpu_memory_used == GIB
    assert (h.workdir, h.setup, h.python, dict(h.env), h.secret_env) == (
        None,
        None,
        "python3",
        {},
        frozenset(),
    )
    assert (h.state_dir, h.connect_timeout, h.keepalive_interval, h.keepalive_count_max) == (
        "~/.labtasker",
        10.0,
        2.0,
        3,
    )
    assert (h.lost_after, h.kill_grace, h.suspend_after_failures, h.failure_window) == (
        600.0,
        10.0,
        5,
        600.0,
    )
    assert (h.outputs, h.enabled) == ((), True)


def test_slots_default_follows_the_gpus() -> None:
    assert make_host("c", {"gpus": 0}).slots == 1
    assert make_host("c", {"gpus": []}).gpus == ()
    assert make_host("g", {"gpus": [1, 0]}).slots == 0
    auto = make_host("g")
    assert (auto.slots_for(0), auto.slots_for(4)) == (1, 0)  # "auto" finding no GPU = CPU host
    pinned = make_host("g", {"slots": 0})
    assert (pinned.slots_for(0), pinned.slots_for(2)) == (0, 0)  # an explicit 0 stays 0
    assert make_host("g", {"slots": 3}).slots_for(8) == 3


def test_host_values_win_env_merges_and_secrets_add_up(tmp_path: Path) -> None:
    config = load_text(
        tmp_path,
        """
[controller]
on_finish = "notify-send done"

[defaults]
workdir = "~/exp"
env = { A = "1", B = "2" }
secret_env = ["B"]
lost_after = "10m"

[hosts.x]
workdir = "~/other"
env = { B = "3", C = "4" }
secret_env = ["C"]
lost_after = 30

[hosts.y]
""",
    )
    x, y = config.hosts
    assert config.on_finish == "notify-send done"
    assert (x.workdir, dict(x.env), x.secret_env, x.lost_after) == (
        "~/other",
        {"A": "1", "B": "3", "C": "4"},
        frozenset({"B", "C"}),
        30.0,
    )
    assert (y.workdir, dict(y.env), y.secret_env, y.lost_after) == (
        "~/exp",
        {"A": "1", "B": "2"},
        frozenset({"B"}),
        600.0,
    )


def test_hosts_keep_file_order_and_local_means_no_ssh(tmp_path: Path) -> None:
    config = load_text(
        tmp_path,
        '[hosts.zeta]\nssh = false\n[hosts.local]\n[hosts.alpha]\nssh = "bob@10.0.0.5:2200"\n',
    )
    assert [(h.name, h.local, h.ssh) for h in config.hosts] == [
        ("zeta", True, None),
        ("local", True, None),
        ("alpha", False, "bob@10.0.0.5:2200"),
    ]
    assert config.path == tmp_path / "hosts.toml"


def test_an_empty_setup_in_a_host_cancels_the_default() -> None:
    assert make_host("a", {"setup": " "}, setup="source venv").setup is None
    assert make_host("a", {}, setup="source venv").setup == "source venv"


@pytest.mark.parametrize(
    ("text", "size"),
    [
        (0, 0),
        (1024, 1024),
        ("1024", 1024),
        ("1GiB", GIB),
        ("1 gib", GIB),
        ("500MiB", 500 * 2**20),
        ("2GB", 2 * 10**9),
        ("1.5GiB", 3 * GIB // 2),
        ("10k", 10_000),
        ("3KiB", 3072),
        ("7b", 7),
    ],
)
def test_parse_size(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "lots", "-1", -1, "1 GiBs", "1e9", True, 1.5, "1" * 400])
def test_parse_size_rejects(text: Any) -> None:
    with pytest.raises(ConfigError, match="size must be a byte count"):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (30, 30.0),
        (2.5, 2.5),
        ("30", 30.0),
        ("30s", 30.0),
        ("10m", 600.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        ("1h30m", 5400.0),
        ("1h 30m", 5400.0),
        ("0", 0.0),
    ],
)
def test_parse_duration(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text", ["", "soon", "-5", -5, "10x", "m", float("nan"), float("inf"), False]
)
def test_parse_duration_rejects(text: Any) -> None:
    with pytest.raises(ConfigError, match="duration must be a duration"):
        parse_duration(text)


def test_parse_duration_rejects_an_int_too_big_for_a_float() -> None:
    with pytest.raises(ConfigError):
        parse_duration(10**400)


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("gpu-b", (None, "gpu-b", None)),
        ("alice@gpu-b.lab.example.org:2200", ("alice", "gpu-b.lab.example.org", 2200)),
        ("root@[::1]:22", ("root", "::1", 22)),
        ("10.0.0.5", (None, "10.0.0.5", None)),
    ],
)
def test_split_ssh_target(text: str, parts: tuple[str | None, str, int | None]) -> None:
    assert split_ssh_target(text) == parts


@pytest.mark.parametrize("text", ["", "a b", "-oProxyCommand=x", "h:0", "h:70000", "::1", "a@"])
def test_split_ssh_target_rejects(text: str) -> None:
    with pytest.raises(ConfigError, match=r"is not \[USER@\]HOST\[:PORT\]"):
        split_ssh_target(text)


# --- error messages --------------------------------------------------------------------------


def test_missing_file_says_how_to_fix_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as err:
        load_hosts(Path("hosts.toml"))
    assert str(err.value) == (
        "hosts file ./hosts.toml not found; create one (see docs/hosts.md) or pass --hosts PATH"
    )
    with pytest.raises(ConfigError, match=r"hosts file .*nowhere\.toml not found"):
        load_hosts(tmp_path / "nowhere.toml")


def test_a_directory_or_non_utf8_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be read"):
        load_hosts(tmp_path)
    bad = tmp_path / "hosts.toml"
    bad.write_bytes(b"[hosts.a]\n# caf\xe9\n")
    with pytest.raises(ConfigError, match=r"hosts\.toml:2: not UTF-8 text"):
        load_hosts(bad)


def test_toml_syntax_errors_keep_line_and_column() -> None:
    assert error_of("[hosts.a]\nslots = 2\ngpus = [0,\n]]\n").startswith("hosts.toml:4:2: ")
    assert error_of('[hosts.a]\nsetup = "unterminated\n').startswith("hosts.toml:2:")


def test_duplicate_host_is_named() -> None:
    text = "[hosts.gpu-a]\nslots = 1\n\n[hosts.gpu-a]\nslots = 2\n"
    assert error_of(text) == (
        "hosts.toml:4:13: duplicate host `gpu-a`: [hosts.gpu-a] appears twice; merge or rename one"
    )


def test_a_key_given_twice() -> None:
    assert error_of("[hosts.a]\nslots = 1\nslots = 2\n") == (
        "hosts.toml:3:10: a key or table is given twice"
    )


def test_unknown_key_suggests_the_closest() -> None:
    text = (
        "[defaults]\nworkdir = '~/x'\n\n[hosts.gpu-a]\ngpus = 'auto'\nmax_gpu_mem_used = '2GiB'\n"
    )
    assert error_of(text) == (
        "hosts.toml:6: host gpu-a: unknown key `max_gpu_mem_used`; "
        "did you mean `max_gpu_memory_used`?"
    )
    assert "`zzz`; valid keys: ssh, gpus, slots," in error_of("[hosts.a]\nzzz = 1\n")
    assert error_of("[host.a]\n").startswith(
        "hosts.toml:1: unknown key `host`; did you mean `hosts`?"
    )
    assert error_of("[controller]\non_finnish = 'x'\n[hosts.a]\n") == (
        "hosts.toml:2: [controller]: unknown key `on_finnish`; did you mean `on_finish`?"
    )


def test_ssh_is_not_a_default() -> None:
    assert error_of("[defaults]\nssh = 'x'\n[hosts.a]\n").startswith(
        "hosts.toml:2: [defaults]: unknown key `ssh` (`ssh` belongs in a [hosts.NAME] table)"
    )


def test_wrong_type_names_file_line_host_and_key() -> None:
    text = "[hosts.gpu-a]\ngpus = 'auto'\nslots = 'two'\n"
    assert error_of(text) == (
        "hosts.toml:3: host gpu-a: `slots` must be an integer >= 0, got 'two'"
    )
    assert error_of("[defaults]\nkill_grace = 'soon'\n[hosts.a]\n").startswith(
        "hosts.toml:2: [defaults]: `kill_grace` must be a duration >= 0"
    )


def test_inline_host_tables_still_get_a_line() -> None:
    text = "[hosts]\nok = {}\nbad = { slots = true }\n"
    assert error_of(text) == "hosts.toml:3: host bad: `slots` must be an integer >= 0, got True"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"gpus": [0, 0]}, "`gpus` must be"),
        ({"gpus": [0, -1]}, "`gpus` must be"),
        ({"gpus": 2}, "`gpus` must be"),
        ({"gpus": [True]}, "`gpus` must be"),
        ({"gpus": "all"}, "`gpus` must be"),
        ({"slots": -1}, "`slots` must be an integer >= 0, got -1"),
        ({"slots": 1.0}, "`slots` must be an integer"),
        ({"keepalive_count_max": 0}, "`keepalive_count_max` must be an integer >= 1"),
        ({"connect_timeout": 0}, "`connect_timeout` must be a duration > 0"),
        ({"env": {"A": 1}}, 'value of A must be a string (quote it: A = "..."), got an integer'),
        ({"env": {"A": True}}, "value of A must be a string"),
        ({"env": {"1A": "x"}}, "not a variable name"),
        ({"env": "A=1"}, "`env` must be a table"),
        ({"secret_env": "KEY"}, "`secret_env` must be a list of variable names"),
        ({"outputs": ["/etc/passwd"]}, "`outputs` must be a list of glob patterns inside workdir"),
        ({"outputs": ["a/../../x"]}, "`outputs` must be"),
        ({"outputs": ["~/x"]}, "`outputs` must be"),
        ({"workdir": ""}, "`workdir` must be a non-empty string"),
        ({"python": 3}, "`python` must be a non-empty string"),
        ({"enabled": "yes"}, "`enabled` must be true or false"),
        ({"ssh": "a b"}, "`ssh` must be false (run locally) or"),
        ({"ssh": 22}, "`ssh` must be false"),
        ({"max_gpu_memory_used": "lots"}, "`max_gpu_memory_used` must be a byte count"),
        ({"max_tasks_per_gpu": 0}, "`max_tasks_per_gpu` must be an integer >= 1, got 0"),
        ({"max_gpus": -1}, "`max_gpus` must be an integer >= 0, got -1"),
        ({"max_gpus": "2"}, "`max_gpus` must be an integer >= 0"),
        ({"gpu_order": 2}, "`gpu_order` must be a list of GPU indices like [2, 3, 0, 1], got 2"),
        ({"gpu_order": [1, 1]}, "`gpu_order` must be a list of distinct GPU indices"),
        ({"gpu_order": [0, -1]}, "`gpu_order` must be a list of GPU indices"),
    ],
)
def test_bad_values(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        make_host("gpu-a", settings)
    assert str(err.value).startswith("<settings>: host gpu-a: ")
    assert message in str(err.value)


def test_gpu_etiquette_settings_are_read() -> None:
    h = make_host("gpu-a", {"max_tasks_per_gpu": 4, "max_gpus": 2, "gpu_order": [3, 1]})
    assert (h.max_tasks_per_gpu, h.max_gpus, h.gpu_order) == (4, 2, (3, 1))
    bare = make_host("gpu-b")
    assert (bare.max_tasks_per_gpu, bare.max_gpus, bare.gpu_order) == (None, None, ())


def test_a_bad_gpu_setting_is_one_line_naming_the_host_and_key() -> None:
    text = "[hosts.a]\ngpus = [0, 1]\n\n[hosts.b]\nmax_gpus = 1.5\n"
    assert error_of(text) == "hosts.toml:5: host b: `max_gpus` must be an integer >= 0, got 1.5"


@pytest.mark.parametrize("name", ["gpu a", "-oProxyCommand=evil", "", "a\tb", "*", "alice@gpu"])
def test_a_host_name_must_be_a_usable_ssh_alias(name: str) -> None:
    with pytest.raises(ConfigError, match="is not a usable ssh alias"):
        make_host(name)


def test_local_cannot_have_an_ssh_target() -> None:
    with pytest.raises(ConfigError, match="host `local` always runs on this machine"):
        make_host("local", {"ssh": "x@y"})
    assert make_host("local", {"ssh": True}).local


def test_no_hosts_is_an_error() -> None:
    for text in ("", "[defaults]\nworkdir = '~/x'\n", "[hosts]\n"):
        assert error_of(text) == (
            "hosts.toml: no hosts defined; add a [hosts.NAME] table per machine (see docs/hosts.md)"
        )


def test_tables_that_are_not_tables() -> None:
    assert (
        error_of("defaults = 3\n[hosts.a]\n") == "hosts.toml:1: [defaults]: must be a table, got 3"
    )
    assert error_of("[hosts]\na = 3\n") == "hosts.toml:2: host a: must be a table, got 3"
    assert error_of("hosts = [1]\n") == "hosts.toml:1: [hosts]: must be a table, got [1]"


# --- the shipped example and the docs --------------------------------------------------------


def test_the_example_hosts_file_loads() -> None:
    config = load_hosts(ROOT / "hosts.toml")
    by_name = {h.name: h for h in config.hosts}
    assert list(by_name) == ["local", "gpu-a", "gpu-b", "cpu-box"]
    assert by_name["local"].local and by_name["local"].gpus == ()
    assert by_name["gpu-a"].gpus == "auto" and by_name["gpu-a"].ssh is None
    assert by_name["gpu-b"].gpus == (0, 1, 2) and by_name["gpu-b"].slots == 1
    assert by_name["cpu-box"].ssh == "alice@cpu-box.lab.example.org:2200"
    assert by_name["cpu-box"].slots == 8


def test_every_key_is_documented_and_in_the_example() -> None:
    docs = (ROOT / "docs" / "hosts.md").read_text(encoding="utf-8")
    example = (ROOT / "hosts.toml").read_text(encoding="utf-8")
    for key in (*HOST_KEYS, *CONTROLLER_KEYS):
        assert f"| `{key}` |" in docs, f"docs/hosts.md lacks a row for {key}"
        assert re.search(rf"^#? ?{key} = ", example, re.M), f"hosts.toml lacks {key}"
    assert set(DEFAULTS_KEYS) == set(HOST_KEYS) - {"ssh"}


# --- properties ------------------------------------------------------------------------------
# Documents are mostly well-shaped with plausible values, so that most examples get past the
# first check and reach the deeper ones; any part may be replaced by arbitrary data.

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.text(max_size=8),
    st.datetimes(),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(scalars, inner, max_size=3),
    max_leaves=6,
)
PLAUSIBLE: dict[str, list[Any]] = {
    "ssh": [False, True, "alice@gpu-b:2200", "[::1]", "a b"],
    "gpus": ["auto", 0, [0, 1], [2], [0, 0], [-1], 3],
    "slots": [0, 2, -1, "two"],
    "max_gpu_memory_used": ["1GiB", "500MiB", 10**9, "1.5GB", "lots"],
    "workdir": ["~/exp", ""],
    "setup": ["", "source venv/bin/activate"],
    "python": ["python3", ""],
    "env": [{"A": "1"}, {"A": 1}, {"1x": "y"}],
    "secret_env": [["A"], "A", ["a b"]],
    "state_dir": ["~/.labtasker"],
    "connect_timeout": ["10s", 0, 2.5],
    "keepalive_interval": ["2s", "1h30m", -1],
    "keepalive_count_max": [3, 0],
    "lost_after": ["10m", 0, "soon"],
    "kill_grace": ["10s", float("inf")],
    "suspend_after_failures": [0, 5],
    "failure_window": ["10m", "0"],
    "outputs": [["*.json"], ["../x"], ["/abs"]],
    "enabled": [True, False, "yes"],
}


def host_value(key: str) -> st.SearchStrategy[Any]:
    return st.sampled_from(PLAUSIBLE[key]) | values


host_tables = st.lists(st.sampled_from([*HOST_KEYS, "slot"]), unique=True, max_size=5).flatmap(
    lambda ks: st.fixed_dictionaries({k: host_value(k) if k in PLAUSIBLE else values for k in ks})
)
host_names = st.sampled_from(["gpu-a", "local", "b.lab", "c d", "-x", ""]) | st.text(max_size=4)
good_documents = st.fixed_dictionaries(
    {"hosts": st.dictionaries(host_names, host_tables, min_size=1, max_size=3) | values},
    optional={
        "defaults": host_tables | values,
        "controller": st.dictionaries(st.sampled_from(["on_finish", "x"]), values, max_size=2)
        | st.fixed_dictionaries({"on_finish": st.text(max_size=5)}),
    },
)
# Listed three times: a well-shaped document three times as often as an arbitrary one.
documents = st.one_of(
    good_documents, good_documents, good_documents, st.dictionaries(scalars, values)
)


@settings(max_examples=100, deadline=None)
@given(documents)
def test_any_structure_loads_or_raises_config_error(data: dict[Any, Any]) -> None:
    try:
        config = hosts_from_mapping(data, Path("hosts.toml"))
    except ConfigError as err:
        assert str(err).startswith("hosts.toml")
        assert "\n" not in str(err)
    else:
        assert config.hosts


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dict):
        items = ", ".join(
            f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items() if x is not None
        )
        return "{" + items + "}"
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v if x is not None) + "]"
    if isinstance(v, str):  # JSON's escapes are TOML's, but for DEL which TOML wants escaped
        return json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(v, datetime):
        return v.isoformat()
    return repr(v)  # ints; floats as 1e+20, nan, inf, which TOML spells the same


def _toml_key(k: Any) -> str:
    k = str(k)
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else _toml_value(k)


def _toml_lines(table: dict[Any, Any], path: tuple[str, ...] = ()) -> list[str]:
    """Scalars first, then sub-tables as [headers] down to [hosts.NAME], deeper ones inline."""
    lines, subtables = [], []
    for key, value in table.items():
        if isinstance(value, dict) and len(path) < 2:
            subtables.append((key, value))
        elif value is not None:
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    for key, value in subtables:
        lines.append("[" + ".".join(_toml_key(p) for p in (*path, key)) + "]")
        lines.extend(_toml_lines(value, (*path, key)))
    return lines


@st.composite
def toml_documents(draw: st.DrawFn) -> str:
    lines = _toml_lines(draw(documents))
    if draw(st.integers(0, 3)) == 0:  # damage it somewhere
        at = draw(st.integers(0, len(lines)))
        lines.insert(at, draw(st.sampled_from(["[", "x = ", "= 1", "a = [1,", "]]", "\x00"])))
    return "\n".join(lines) + "\n"


@settings(max_examples=100, deadline=None)
@given(toml_documents() | st.text(max_size=60))
def test_any_text_loads_or_raises_config_error(text: str) -> None:
    try:
        config = parse_hosts_text(text, Path("hosts.toml"))
    except ConfigError as err:
        assert re.match(r"hosts\.toml(:\d+(:\d+)?)?: ", str(err))
    else:
        assert all(h.name for h in config.hosts)


@settings(max_examples=100, deadline=None)
@given(
    slots=st.integers(0, 64),
    gpus=st.lists(st.integers(0, 15), unique=True, max_size=8),
    lost=st.integers(0, 10**6),
    env=st.dictionaries(
        st.from_regex(r"[A-Z_][A-Z0-9_]{0,6}", fullmatch=True),
        st.text(
            alphabet=st.characters(exclude_characters="\x00", exclude_categories=["Cs"]), max_size=8
        ),
        max_size=3,
    ),
)
def test_valid_values_come_back_unchanged(
    slots: int, gpus: list[int], lost: int, env: dict[str, str]
) -> None:
    text = (
        f"[hosts.h]\nslots = {slots}\ngpus = {gpus}\nlost_after = {lost}\n"
        f"env = {_toml_value(env)}\n"
    )
    (h,) = parse_hosts_text(text, Path("hosts.toml")).hosts
    assert (h.slots, h.gpus, h.lost_after, dict(h.env)) == (slots, tuple(sorted(gpus)), lost, env)


def test_a_secret_env_name_not_in_env_takes_its_value_from_the_environment() -> None:
    data = {
        "defaults": {"env": {"A": "from-file"}, "secret_env": ["A", "B"]},
        "hosts": {"x": {"secret_env": ["C"]}, "y": {}},
    }
    environ = {"A": "from-shell", "B": "b-value", "C": "c-value", "D": "not asked for"}
    x, y = hosts_from_mapping(data, Path("hosts.toml"), environ=environ).hosts
    # `env` wins over the environment; names nobody lists are not taken.
    assert dict(x.env) == {"A": "from-file", "B": "b-value", "C": "c-value"}
    assert dict(y.env) == {"A": "from-file", "B": "b-value"}
    config = hosts_from_mapping(data, Path("hosts.toml"), environ=environ)
    assert config.secret_names == {"A", "B", "C"}


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('[defaults]\nsecret_env = ["TOKEN"]\n[hosts.x]\n', "hosts.toml:2: [defaults]: "),
        ('[hosts.x]\nenv = { A = "1" }\nsecret_env = ["TOKEN"]\n', "hosts.toml:3: host x: "),
    ],
)
def test_a_secret_env_name_set_nowhere_is_an_error_naming_it(text: str, where: str) -> None:
    data = tomllib.loads(text)
    with pytest.raises(ConfigError) as err:
        hosts_from_mapping(data, Path("hosts.toml"), text, environ={"TOKEN": ""})
    assert str(err.value) == (
        f"{where}`secret_env` names TOKEN, which is set neither in `env` nor in the environment "
        "labtasker runs in; export TOKEN before running labtasker, or remove it from `secret_env`"
    )
