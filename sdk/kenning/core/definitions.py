"""``@workflow`` and ``@activity``: durable identities for plain async functions."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any, Concatenate, Generic, ParamSpec, Protocol, TypeVar, overload

from kenning.core import codec
from kenning.core.errors import ConfigurationError, InvalidInput, WorkflowNotFound

if TYPE_CHECKING:
    from kenning.core.children import ChildHandle
    from kenning.core.context import WorkflowContext

P = ParamSpec("P")
R = TypeVar("R")


def seconds_of(value: timedelta | float | int, what: str) -> float:
    """Seconds in a ``timedelta`` or number; raise on a negative or non-numeric value."""
    secs = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(secs, bool) or not isinstance(secs, (int, float)) or secs < 0:
        raise ConfigurationError(f"{what} must be a non-negative timedelta or number of seconds")
    return float(secs)


@dataclass(frozen=True)
class RetryPolicy:
    """How an activity is retried: exponential backoff between durable attempts."""

    max_attempts: int = 3
    initial_interval: timedelta | float = 1.0
    backoff: float = 2.0
    max_interval: timedelta | float = 60.0
    non_retryable: tuple[type[BaseException], ...] = ()

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigurationError("RetryPolicy.max_attempts must be at least 1")
        if self.backoff < 1:
            raise ConfigurationError("RetryPolicy.backoff must be at least 1")
        seconds_of(self.initial_interval, "RetryPolicy.initial_interval")
        seconds_of(self.max_interval, "RetryPolicy.max_interval")

    def delay_after(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        initial = seconds_of(self.initial_interval, "initial_interval")
        ceiling = seconds_of(self.max_interval, "max_interval")
        return float(min(ceiling, initial * self.backoff ** (attempt - 1)))


DEFAULT_RETRY = RetryPolicy()


class _Signature:
    """A function's parameters (after ``ctx``) and return type, resolved lazily."""

    def __init__(self, fn: Callable[..., Any], kind: str, name: str) -> None:
        self._fn = fn
        self._what = f"{kind} '{name}'"
        self.signature = inspect.signature(fn)
        params = list(self.signature.parameters.values())
        if not params or params[0].kind not in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        ):
            raise ConfigurationError(f"{self._what} must take the context as its first parameter")

    @cached_property
    def hints(self) -> dict[str, Any]:
        try:
            return typing.get_type_hints(self._fn)
        except Exception:  # unresolvable forward references: validate nothing
            return {}

    @property
    def return_type(self) -> Any:
        return self.hints.get("return", Any)

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> inspect.BoundArguments:
        try:
            return self.signature.bind(None, *args, **kwargs)
        except TypeError as exc:
            raise InvalidInput(f"{self._what} input: {exc}") from None

    def rebuild_arguments(
        self, args: list[Any], kwargs: dict[str, Any]
    ) -> tuple[list[Any], dict[str, Any]]:
        """Validate JSON arguments into the annotated types."""
        bound = self.bind(tuple(args), kwargs)
        for name, value in list(bound.arguments.items())[1:]:
            param = self.signature.parameters[name]
            annotation = self.hints.get(name, Any)
            if param.kind is inspect.Parameter.VAR_POSITIONAL:
                bound.arguments[name] = tuple(
                    codec.rebuild(v, annotation, f"{self._what} argument '{name}'") for v in value
                )
            elif param.kind is inspect.Parameter.VAR_KEYWORD:
                bound.arguments[name] = {
                    k: codec.rebuild(v, annotation, f"{self._what} argument '{k}'")
                    for k, v in value.items()
                }
            else:
                bound.arguments[name] = codec.rebuild(
                    value, annotation, f"{self._what} argument '{name}'"
                )
        return list(bound.args[1:]), dict(bound.kwargs)


def encode_input(args: Iterable[Any], kwargs: dict[str, Any]) -> str:
    """The stored JSON form of a workflow's arguments."""
    return codec.dumps(
        {"args": [codec.to_jsonable(a) for a in args],
         "kwargs": {k: codec.to_jsonable(v) for k, v in kwargs.items()}}
    )


def decode_input(text: str) -> tuple[list[Any], dict[str, Any]]:
    """Arguments from their stored JSON form."""
    value = codec.loads(text)
    if not isinstance(value, dict):
        raise InvalidInput("stored input must be an object with 'args' and 'kwargs'")
    return list(value.get("args") or []), dict(value.get("kwargs") or {})


