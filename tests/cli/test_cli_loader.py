"""Loading workflow code from a module name or a file, and the errors when that fails."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from kenning.core import definitions
from kenning.core.errors import ConfigurationError
from kenning.runtime.loader import load_workflows

from .conftest import Invoke

FLOWS = """
from kenning import WorkflowContext, workflow

@workflow(name="{prefix}_first")
async def first(ctx: WorkflowContext) -> int:
    return 1

@workflow(name="{prefix}_second")
async def second(ctx: WorkflowContext) -> int:
    return 2

async def not_a_workflow(ctx: WorkflowContext) -> None: ...
"""


@pytest.fixture(autouse=True)
def _isolated_imports(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Loaded modules, sys.path entries and catalogued workflows vanish after each test."""
    monkeypatch.setattr(definitions, "_CATALOGUE", {})
    monkeypatch.setattr(sys, "path", list(sys.path))
    modules = set(sys.modules)
    yield
    for name in set(sys.modules) - modules:
        del sys.modules[name]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def test_load_a_file(tmp_path: Path) -> None:
    file = write(tmp_path / "flows_file.py", FLOWS.format(prefix="lf"))
    workflows = load_workflows(str(file))
    assert [wf.name for wf in workflows] == ["lf_first", "lf_second"]
    # named after the file, so a later `import flows_file` finds the same module
    assert sys.modules["flows_file"].first is workflows[0]


def test_load_a_file_twice_returns_the_same_workflows(tmp_path: Path) -> None:
    file = write(tmp_path / "twice.py", FLOWS.format(prefix="tw"))
    assert load_workflows(str(file)) == load_workflows(str(file))


def test_a_file_may_import_its_siblings(tmp_path: Path) -> None:
    write(tmp_path / "sibling_helpers.py", "VALUE = 'sib'\n")
    file = write(tmp_path / "uses_sibling.py", """
        from kenning import WorkflowContext, workflow
        from sibling_helpers import VALUE

        @workflow(name="sib_" + VALUE)
        async def wf(ctx: WorkflowContext) -> str:
            return VALUE
    """)
    assert [wf.name for wf in load_workflows(str(file))] == ["sib_sib"]


def test_load_a_dotted_module_from_the_current_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "cli_pkg_x" / "__init__.py", "")
    write(tmp_path / "cli_pkg_x" / "flows.py", FLOWS.format(prefix="mod"))
    monkeypatch.chdir(tmp_path)
    sys.path[:] = [p for p in sys.path if p not in ("", str(tmp_path))]
    assert [wf.name for wf in load_workflows("cli_pkg_x.flows")] == ["mod_first", "mod_second"]


def test_workflows_decorated_in_imported_modules_are_served(tmp_path: Path) -> None:
    write(tmp_path / "cli_pkg_y" / "__init__.py", "")
    write(tmp_path / "cli_pkg_y" / "inner.py", FLOWS.format(prefix="inner"))
    file = write(tmp_path / "entry_y.py", "import cli_pkg_y.inner  # noqa: F401\n")
    assert [wf.name for wf in load_workflows(str(file))] == ["inner_first", "inner_second"]


@pytest.mark.parametrize(("target", "message"), [
    ("missing_file.py", "no such file 'missing_file.py'"),
    ("no_such_module_kenning_xyz", "no module named 'no_such_module_kenning_xyz'"),
    ("no_such_pkg_kenning_xyz.flows", "no module named 'no_such_pkg_kenning_xyz.flows'"),
    ("", "give a module name"),
])
def test_missing_code(target: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        load_workflows(target)


def test_a_file_without_workflows(tmp_path: Path) -> None:
    file = write(tmp_path / "empty_flows.py", "X = 1\n")
    with pytest.raises(ConfigurationError, match="defines no @workflow"):
        load_workflows(str(file))


def test_a_file_that_raises_on_import(tmp_path: Path) -> None:
    file = write(tmp_path / "broken_flows.py", "1 / 0\n")
    with pytest.raises(ConfigurationError,
                       match=r"importing .*broken_flows\.py' failed: ZeroDivisionError"):
        load_workflows(str(file))
    assert "broken_flows" not in sys.modules


def test_a_module_with_a_missing_dependency(tmp_path: Path) -> None:
    file = write(tmp_path / "needs_dep.py", "import kenning_missing_dependency_xyz\n")
    with pytest.raises(ConfigurationError,
                       match="No module named 'kenning_missing_dependency_xyz'"):
        load_workflows(str(file))


def test_two_functions_under_one_name(tmp_path: Path) -> None:
    file = write(tmp_path / "clash.py", """
        from kenning import WorkflowContext, workflow

        @workflow(name="clash")
        async def one(ctx: WorkflowContext) -> None: ...

        @workflow(name="clash")
        async def two(ctx: WorkflowContext) -> None: ...
    """)
    with pytest.raises(ConfigurationError, match="'clash' is registered twice"):
        load_workflows(str(file))


def test_commands_report_unloadable_code_in_one_line(cli: Invoke, tmp_path: Path) -> None:
    db = str(tmp_path / "k.db")
    dev = cli("dev", str(tmp_path / "nope.py"), "--database", db)
    assert dev.exit_code == 2
    assert dev.stderr == f"error: no such file '{tmp_path / 'nope.py'}'\n"
    worker = cli("worker", "--module", "no_such_module_kenning_xyz", "--database", db)
    assert worker.exit_code == 2
    assert worker.stderr.startswith("error: no module named 'no_such_module_kenning_xyz'")
    assert not Path(db).exists()
