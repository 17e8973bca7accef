"""``kenning start WORKFLOW --from-file FILE``: a run per JSON line."""

from __future__ import annotations

import asyncio
from pathlib import Path

from kenning.core.definitions import decode_input
from kenning.stores import open_store

from .conftest import Invoke


def stored_inputs(database: str) -> dict[str, tuple[object, ...]]:
    """Every run's id and decoded arguments."""
    async def read() -> dict[str, tuple[object, ...]]:
        store = open_store(database)
        await store.open()
        try:
            return {r.run_id: decode_input(r.input) for r in await store.list_runs(limit=100)}
        finally:
            await store.close()
    return asyncio.run(read())


def test_start_from_file(cli: Invoke, db_path: str, tmp_path: Path) -> None:
    lines = tmp_path / "runs.jsonl"
    lines.write_text('{"id": "o1", "input": ["A"]}\n\n{"input": {"order_id": "B"}}\n{}\n')
    result = cli("start", "wf", "--from-file", str(lines), "--database", db_path)
    assert result.exit_code == 0, result.output
    ids = result.stdout.split()
    assert len(ids) == 3 and ids[0] == "o1"
    assert "started 3 runs (0 already existed)" in result.stderr
    inputs = stored_inputs(db_path)
    assert inputs["o1"] == (["A"], {}) and inputs[ids[1]] == ([], {"order_id": "B"})
    again = cli("start", "wf", "--from-file", "-", "--database", db_path,
                input='{"id": "o1", "input": ["other"]}\n{"id": "o2"}\n')
    assert again.exit_code == 0, again.output
    assert again.stdout.split() == ["o1", "o2"]
    assert "started 1 runs (1 already existed)" in again.stderr
    assert stored_inputs(db_path)["o1"] == (["A"], {})


def test_start_from_file_rejects_bad_lines(cli: Invoke, db_path: str) -> None:
    for text, message in (("[1]\n", "line 1: expected an object"),
                          ('{"id": "x"}\nnot json\n', "line 2: not JSON"),
                          ('{"inputs": 1}\n', "line 1: expected an object")):
        result = cli("start", "wf", "--from-file", "-", "--database", db_path, input=text)
        assert result.exit_code != 0 and message in result.output, result.output
    mixed = cli("start", "wf", "--from-file", "-", "--id", "x", "--database", db_path,
                input="{}\n")
    assert mixed.exit_code != 0 and "takes no --input" in mixed.output
    assert stored_inputs(db_path) == {}
