"""SQL of a ``ClaimScope``: the namespace, pool and build filters of a claim, and the
columns a scoped claim sets (the build a run started on, its upgrade policy).

Both stores append these fragments to their claim statement, so the rules live in one
place: a run with no pool fits every pool; a pinned run that has started fits only its
build; a run not started yet, or marked ``upgrade='auto'`` (on the run, or through one of
the worker's ``auto_upgrade`` workflows), fits any build; a draining worker takes only
the pinned runs of its own build.
"""

from __future__ import annotations

from typing import Any

from kenning.core.models import ClaimScope

__all__ = ["postgres_scope", "postgres_scope_args", "sqlite_scope"]


def _fit(auto: str, build: str, drain: str) -> str:
    return (f" AND (CASE WHEN {drain} THEN (build_id = {build} AND NOT {auto})"
            f" ELSE (build_id IS NULL OR build_id = {build} OR {auto}) END)")


def _sets(auto: str, build: str) -> str:
    return (f", build_id = CASE WHEN {auto} THEN {build} ELSE COALESCE(build_id, {build}) END"
            f", upgrade = CASE WHEN {auto} THEN 'auto' ELSE upgrade END")


def sqlite_scope(scope: ClaimScope) -> tuple[str, str, dict[str, Any]]:
    """(filter, sets, named parameters) of ``scope`` for the SQLite claim."""
    params: dict[str, Any] = {"scope_pool": scope.pool, "scope_build": scope.build_id,
                              "scope_drain": int(scope.drain)}
    filters = ""
    if scope.namespaces is not None:
        names = {f"scope_ns{i}": ns for i, ns in enumerate(scope.namespaces)}
        filters += f" AND namespace IN ({', '.join(':' + k for k in names) or 'NULL'})"
        params.update(names)
    autos = {f"scope_auto{i}": w for i, w in enumerate(scope.auto_upgrade)}
    params.update(autos)
    auto = "(upgrade = 'auto'"
    if autos:
        auto += f" OR workflow IN ({', '.join(':' + k for k in autos)})"
    auto += ")"
    filters += " AND (pool IS NULL OR pool = :scope_pool)"
    filters += _fit(auto, ":scope_build", ":scope_drain")
    return filters, _sets(auto, ":scope_build"), params


def postgres_scope(first: int) -> tuple[str, str]:
    """(filter, sets) of a scoped PostgreSQL claim whose scope parameters are numbered
    from ``first``: namespaces (``text[]``, NULL for any), pool, build, drain, and the
    auto-upgrade workflows (``text[]``); see ``postgres_scope_args``."""
    ns, pool, build, drain, autos = (f"${first + i}" for i in range(5))
    auto = f"(upgrade = 'auto' OR workflow = ANY({autos}::text[]))"
    build_text = f"{build}::text"
    filters = (f" AND ({ns}::text[] IS NULL OR namespace = ANY({ns}::text[]))"
               f" AND (pool IS NULL OR pool = {pool}::text)"
               + _fit(auto, build_text, f"{drain}::boolean"))
    return filters, _sets(auto, build_text)


def postgres_scope_args(scope: ClaimScope) -> list[Any]:
    """The five parameters of ``postgres_scope``, in order."""
    namespaces = None if scope.namespaces is None else list(scope.namespaces)
    return [namespaces, scope.pool, scope.build_id, scope.drain, list(scope.auto_upgrade)]