def input_from_json(value: Any) -> tuple[list[Any], dict[str, Any]]:
    """Arguments from user JSON: an array is positional, an object is keywords, else one arg."""
    if isinstance(value, list):
        return list(value), {}
    if isinstance(value, dict):
        return [], dict(value)
    if value is None:
        return [], {}
    return [value], {}


class ActivityDefinition(Generic[P, R]):
    """An activity: a side-effecting async function whose result is recorded once."""

    def __init__(
        self,
        fn: Callable[..., Awaitable[R]],
        *,
        name: str | None = None,
        retry: RetryPolicy | None = None,
        timeout: timedelta | float | None = None,
    ) -> None:
        if not inspect.iscoroutinefunction(fn):
            raise ConfigurationError(f"@activity needs an async function, got {fn!r}")
        self.fn = fn
        self.name = name or fn.__name__
        self.retry = retry or DEFAULT_RETRY
        self.timeout = (
            None if timeout is None else seconds_of(timeout, f"activity {self.name} timeout")
        )
        self.signature = _Signature(fn, "activity", self.name)
        self.__doc__ = fn.__doc__
        self.__name__ = fn.__name__
        self.__wrapped__ = fn

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R]:
        from kenning.core.context import WorkflowContext

        if not args or not isinstance(args[0], WorkflowContext):
            raise ConfigurationError(
                f"activity '{self.name}' must be called with the workflow's ctx first"
            )
        ctx = args[0]
        return ctx._execution.call_activity(self, args[1:], kwargs)

    def __repr__(self) -> str:
        return f"<activity {self.name}>"


class Starter(Protocol):
    """Anything that can start a run (the embedded ``App``, the client)."""

    async def start(self, workflow: WorkflowDefinition[Any, Any] | str, /, *args: Any,
                    **kwargs: Any) -> str: ...


