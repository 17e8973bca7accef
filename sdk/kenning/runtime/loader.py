"""Import the user's workflow code from a dotted module name or a ``.py`` file."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from kenning.core import definitions
from kenning.core.definitions import Registry, WorkflowDefinition
from kenning.core.errors import ConfigurationError

log = logging.getLogger(__name__)


def load_workflows(target: str) -> list[WorkflowDefinition[Any, Any]]:
    """The workflows that importing ``target`` (``pkg.module`` or ``path/to/file.py``) defines.

    Served are the ``@workflow`` objects in the module's namespace plus any decorated while
    it was imported (in modules it imports). Raises ``ConfigurationError`` when the module
    cannot be found or imported, or defines no workflow.
    """
    before = {id(wf) for defs in definitions._CATALOGUE.values() for wf in defs}
    module = _import(target)
    found: dict[int, WorkflowDefinition[Any, Any]] = {
        id(value): value for value in vars(module).values()
        if isinstance(value, WorkflowDefinition)
    }
    for defs in definitions._CATALOGUE.values():
        for wf in defs:
            if id(wf) not in before:
                found.setdefault(id(wf), wf)
    if not found:
        raise ConfigurationError(
            f"'{target}' defines no @workflow; decorate an async function with @workflow")
    registry = Registry(found.values())  # raises on two functions under one name
    workflows = [registry.get(name) for name in registry.names]
    log.debug("loaded %s: workflows %s", target, ", ".join(registry.names))
    return workflows


def _is_path(target: str) -> bool:
    return target.endswith(".py") or "/" in target or "\\" in target


def _import(target: str) -> ModuleType:
    if not target:
        raise ConfigurationError("give a module name (pkg.module) or a path to a .py file")
    if _is_path(target):
        return _import_file(Path(target))
    return _import_module(target)


def _import_module(name: str) -> ModuleType:
    # Like `python -m`, resolve modules from the current directory first.
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(f"{exc.name}.")):
            raise ConfigurationError(
                f"no module named '{name}' (looked in {Path.cwd()} and the installed "
                f"packages); pass a dotted module name or a path to a .py file"
            ) from exc
        raise ConfigurationError(f"importing '{name}' failed: {exc}") from exc
    except Exception as exc:
        raise ConfigurationError(
            f"importing '{name}' failed: {type(exc).__name__}: {exc}") from exc


def _import_file(path: Path) -> ModuleType:
    if not path.is_file():
        raise ConfigurationError(f"no such file '{path}'")
    if path.suffix != ".py":
        raise ConfigurationError(f"'{path}' is not a .py file")
    resolved = path.resolve()
    # Like `python file.py`: the file's folder goes on sys.path so sibling imports work, and
    # the module is named after the file so that a later `import <stem>` finds this object.
    folder = str(resolved.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    name = resolved.stem
    existing = sys.modules.get(name)
    if existing is not None:
        existing_file = getattr(existing, "__file__", None)
        if existing_file is not None and Path(existing_file).resolve() == resolved:
            return existing
        name = f"_kenning_user_{abs(hash(str(resolved))):x}"
    if not name.isidentifier():
        name = f"_kenning_user_{abs(hash(str(resolved))):x}"
    spec = importlib.util.spec_from_file_location(name, resolved)
    if spec is None or spec.loader is None:
        raise ConfigurationError(f"cannot import '{path}' as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise ConfigurationError(
            f"importing '{path}' failed: {type(exc).__name__}: {exc}") from exc
    return module
