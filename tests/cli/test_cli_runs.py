"""``kenning start`` and ``kenning runs ...`` against a SQLite file, through click's runner."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from kenning import App, WorkflowContext, activity, continue_as_new, workflow
from kenning.core.definitions import decode_input
from kenning.core.models import RunStatus
from kenning.runtime.worker import WorkerOptions
from kenning.stores import open_store

from .conftest import BackgroundApp, Invoke, Seeded


def stored_run_input(database: str, run_id: str) -> tuple[list[Any], dict[str, Any]]:
    """The arguments a run was started with, read back from the store."""
    async def read() -> tuple[list[Any], dict[str, Any]]:
        store = open_store(database)
        await store.open()
        try:
            run = await store.get_run(run_id)
            assert run is not None
            return decode_input(run.input)
        finally:
            await store.close()
    return asyncio.run(read())


# -- start ---------------------------------------------------------------------------------
def test_start_prints_the_run_id_and_stores_the_input(cli: Invoke, db_path: str) -> None:
    result = cli("start", "cli_seed_ok", "--input", "[21]", "--database", db_path)
    assert result.exit_code == 0, result.output
    run_id = result.stdout.strip()
    assert run_id.startswith("run-")
    assert stored_run_input(db_path, run_id) == ([21], {})


def test_start_input_forms(cli: Invoke, db_path: str, tmp_path: Path) -> None:
    file = tmp_path / "input.json"
    file.write_text('{"order_id": "from-file"}')
    cases = {
        "obj": (["--input", '{"order_id": "A1", "run_id": 7}'],
                ([], {"order_id": "A1", "run_id": 7})),
        "arr": (["--input", '["A1", 2]'], (["A1", 2], {})),
        "one": (["--input", '"A1"'], (["A1"], {})),
        "none": ([], ([], {})),
        "file": (["--input", f"@{file}"], ([], {"order_id": "from-file"})),
    }
    for run_id, (flags, expected) in cases.items():
        result = cli("start", "wf", *flags, "--id", run_id, "--database", db_path)
        assert result.exit_code == 0, result.output
        assert stored_run_input(db_path, run_id) == expected, run_id


def test_start_reads_input_from_stdin(cli: Invoke, db_path: str) -> None:
    result = cli("start", "wf", "--input", "@-", "--id", "r1", "--database", db_path,
                 input='[1, 2, 3]')
    assert result.exit_code == 0, result.output
    assert stored_run_input(db_path, "r1") == ([1, 2, 3], {})


def test_start_is_idempotent_on_the_run_id(cli: Invoke, db_path: str) -> None:
    first = cli("start", "wf", "--id", "same", "--database", db_path)
    again = cli("start", "wf", "--id", "same", "--database", db_path)
    assert first.exit_code == again.exit_code == 0
    assert again.stdout.strip() == "same"
    assert "already exists" in again.stderr


def test_start_with_an_id_of_another_workflow_is_an_error(cli: Invoke, db_path: str) -> None:
    cli("start", "wf", "--id", "taken", "--database", db_path)
    result = cli("start", "other", "--id", "taken", "--database", db_path)
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: run id 'taken' already belongs to workflow 'wf'"


def test_start_with_invalid_json_is_a_usage_error(cli: Invoke, db_path: str) -> None:
    result = cli("start", "wf", "--input", "{order: 1}", "--database", db_path)
    assert result.exit_code == 2
    assert "--input" in result.stderr
    assert "not valid JSON" in result.stderr
    assert "line 1 column 2" in result.stderr
    assert not Path(db_path).exists()  # nothing was started


def test_start_with_a_missing_input_file_is_a_usage_error(cli: Invoke, db_path: str) -> None:
    result = cli("start", "wf", "--input", "@/nonexistent/input.json", "--database", db_path)
    assert result.exit_code == 2
    assert "cannot read /nonexistent/input.json" in result.stderr


def test_start_wait_prints_the_result(cli: Invoke, db_path: str,
                                      background_app: BackgroundApp) -> None:
    result = cli("start", "cli_seed_ok", "--input", "4", "--id", "w1", "--wait",
                 "--timeout", "10", "--database", db_path)
    assert result.exit_code == 0, result.output
    run_id, *rest = result.stdout.splitlines()
    assert run_id == "w1"
    assert json.loads("\n".join(rest)) == {"doubled": 8}


def test_start_wait_on_a_failing_run_exits_1(cli: Invoke, db_path: str,
                                             background_app: BackgroundApp) -> None:
    result = cli("start", "cli_seed_boom", "--input", '"no luck"', "--wait", "--timeout", "10",
                 "--database", db_path)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: run ")
    assert "failed" in result.stderr and "no luck" in result.stderr


def test_start_wait_times_out_with_exit_5(cli: Invoke, db_path: str) -> None:
    result = cli("start", "nobody_serves_this", "--id", "t1", "--wait", "--timeout", "0.2",
                 "--database", db_path)
    assert result.exit_code == 5
    assert result.stdout.strip() == "t1"
    assert result.stderr.strip() == "error: run 't1' did not finish within 0.2s (it is pending)"


def test_start_on_an_unusable_database_exits_4(cli: Invoke, tmp_path: Path) -> None:
    result = cli("start", "wf", "--database", str(tmp_path / "no" / "such" / "dir.db"))
    assert result.exit_code == 4
    assert result.stderr.startswith("error: cannot open SQLite database")
    assert len(result.stderr.strip().splitlines()) == 1


# -- runs list -----------------------------------------------------------------------------
def test_runs_list_table(cli: Invoke, seeded: Seeded) -> None:
    result = cli("runs", "list", "--database", seeded.database)
    assert result.exit_code == 0, result.output
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["RUN", "ID", "WORKFLOW", "STATUS", "WAITING", "FOR", "AGE"]
    by_id = {row.split()[0]: row for row in rows}
    assert set(by_id) == {seeded.ok, seeded.boom, seeded.waiting}  # run-pending is in "other"
    assert "completed" in by_id[seeded.ok]
    assert "failed" in by_id[seeded.boom]
    assert 'cli.seed.approved where data.order_id="A1"' in by_id[seeded.waiting]


def test_runs_list_filters_and_json(cli: Invoke, seeded: Seeded) -> None:
    def ids(*flags: str) -> list[str]:
        result = cli("runs", "list", "-o", "json", "--database", seeded.database, *flags)
        assert result.exit_code == 0, result.output
        return [r["run_id"] for r in json.loads(result.stdout)]

    assert ids("--status", "failed") == [seeded.boom]
    assert ids("--workflow", "cli_seed_wait") == [seeded.waiting]
    assert ids("--namespace", "other") == [seeded.pending]
    assert set(ids("-A")) == {seeded.ok, seeded.boom, seeded.waiting, seeded.pending}
    assert len(ids("-A", "--limit", "2")) == 2

    everything = json.loads(cli("runs", "list", "-A", "-o", "json", "--database",
                                seeded.database).stdout)
    ok = next(r for r in everything if r["run_id"] == seeded.ok)
    assert ok["status"] == "completed" and ok["result"] == {"doubled": 42}
    assert ok["finished_at"].endswith("Z")


def test_runs_list_all_namespaces_has_a_namespace_column(cli: Invoke, seeded: Seeded) -> None:
    result = cli("runs", "list", "-A", "--database", seeded.database)
    assert result.stdout.splitlines()[0].startswith("NAMESPACE")
    assert any(line.startswith("other") for line in result.stdout.splitlines())


def test_runs_list_rejects_an_unknown_status(cli: Invoke, seeded: Seeded) -> None:
    result = cli("runs", "list", "--status", "sleeping", "--database", seeded.database)
    assert result.exit_code == 2
    assert "sleeping" in result.stderr


def test_runs_list_empty(cli: Invoke, seeded: Seeded) -> None:
    result = cli("runs", "list", "--namespace", "empty", "--database", seeded.database)
    assert result.exit_code == 0
    assert result.stdout == ""
    assert "no runs" in result.stderr


# -- runs show / history ---------------------------------------------------------------------
def test_runs_show_a_completed_run(cli: Invoke, seeded: Seeded) -> None:
    result = cli("runs", "show", seeded.ok, "--database", seeded.database)
    assert result.exit_code == 0, result.output
    fields = dict(line.split(":", 1) for line in result.stdout.splitlines())
    fields = {k: v.strip() for k, v in fields.items()}
    assert fields["workflow"] == "cli_seed_ok"
    assert fields["status"] == "completed"
    assert fields["result"] == '{"doubled": 42}'
    assert fields["waiting for"] == "-"


def test_runs_show_a_waiting_and_a_failed_run(cli: Invoke, seeded: Seeded) -> None:
    waiting = cli("runs", "show", seeded.waiting, "--database", seeded.database).stdout
    assert 'waiting for: cli.seed.approved where data.order_id="A1"' in waiting
    failed = cli("runs", "show", seeded.boom, "-o", "json", "--database", seeded.database)
    doc = json.loads(failed.stdout)
    assert doc["status"] == RunStatus.FAILED.value
    assert "kaput" in doc["error"]


def test_runs_show_json_of_a_waiting_run(cli: Invoke, seeded: Seeded) -> None:
    doc = json.loads(cli("runs", "show", seeded.waiting, "-o", "json", "--database",
                         seeded.database).stdout)
    assert doc["waiting_for"] == [{"kind": "event", "seq": 0,
                                   "event_type": "cli.seed.approved",
                                   "event_types": ["cli.seed.approved"],
                                   "match": {"data.order_id": "A1"}, "wake_at": None}]


def test_runs_history(cli: Invoke, seeded: Seeded) -> None:
    table = cli("runs", "history", seeded.ok, "--database", seeded.database)
    assert table.exit_code == 0, table.output
    header, row = table.stdout.splitlines()
    assert header.split() == ["SEQ", "KIND", "NAME", "VALUE", "TIME"]
    assert row.split()[:4] == ["0", "activity", "cli_seed_double", "42"]
    doc = json.loads(cli("runs", "history", seeded.ok, "--json", "--database",
                         seeded.database).stdout)
    assert (doc["format"], doc["version"], doc["run_id"]) == ("kenning.history", 2, seeded.ok)
    assert doc["workflow"] == "cli_seed_ok" and doc["status"] == "completed"
    assert [(s["seq"], s["kind"], s["name"], s["value"]) for s in doc["steps"]] == \
        [(0, "activity", "cli_seed_double", 42)]
    assert json.loads(cli("runs", "history", seeded.ok, "-o", "json", "--database",
                          seeded.database).stdout) == doc


def test_runs_history_of_a_run_without_steps(cli: Invoke, seeded: Seeded) -> None:
    result = cli("runs", "history", seeded.pending, "--database", seeded.database)
    assert result.exit_code == 0
    assert "no steps" in result.stderr


# -- runs cancel / result ----------------------------------------------------------------------
def test_runs_cancel(cli: Invoke, seeded: Seeded) -> None:
    result = cli("runs", "cancel", seeded.waiting, "--reason", "changed my mind",
                 "--database", seeded.database)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"cancelled run '{seeded.waiting}'"
    again = cli("runs", "cancel", seeded.waiting, "--database", seeded.database)
    assert again.exit_code == 0 and "already cancelled" in again.stdout
    doc = json.loads(cli("runs", "show", seeded.waiting, "-o", "json", "--database",
                         seeded.database).stdout)
    assert (doc["status"], doc["error"]) == ("cancelled", "changed my mind")
    result = cli("runs", "result", seeded.waiting, "--database", seeded.database)
    assert result.exit_code == 1
    assert "cancelled" in result.stderr and "changed my mind" in result.stderr


def test_runs_cancel_a_finished_run_is_an_error(cli: Invoke, seeded: Seeded) -> None:
    result = cli("runs", "cancel", seeded.ok, "--database", seeded.database)
    assert result.exit_code == 1
    assert result.stderr.strip() == \
        f"error: run '{seeded.ok}' already finished (completed); nothing to cancel"


def test_runs_result(cli: Invoke, seeded: Seeded) -> None:
    ok = cli("runs", "result", seeded.ok, "--database", seeded.database)
    assert ok.exit_code == 0
    assert json.loads(ok.stdout) == {"doubled": 42}
    failed = cli("runs", "result", seeded.boom, "--database", seeded.database)
    assert failed.exit_code == 1
    assert failed.stderr.startswith(f"error: run {seeded.boom} failed:")
    assert len(failed.stderr.strip().splitlines()) == 1


def test_runs_result_timeout(cli: Invoke, seeded: Seeded) -> None:
    waited = cli("runs", "result", seeded.waiting, "--timeout", "0.2",
                 "--database", seeded.database)
    assert waited.exit_code == 5
    assert "did not finish within 0.2s (it is waiting_for_event)" in waited.stderr
    now = cli("runs", "result", seeded.waiting, "--timeout", "0", "--database", seeded.database)
    assert now.exit_code == 5


# -- errors ------------------------------------------------------------------------------------
def test_unknown_run_exits_3(cli: Invoke, seeded: Seeded) -> None:
    for command in (["show"], ["history"], ["cancel"], ["result", "--timeout", "1"]):
        result = cli("runs", command[0], "nope", *command[1:], "--database", seeded.database)
        assert result.exit_code == 3, command
        assert result.stderr == "error: no run with id 'nope'\n", command


def test_missing_database_exits_4_without_creating_it(cli: Invoke, db_path: str) -> None:
    for command in (["list"], ["show", "r"], ["history", "r"], ["cancel", "r"], ["result", "r"]):
        result = cli("runs", *command, "--database", db_path)
        assert result.exit_code == 4, command
        assert result.stderr.startswith(f"error: SQLite database '{db_path}' does not exist")
    assert not Path(db_path).exists()


def test_database_from_the_environment(cli: Invoke, seeded: Seeded) -> None:
    result = cli("runs", "result", seeded.ok, env={"KENNING_DATABASE": seeded.database})
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"doubled": 42}


def test_debug_shows_the_traceback(cli: Invoke, seeded: Seeded) -> None:
    plain = cli("runs", "show", "nope", "--database", seeded.database)
    assert "Traceback" not in plain.stderr
    debug = cli("--debug", "runs", "show", "nope", "--database", seeded.database)
    assert debug.exit_code == 3
    assert "Traceback (most recent call last)" in debug.stderr
    assert debug.stderr.rstrip().endswith("error: no run with id 'nope'")


def test_help_documents_the_exit_codes(cli: Invoke) -> None:
    result = cli("--help")
    assert result.exit_code == 0
    for line in ("0  success", "3  no such run or workflow", "4  store or sink unavailable",
                 "5  timed out"):
        assert line in result.stdout
    for command in ("dev", "worker", "sink", "start", "send", "runs"):
        assert command in result.stdout
        assert cli(command, "--help").exit_code == 0
    for sub in ("list", "show", "history", "cancel", "result"):
        assert cli("runs", sub, "--help").exit_code == 0


@workflow(name="cli_loop")
async def cli_loop(ctx: WorkflowContext, n: int) -> int:
    await cli_loop_tick(ctx, n)
    if n < 2:
        continue_as_new(ctx, n + 1)
    return n


@activity(name="cli_loop_tick")
async def cli_loop_tick(ctx: WorkflowContext, n: int) -> int:
    return n


def test_runs_history_all_shows_closed_chapters(cli: Invoke, db_path: str) -> None:
    async def record() -> str:
        async with App(db_path, "loop-worker", workflows=[cli_loop],
                       worker_options=WorkerOptions(poll_interval=0.05)) as app:
            run_id = await app.start(cli_loop, 0, run_id="looped")
            assert await app.result(run_id, timeout=15) == 2
            return run_id

    run_id = asyncio.run(record())
    text = cli("runs", "history", run_id, "--all", "--database", db_path)
    assert text.exit_code == 0, text.output
    titles = [line for line in text.stdout.splitlines() if line.startswith("chapter ")]
    assert [t.split(":")[0] for t in titles] == ["chapter 0", "chapter 1", "chapter 2"]
    assert "continued as new" in titles[0] and titles[2].endswith("current")
    doc = json.loads(cli("runs", "history", run_id, "--all", "--json", "--database",
                         db_path).stdout)
    chapters = doc["chapters"]
    assert [c["input"]["args"] for c in chapters] == [[0], [1], [2]]
    assert [c["steps"][0]["value"] for c in chapters] == [0, 1, 2]
    only_current = json.loads(cli("runs", "history", run_id, "--json", "--database",
                                  db_path).stdout)
    assert only_current == chapters[-1]


@workflow(name="cli_kid")
async def cli_kid(ctx: WorkflowContext, n: int) -> int:
    return n


@workflow(name="cli_parent")
async def cli_parent(ctx: WorkflowContext) -> list[int]:
    return [await cli_kid.run_child(ctx, n) for n in (1, 2)]


def test_runs_list_parent_shows_the_children(cli: Invoke, db_path: str) -> None:
    async def record() -> None:
        async with App(db_path, "kid-worker", workflows=[cli_parent, cli_kid],
                       worker_options=WorkerOptions(poll_interval=0.05)) as app:
            assert await app.result(await app.start(cli_parent, run_id="mom"),
                                    timeout=15) == [1, 2]

    asyncio.run(record())
    listed = json.loads(cli("runs", "list", "--parent", "mom", "-o", "json", "--database",
                            db_path).stdout)
    assert sorted(r["run_id"] for r in listed) == ["mom-0", "mom-2"]
    assert {r["parent_run_id"] for r in listed} == {"mom"}
    shown = cli("runs", "show", "mom-0", "--database", db_path).stdout
    assert "parent:      mom" in shown
