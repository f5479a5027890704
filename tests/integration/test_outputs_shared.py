"""Output globs with placeholders on a real sshd host whose working directory the tasks share:
each task's outputs hold its own files only, whatever the others wrote next to them."""

from __future__ import annotations

import json

from tests.integration.conftest import Lab, finish

#: Writes out/<lr>/metrics.json and runs/<task id>/id.txt, then waits (up to 30 s) until the
#: other task has written its own, so that each copy sees both tasks' files.
TASK = (
    "mkdir -p out/%{lr} runs/$LABTASKER_TASK_ID"
    " && echo '{\"lr\": %{lr}}' > out/%{lr}/metrics.json"
    " && echo $LABTASKER_TASK_ID > runs/$LABTASKER_TASK_ID/id.txt"
    " && for i in $(seq 300); do [ $(ls out | wc -l) -ge 2 ] && break; sleep 0.1; done"
)


def test_two_tasks_in_a_shared_workdir_each_get_only_their_own_files(lab: Lab) -> None:
    work = lab.shared / "work"
    hosts = lab.hosts_toml("cpu", cpu={"workdir": str(work), "outputs": ["runs/{task_id}/*"]})
    added = lab.run("queue", "add", "--json", "--grid", "lr=0.1,0.01", "--outputs",
                    "out/%{lr}/metrics.json", "--cmd", TASK)  # fmt: skip
    assert added.returncode == 0 and added.stderr == "", added.stderr
    ids = json.loads(added.stdout)
    code, out, err = finish(lab.start("dispatch", "--hosts", str(hosts)))
    assert code == 0, (out, err)
    assert {lab.task(i)["host"] for i in ids} == {"cpu"}
    assert sorted(p.name for p in (work / "out").iterdir()) == ["0.01", "0.1"]  # both there
    for task_id, lr in zip(ids, ("0.1", "0.01"), strict=True):
        dest = lab.root / "queue.outputs" / str(task_id)
        files = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
        assert files == [f"out/{lr}/metrics.json", f"runs/{task_id}/id.txt"], files
        assert json.loads((dest / "out" / lr / "metrics.json").read_text()) == {"lr": float(lr)}


def test_a_host_glob_whose_value_is_unsafe_is_not_copied_and_said(lab: Lab) -> None:
    work = lab.shared / "work2"
    hosts = lab.hosts_toml("cpu", cpu={"workdir": str(work), "outputs": ["out/%{name}/*"]})
    script = "mkdir -p out/x && echo hi > out/x/f && echo %{name}"
    ids = lab.add_cmd(script, "--args", '{"name": "x"}', "--args", '{"name": "../x"}')
    code, out, err = finish(lab.start("dispatch", "--hosts", str(hosts)))
    assert code == 0, (out, err)
    assert (lab.root / "queue.outputs" / str(ids[0]) / "out" / "x" / "f").read_text() == "hi\n"
    assert not (lab.root / "queue.outputs" / str(ids[1])).exists()
    assert (
        f"task {ids[1]} on cpu: not copied: output glob 'out/%{{name}}/*': %{{name}} is '../x',"
        " which is not one safe path component"
    ) in " ".join((out + err).split())
