"""``WorkflowLoop``: the deterministic event loop that workflow code runs on.

Workflow code is plain asyncio: ``asyncio.gather``, ``wait``, ``wait_for``, ``create_task``,
``TaskGroup``. It runs on this loop, not on the worker's: the engine drives it in
activations, each running every ready callback until none is left (the code is then blocked
on steps), so the order in which the code's tasks run depends only on the order in which
step outcomes are delivered to them — the same on every replay. Timers (``call_at``,
``call_later``: what ``asyncio.sleep``, ``wait_for`` and ``timeout`` use) are durable timer
steps of the run; ``time()`` is workflow time. Input and output (sockets, subprocesses,
executors) do not exist here: they belong in activities, which run on the worker's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import Callable, Coroutine, Generator
from typing import Any, Protocol, TypeVar, TypeVarTuple

from kenning.core.errors import ConfigurationError

log = logging.getLogger(__name__)

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class TimerSink(Protocol):
    """What the loop asks of its run: durable timers and workflow time."""

    def workflow_now(self) -> float:
        """Workflow time, unix seconds."""

    def start_timer(self, handle: asyncio.TimerHandle) -> None:
        """Issue a durable timer step that runs ``handle`` when it fires."""

    def cancel_timer(self, handle: asyncio.TimerHandle) -> None:
        """The code cancelled ``handle`` before it fired."""


class WorkflowLoop(asyncio.AbstractEventLoop):
    """An event loop that runs only when the engine activates it (see the module docstring)."""

    def __init__(self, sink: TimerSink, describe: str) -> None:
        self._sink = sink
        self._describe = describe
        self._ready: list[asyncio.Handle] = []
        self._running = False
        self._closed = False
        self._disposing = False
        self.tasks: list[asyncio.Task[Any]] = []
        self.errors: list[BaseException] = []

    # -- driving ------------------------------------------------------------------------
    def activate(self) -> None:
        """Run ready callbacks until none is left (the code waits on its steps)."""
        if not self._ready:
            return
        outer = asyncio.events._get_running_loop()
        asyncio.events._set_running_loop(self)
        self._running = True
        try:
            while self._ready:  # in batches: what the callbacks schedule runs next, in order
                batch, self._ready = self._ready, []
                for handle in batch:
                    if not handle._cancelled:
                        handle._run()
        finally:
            self._running = False
            asyncio.events._set_running_loop(outer)

    @property
    def has_ready(self) -> bool:
        """Whether callbacks wait to run."""
        return bool(self._ready)

    def dispose(self) -> None:
        """Forget the code's tasks without a trace: the run is unwound or ended.

        The reference cycles it leaves are broken too (the loop and its run, a task and the
        future it waits on): what the execution leaves is freed when the worker lets go of
        it, not at the next full garbage collection. The exceptions the code ended with
        keep their tracebacks (a replay test shows them)."""
        self._disposing = True
        self._sink = _ENDED
        for task in self.tasks:
            if task.done():
                if not task.cancelled():
                    task.exception()  # retrieved: no "exception was never retrieved" log
            else:
                coro = task.get_coro()
                task._log_destroy_pending = False  # type: ignore[attr-defined]
                if isinstance(coro, Coroutine):
                    # code that misbehaves while it is closed (awaits, raises) is dropped
                    with contextlib.suppress(BaseException):
                        coro.close()
                waiter = getattr(task, "_fut_waiter", None)
                if waiter is not None and not waiter.done():
                    waiter.cancel()  # its callbacks (the task's wake-up) go, unrun, below
        self.tasks.clear()
        self._ready.clear()
        self._closed = True

    # -- scheduling ---------------------------------------------------------------------
    def call_soon(self, callback: Callable[[*Ts], object], *args: *Ts,
                  context: contextvars.Context | None = None) -> asyncio.Handle:
        handle = asyncio.Handle(callback, args, self, context)
        self._ready.append(handle)
        return handle

    def call_soon_threadsafe(self, callback: Callable[[*Ts], object], *args: *Ts,
                             context: contextvars.Context | None = None) -> asyncio.Handle:
        raise self._unsupported("call_soon_threadsafe (threads)")

    def call_later(self, delay: float, callback: Callable[[*Ts], object], *args: *Ts,
                   context: contextvars.Context | None = None) -> asyncio.TimerHandle:
        return self.call_at(self.time() + delay, callback, *args, context=context)

    def call_at(self, when: float, callback: Callable[[*Ts], object], *args: *Ts,
                context: contextvars.Context | None = None) -> asyncio.TimerHandle:
        handle = asyncio.TimerHandle(when, callback, args, self, context)
        handle._scheduled = True  # type: ignore[attr-defined]
        self._sink.start_timer(handle)
        return handle

    def fire(self, handle: asyncio.TimerHandle) -> None:
        """Run a timer's callback: its step was delivered."""
        handle._scheduled = False  # type: ignore[attr-defined]
        if not handle._cancelled:
            self._ready.append(handle)

    def _timer_handle_cancelled(self, handle: asyncio.TimerHandle) -> None:
        if handle._scheduled and not self._disposing:  # type: ignore[attr-defined]
            self._sink.cancel_timer(handle)

    def time(self) -> float:
        return self._sink.workflow_now()

    def create_future(self) -> asyncio.Future[Any]:
        return asyncio.Future(loop=self)

    def create_task(self, coro: Generator[Any, None, T] | Coroutine[Any, Any, T], *,
                    name: str | None = None, context: contextvars.Context | None = None
                    ) -> asyncio.Task[T]:
        if self._closed:
            raise RuntimeError(f"{self._describe}: the workflow's loop has ended")
        task = asyncio.Task(coro, loop=self, name=name, context=context)
        self.tasks.append(task)
        return task

    # -- state --------------------------------------------------------------------------
    def is_running(self) -> bool:
        return self._running

    def is_closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        self.dispose()

    def get_debug(self) -> bool:
        return False

    def set_debug(self, enabled: bool) -> None:
        pass

    def call_exception_handler(self, context: dict[str, Any]) -> None:
        if self._disposing:
            return
        exc = context.get("exception")
        if isinstance(exc, BaseException):
            self.errors.append(exc)
        log.error("%s: %s", self._describe, context.get("message", "error in workflow code"),
                  exc_info=exc if isinstance(exc, BaseException) else None)

    def default_exception_handler(self, context: dict[str, Any]) -> None:
        self.call_exception_handler(context)

    def get_exception_handler(self) -> None:
        return None

    # -- what workflow code cannot do ---------------------------------------------------
    def _unsupported(self, what: str) -> ConfigurationError:
        return ConfigurationError(
            f"{self._describe}: workflow code cannot use {what}; workflow code must be "
            f"deterministic — do input and output in an activity")

    def run_in_executor(self, executor: Any, func: Callable[[*Ts], T], *args: *Ts
                        ) -> asyncio.Future[T]:
        raise self._unsupported("run_in_executor (threads)")

    def run_forever(self) -> None:
        raise self._unsupported("run_forever")

    def run_until_complete(self, future: Any) -> Any:
        raise self._unsupported("run_until_complete")

    def stop(self) -> None:
        raise self._unsupported("stop")

    async def shutdown_asyncgens(self) -> None:
        return None

    async def shutdown_default_executor(self) -> None:
        return None


class _EndedSink:
    """The sink of a disposed loop: its run has ended, it has no timers and no time."""

    def workflow_now(self) -> float:
        raise RuntimeError("the workflow's loop has ended")

    def start_timer(self, handle: asyncio.TimerHandle) -> None:
        raise RuntimeError("the workflow's loop has ended")

    def cancel_timer(self, handle: asyncio.TimerHandle) -> None:
        pass


_ENDED: TimerSink = _EndedSink()


def _refusal(name: str) -> Callable[..., Any]:
    def refuse(self: WorkflowLoop, *args: Any, **kwargs: Any) -> Any:
        raise self._unsupported(f"loop.{name} (input and output)")

    refuse.__name__ = name
    return refuse


# sockets, pipes, subprocesses, signals, DNS, task factories: the rest of AbstractEventLoop
for _name in dir(asyncio.AbstractEventLoop):
    if not _name.startswith("_") and _name not in WorkflowLoop.__dict__:
        setattr(WorkflowLoop, _name, _refusal(_name))


def new_workflow_loop(sink: TimerSink, describe: str) -> WorkflowLoop:
    """A ``WorkflowLoop`` for one run (its I/O methods are filled in above, refusing)."""
    return WorkflowLoop(sink, describe)  # type: ignore[abstract]
