"""Typed function descriptors and the decorators that make them.

``@rp.rpc async def add(self, x: int) -> int`` in ``class Adder`` makes ``Adder.add`` an
``Rpc[Adder, (x: int), int]``: a value that type checkers let you run only on an ``Adder``
handle, with exactly the arguments ``add`` takes, giving an ``int``.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import Executor
from typing import Any, Concatenate, Generic, ParamSpec, Protocol, Self, TypeVar, overload

from .rpc._serving import as_async_iterator
from .rpc.functions import FunctionSpec, Kind, alias_module, describe_callable
from .rpc.streams import PipeReader

THREADS_ATTRIBUTE = "_rpc_parallel_threads"
"""Where a worker instance keeps its ``WorkerThreads`` (set when it starts serving)."""

# A worker process imports the master's main script as ``__mp_main__`` (as multiprocessing
# does): its types are named as the master names them.
alias_module("__mp_main__", "__main__")

P = ParamSpec("P")
R = TypeVar("R")
S = TypeVar("S")
U = TypeVar("U")
Owner = TypeVar("Owner")
W_contra = TypeVar("W_contra", contravariant=True)
R_co = TypeVar("R_co", covariant=True)
S_co = TypeVar("S_co", covariant=True)
U_co = TypeVar("U_co", covariant=True)
T_co = TypeVar("T_co", covariant=True)


class Function(Generic[W_contra]):
    """A worker function: its implementation and how it appears on the wire."""

    kind: Kind

    def __init__(self, implementation: Callable[..., Any], name: str | None, version: int) -> None:
        self.implementation = implementation
        self._name = name
        self.version = version
        self.attribute = getattr(implementation, "__name__", "function")
        self.owner_name = ""
        self._spec: FunctionSpec | None = None
        self._rpc_spec: FunctionSpec | None = None
        """``_spec`` once made, if this is an ``rpc``: ``submit``'s one look-up per call."""
        self._keyword_only: tuple[int, list[str]] | None = None
        self.__doc__ = getattr(implementation, "__doc__", None)
        self.__wrapped__ = implementation
        unwrapped = inspect.unwrap(implementation)
        self._is_async = inspect.iscoroutinefunction(unwrapped) or inspect.isasyncgenfunction(
            unwrapped
        )

    def __set_name__(self, owner: type, attribute: str) -> None:
        self.attribute = attribute
        self.owner_name = owner.__name__

    @property
    def name(self) -> str:
        """The stable wire name: ``name=`` if given, else ``"<Class>.<method>"``."""
        return self._name or f"{self.owner_name}.{self.attribute}"

    @property
    def spec(self) -> FunctionSpec:
        spec = self._spec
        if spec is None:
            described = describe_callable(self.implementation, kind=self.kind, skip_first=True)
            spec = self._spec = FunctionSpec(
                self.name, kind=self.kind, version=self.version, **described
            )
            if self.kind == "rpc":
                self._rpc_spec = spec
        return spec

    def bound_to(self, instance: object) -> Callable[..., Any]:
        """The implementation bound to ``instance``, callable with every argument
        positional (as they arrive on the wire): keyword-only parameters are passed by
        keyword."""
        method = self.implementation.__get__(instance, type(instance))
        positional, keyword_only = self._keyword_layout()
        if not keyword_only:
            return method  # type: ignore[no-any-return]

        @functools.wraps(self.implementation)
        def call(*args: Any) -> Any:
            return method(*args[:positional], **dict(zip(keyword_only, args[positional:], strict=True)))

        return call

    def _keyword_layout(self) -> tuple[int, list[str]]:
        """(how many parameters are positional, the keyword-only ones' names), after
        ``self``; worked out once (a fork server's template does it for its workers)."""
        layout = self._keyword_only
        if layout is None:
            parameters = list(inspect.signature(self.implementation).parameters.values())[1:]
            keyword_only = [p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY]
            layout = self._keyword_only = (len(parameters) - len(keyword_only), keyword_only)
        return layout

    def _bound(self, instance: object) -> Any:
        """What ``instance.f`` is: the implementation bound to ``instance``, awaited as an
        ``async def`` is. An ``async def`` (or async generator) is the plain bound method; a
        plain ``def`` runs in the worker's threads (as when it is called remotely) behind an
        async wrapper, so ``await self.f(...)`` works for both, as the types say."""
        method = self.implementation.__get__(instance, type(instance))
        if self._is_async:
            return method
        threads: Executor | None = getattr(instance, THREADS_ATTRIBUTE, None)
        kind = self.kind

        async def in_thread(*args: Any, **kwargs: Any) -> Any:
            loop = asyncio.get_running_loop()
            call: Callable[[], Any] = functools.partial(
                contextvars.copy_context().run, method, *args, **kwargs
            )
            result: Any = await loop.run_in_executor(threads, call)
            if kind != "state":
                return result
            initial, updates = result
            return initial, as_async_iterator(updates, loop, threads)

        async def stream(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
            iterator = as_async_iterator(method(*args, **kwargs), asyncio.get_running_loop(), threads)
            async for item in iterator:
                yield item

        return functools.wraps(self.implementation)(stream if kind == "pipe" else in_thread)

    def __repr__(self) -> str:
        return f"<rpc_parallel {self.kind} {self.name} v{self.version}>"


class Runnable(Function[W_contra], Generic[W_contra, P, T_co]):
    """What ``run`` takes: a worker function that runs on a ``W`` worker with arguments ``P``
    and gives ``T`` -- the base of the five kinds, so ``run`` has one signature (and a type
    checker's message about a call names the argument or the result that is wrong)."""


class Rpc(Runnable[W_contra, P, R_co], Generic[W_contra, P, R_co]):
    """A one-shot call: ``await w.run(f, ...)`` gives its result."""

    kind: Kind = "rpc"

    @overload
    def __get__(self, instance: None, owner: type[Any], /) -> Self: ...
    @overload
    def __get__(
        self, instance: object, owner: type[Any] | None = None, /
    ) -> Callable[P, Awaitable[R_co]]: ...
    def __get__(self, instance: object, owner: type[Any] | None = None, /) -> Any:
        """On the class, this descriptor; on a worker, the bound implementation."""
        return self if instance is None else self._bound(instance)


class Pipe(Runnable[W_contra, P, PipeReader[R_co]], Generic[W_contra, P, R_co]):
    """A stream from the worker: ``await w.run(f, ...)`` gives a ``PipeReader``."""

    kind: Kind = "pipe"

    @overload
    def __get__(self, instance: None, owner: type[Any], /) -> Self: ...
    @overload
    def __get__(
        self, instance: object, owner: type[Any] | None = None, /
    ) -> Callable[P, AsyncIterator[R_co]]: ...
    def __get__(self, instance: object, owner: type[Any] | None = None, /) -> Any:
        """On the class, this descriptor; on a worker, the bound implementation."""
        return self if instance is None else self._bound(instance)


class StateFunction(
    Runnable[W_contra, P, tuple[S_co, PipeReader[U_co]]], Generic[W_contra, P, S_co, U_co]
):
    """State plus updates: ``await w.run(f, ...)`` gives ``(state, PipeReader[update])``."""

    kind: Kind = "state"

    @overload
    def __get__(self, instance: None, owner: type[Any], /) -> Self: ...
    @overload
    def __get__(
        self, instance: object, owner: type[Any] | None = None, /
    ) -> Callable[P, Awaitable[tuple[S_co, AsyncIterator[U_co]]]]: ...
    def __get__(self, instance: object, owner: type[Any] | None = None, /) -> Any:
        """On the class, this descriptor; on a worker, the bound implementation."""
        return self if instance is None else self._bound(instance)


class OneWay(Runnable[W_contra, P, None], Generic[W_contra, P]):
    """A message with no answer; its errors go to ``on_failure``."""

    kind: Kind = "one_way"

    @overload
    def __get__(self, instance: None, owner: type[Any], /) -> Self: ...
    @overload
    def __get__(
        self, instance: object, owner: type[Any] | None = None, /
    ) -> Callable[P, Awaitable[None]]: ...
    def __get__(self, instance: object, owner: type[Any] | None = None, /) -> Any:
        """On the class, this descriptor; on a worker, the bound implementation."""
        return self if instance is None else self._bound(instance)


class ReversePipe(Runnable[W_contra, P, R_co], Generic[W_contra, P, R_co]):
    """A stream into the worker: the last argument is streamed with backpressure."""

    kind: Kind = "reverse_pipe"

    @overload
    def __get__(self, instance: None, owner: type[Any], /) -> Self: ...
    @overload
    def __get__(
        self, instance: object, owner: type[Any] | None = None, /
    ) -> Callable[P, Awaitable[R_co]]: ...
    def __get__(self, instance: object, owner: type[Any] | None = None, /) -> Any:
        """On the class, this descriptor; on a worker, the bound implementation."""
        return self if instance is None else self._bound(instance)


class _RpcDecorator(Protocol):
    @overload
    def __call__(
        self, function: Callable[Concatenate[Owner, P], Awaitable[R]], /
    ) -> Rpc[Owner, P, R]: ...
    @overload
    def __call__(self, function: Callable[Concatenate[Owner, P], R], /) -> Rpc[Owner, P, R]: ...


class _PipeDecorator(Protocol):
    @overload
    def __call__(
        self, function: Callable[Concatenate[Owner, P], AsyncIterable[R]], /
    ) -> Pipe[Owner, P, R]: ...
    @overload
    def __call__(
        self, function: Callable[Concatenate[Owner, P], Iterator[R]], /
    ) -> Pipe[Owner, P, R]: ...


class _StateDecorator(Protocol):
    @overload
    def __call__(
        self, function: Callable[Concatenate[Owner, P], Awaitable[tuple[S, AsyncIterator[U]]]], /
    ) -> StateFunction[Owner, P, S, U]: ...
    @overload
    def __call__(
        self, function: Callable[Concatenate[Owner, P], tuple[S, AsyncIterator[U]]], /
    ) -> StateFunction[Owner, P, S, U]: ...
    @overload
    def __call__(
        self, function: Callable[Concatenate[Owner, P], tuple[S, Iterator[U]]], /
    ) -> StateFunction[Owner, P, S, U]: ...


class _OneWayDecorator(Protocol):
    @overload
    def __call__(
        self, function: Callable[Concatenate[Owner, P], Awaitable[None]], /
    ) -> OneWay[Owner, P]: ...
    @overload
    def __call__(self, function: Callable[Concatenate[Owner, P], None], /) -> OneWay[Owner, P]: ...


class _ReversePipeDecorator(Protocol):
    def __call__(
        self, function: Callable[Concatenate[Owner, P], Awaitable[R]], /
    ) -> ReversePipe[Owner, P, R]: ...


def _check_name(name: str | None, version: int) -> None:
    if name is not None and (not isinstance(name, str) or not name):
        raise TypeError("name= must be a non-empty string")
    if not isinstance(version, int) or version < 0:
        raise TypeError("version= must be a non-negative int")


@overload
def rpc(
    function: Callable[Concatenate[Owner, P], Awaitable[R]], /
) -> Rpc[Owner, P, R]: ...
@overload
def rpc(function: Callable[Concatenate[Owner, P], R], /) -> Rpc[Owner, P, R]: ...
@overload
def rpc(*, name: str | None = None, version: int = 1) -> _RpcDecorator: ...
def rpc(
    function: Callable[..., Any] | None = None, /, *, name: str | None = None, version: int = 1
) -> Any:
    """Declare a one-shot function: ``async def f(self, ...) -> R`` (a plain ``def`` runs in
    a thread)."""
    _check_name(name, version)
    if function is None:
        return lambda f: Rpc(f, name, version)
    return Rpc(function, name, version)


@overload
def pipe(function: Callable[Concatenate[Owner, P], AsyncIterable[R]], /) -> Pipe[Owner, P, R]: ...
@overload
def pipe(function: Callable[Concatenate[Owner, P], Iterator[R]], /) -> Pipe[Owner, P, R]: ...
@overload
def pipe(*, name: str | None = None, version: int = 1) -> _PipeDecorator: ...
def pipe(
    function: Callable[..., Any] | None = None, /, *, name: str | None = None, version: int = 1
) -> Any:
    """Declare a stream from the worker: an async generator yielding ``T``."""
    _check_name(name, version)
    if function is None:
        return lambda f: Pipe(f, name, version)
    return Pipe(function, name, version)


@overload
def state(
    function: Callable[Concatenate[Owner, P], Awaitable[tuple[S, AsyncIterator[U]]]], /
) -> StateFunction[Owner, P, S, U]: ...
@overload
def state(
    function: Callable[Concatenate[Owner, P], tuple[S, AsyncIterator[U]]], /
) -> StateFunction[Owner, P, S, U]: ...
@overload
def state(
    function: Callable[Concatenate[Owner, P], tuple[S, Iterator[U]]], /
) -> StateFunction[Owner, P, S, U]: ...
@overload
def state(*, name: str | None = None, version: int = 1) -> _StateDecorator: ...
def state(
    function: Callable[..., Any] | None = None, /, *, name: str | None = None, version: int = 1
) -> Any:
    """Declare a state function: returns ``(initial_state, async iterator of updates)`` (a
    plain ``def`` runs in a thread and may return a plain iterator of updates)."""
    _check_name(name, version)
    if function is None:
        return lambda f: StateFunction(f, name, version)
    return StateFunction(function, name, version)


@overload
def one_way(
    function: Callable[Concatenate[Owner, P], Awaitable[None]], /
) -> OneWay[Owner, P]: ...
@overload
def one_way(function: Callable[Concatenate[Owner, P], None], /) -> OneWay[Owner, P]: ...
@overload
def one_way(*, name: str | None = None, version: int = 1) -> _OneWayDecorator: ...
def one_way(
    function: Callable[..., Any] | None = None, /, *, name: str | None = None, version: int = 1
) -> Any:
    """Declare a one-way function: no answer; an exception in it ends the worker."""
    _check_name(name, version)
    if function is None:
        return lambda f: OneWay(f, name, version)
    return OneWay(function, name, version)


@overload
def reverse_pipe(
    function: Callable[Concatenate[Owner, P], Awaitable[R]], /
) -> ReversePipe[Owner, P, R]: ...
@overload
def reverse_pipe(*, name: str | None = None, version: int = 1) -> _ReversePipeDecorator: ...
def reverse_pipe(
    function: Callable[..., Any] | None = None, /, *, name: str | None = None, version: int = 1
) -> Any:
    """Declare a stream into the worker: the last parameter is ``AsyncIterator[T]``."""
    _check_name(name, version)
    if function is None:
        return lambda f: ReversePipe(f, name, version)
    return ReversePipe(function, name, version)