class WorkflowDefinition(Generic[P, R]):
    """A workflow: deterministic async code whose progress is durable."""

    def __init__(self, fn: Callable[..., Awaitable[R]], *, name: str | None = None,
                 upgrade: str = "pinned") -> None:
        if not inspect.iscoroutinefunction(fn):
            raise ConfigurationError(f"@workflow needs an async function, got {fn!r}")
        self.fn = fn
        self.name = name or fn.__name__
        self.upgrade = check_upgrade(upgrade, f"@workflow '{self.name}'")
        self.signature = _Signature(fn, "workflow", self.name)
        self.__doc__ = fn.__doc__
        self.__name__ = fn.__name__
        self.__wrapped__ = fn
        _CATALOGUE.setdefault(self.name, []).append(self)

    def encode_arguments(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        """Check arguments against the signature and types; return the stored JSON."""
        self.signature.bind(args, kwargs)
        args_json = [codec.to_jsonable(a) for a in args]
        kwargs_json = {k: codec.to_jsonable(v) for k, v in kwargs.items()}
        self.signature.rebuild_arguments(args_json, kwargs_json)
        return encode_input(args_json, kwargs_json)

    async def start(self, app: Starter, *args: P.args, **kwargs: P.kwargs) -> str:
        """Start a run of this workflow on ``app``; returns the run id."""
        return await app.start(self, *args, **kwargs)

    async def run_child(self, ctx: Any, *args: Any, run_id: str | None = None,
                        **kwargs: Any) -> R:
        """From a workflow: start a child run of this workflow and wait for its result.

        The child's run id is ``<parent id>-<step>`` unless ``run_id`` is given (so a
        workflow argument named ``run_id`` must be passed by position). A failed or
        cancelled child raises ``ChildWorkflowError``."""
        handle = await self.start_child(ctx, *args, run_id=run_id, **kwargs)
        return await handle.result()

    async def start_child(self, ctx: Any, *args: Any, run_id: str | None = None,
                          **kwargs: Any) -> ChildHandle[R]:
        """From a workflow: start a child run of this workflow; returns its handle
        (``handle.run_id``, ``await handle.result()``) once the start is recorded."""
        from kenning.core.children import start_child

        return await start_child(ctx, self, args, kwargs, run_id)

    def __repr__(self) -> str:
        return f"<workflow {self.name}>"


_CATALOGUE: dict[str, list[WorkflowDefinition[Any, Any]]] = {}


class Registry:
    """The workflows one app or worker serves, by name. Owned by the app, not global."""

    def __init__(self, workflows: Iterable[WorkflowDefinition[Any, Any]] = ()) -> None:
        self._by_name: dict[str, WorkflowDefinition[Any, Any]] = {}
        for wf in workflows:
            self.add(wf)

    @classmethod
    def from_catalogue(cls) -> Registry:
        """Every workflow decorated in this process so far; colliding names are an error."""
        registry = cls()
        for name, defs in _CATALOGUE.items():
            distinct = {id(d.fn): d for d in defs}
            if len(distinct) > 1:
                places = ", ".join(
                    f"{d.fn.__module__}.{d.fn.__qualname__}" for d in distinct.values()
                )
                raise ConfigurationError(
                    f"workflow name '{name}' is used by {places}; give one a distinct name= "
                    f"or pass workflows=[...] explicitly"
                )
            registry.add(defs[-1])
        return registry

    def add(self, wf: WorkflowDefinition[Any, Any]) -> None:
        """Register a workflow; a different function under the same name is an error."""
        existing = self._by_name.get(wf.name)
        if existing is not None and existing.fn is not wf.fn:
            raise ConfigurationError(f"workflow name '{wf.name}' is registered twice")
        self._by_name[wf.name] = wf

    def get(self, name: str) -> WorkflowDefinition[Any, Any]:
        """The workflow of that name; raise ``WorkflowNotFound`` naming what is known."""
        try:
            return self._by_name[name]
        except KeyError:
            known = ", ".join(sorted(self._by_name)) or "none"
            raise WorkflowNotFound(f"no workflow named '{name}' (registered: {known})") from None

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    @property
    def names(self) -> list[str]:
        """Registered workflow names, sorted."""
        return sorted(self._by_name)

    @property
    def auto_upgrade(self) -> list[str]:
        """Names of the registered workflows declared ``upgrade="auto"``, sorted."""
        return sorted(n for n, wf in self._by_name.items()
                      if getattr(wf, "upgrade", "pinned") == "auto")


@overload
def workflow(
    fn: Callable[Concatenate[WorkflowContext, P], Awaitable[R]], /
) -> WorkflowDefinition[P, R]: ...
@overload
def workflow(*, name: str | None = None, upgrade: str = "pinned") -> Callable[
    [Callable[Concatenate[WorkflowContext, P], Awaitable[R]]], WorkflowDefinition[P, R]]: ...
def workflow(fn: Any = None, /, *, name: str | None = None, upgrade: str = "pinned") -> Any:
    """Declare a workflow. ``name=`` is its durable identity (default: the function name);
    ``upgrade="auto"`` lets workers of a newer build resume its runs (default ``"pinned"``:
    a run stays on the build it started on)."""
    if fn is not None:
        return WorkflowDefinition(fn, name=name, upgrade=upgrade)
    return lambda f: WorkflowDefinition(f, name=name, upgrade=upgrade)


def check_upgrade(value: str, what: str) -> str:
    """Return ``value`` if it is an upgrade policy (``"pinned"`` or ``"auto"``)."""
    if value not in ("pinned", "auto"):
        raise ConfigurationError(
            f"{what}: upgrade must be 'pinned' (stay on the build it started on) or 'auto' "
            f"(any build may resume it), not {value!r}")
    return value


@overload
def activity(fn: Callable[P, Awaitable[R]], /) -> ActivityDefinition[P, R]: ...
@overload
def activity(*, name: str | None = None, retry: RetryPolicy | None = None,
             timeout: timedelta | float | None = None) -> Callable[
    [Callable[P, Awaitable[R]]], ActivityDefinition[P, R]]: ...
def activity(
    fn: Any = None,
    /,
    *,
    name: str | None = None,
    retry: RetryPolicy | None = None,
    timeout: timedelta | float | None = None,
) -> Any:
    """Declare an activity, optionally with a retry policy and a per-attempt timeout."""
    if fn is not None:
        return ActivityDefinition(fn, name=name, retry=retry, timeout=timeout)
    return lambda f: ActivityDefinition(f, name=name, retry=retry, timeout=timeout)
