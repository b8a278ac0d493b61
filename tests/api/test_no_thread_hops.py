"""No route's dependencies hop to a worker thread: FastAPI runs a plain ``def`` dependency in the thread
pool on every request, which cost a write about 4% of its CPU (``request_id`` was one). None of Lily's
dependencies block, so every one of them is ``async``."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute


def is_async(call: Any) -> bool:
    if inspect.isclass(call):
        return False  # a class is instantiated in the thread pool
    # A dependency object (HTTPBearer) is called through its type's __call__.
    return inspect.iscoroutinefunction(call) or inspect.iscoroutinefunction(type(call).__call__)


def dependencies(dependant: Dependant) -> Iterator[Dependant]:
    for sub in dependant.dependencies:
        yield sub
        yield from dependencies(sub)


def routes(app: Any) -> Iterator[tuple[str, Dependant]]:
    """(path, dependant) of every route, the included routers' as FastAPI resolves them."""
    for route in app.routes:
        if isinstance(route, APIRoute):
            yield route.path, route.dependant
        for context in getattr(route, "effective_route_contexts", list)():
            yield context.path, context.dependant


def test_every_dependency_of_every_route_is_async(app: Any) -> None:
    found = list(routes(app))
    checked, sync = 0, []
    for path, dependant in found:
        for dep in [dependant, *dependencies(dependant)]:  # the endpoint too: a ``def`` one hops as well
            checked += 1
            if dep.call is not None and not is_async(dep.call):
                sync.append(f"{path}: {getattr(dep.call, '__qualname__', dep.call)}")
    assert len(found) > 50 and checked > 100  # the walk saw the app, not an empty list
    assert not sorted(set(sync)), sorted(set(sync))
