"""Unknown query parameters are refused (422 naming each), as unknown body members are.

FastAPI ignores a query parameter no route declares, so a typo in a filter (``?stat=open``) silently
means "no filter": a list answers more than was asked, and a bulk action acts on more than was meant.
Lily's own routes refuse it instead. Foreign APIs (OpenLineage's) keep their own spec's rules.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from pydantic import BaseModel

from lily.api.errors import fixed_path_methods
from lily.domain.errors import Invalid

_ALLOWED = "_lily_query_parameters"
MAX_LISTED = 20


def _query_names(dependant: Any) -> set[str]:
    """The query parameters a route's dependency tree declares (a pydantic model as a query counts by its fields)."""
    names: set[str] = set()
    for field in dependant.query_params:
        model = getattr(field, "type_", None) or getattr(getattr(field, "field_info", None), "annotation", None)
        if isinstance(model, type) and issubclass(model, BaseModel):
            names.update(f.alias or name for name, f in model.model_fields.items())
        else:
            names.add(field.alias)
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


def _declared(route: object) -> frozenset[str]:
    allowed: frozenset[str] | None = getattr(route, _ALLOWED, None)
    if allowed is None:
        dependant = getattr(route, "dependant", None)
        allowed = frozenset(() if dependant is None else _query_names(dependant))
        setattr(route, _ALLOWED, allowed)  # computed once per route, on its first request
    return allowed


async def refuse_unknown_query(request: Request) -> None:
    if not request.query_params:
        return
    route = request.scope.get("route")
    if route is None:
        return
    unknown = sorted({key for key in request.query_params if key not in _declared(route)})
    if unknown and "{" in getattr(route, "path", "") and fixed_path_methods(request):
        return  # a fixed path taken by a /{id} route: the route answers 405 with Allow, the real error
    if unknown:
        shown = [k.encode("unicode_escape").decode()[:100] for k in unknown[:MAX_LISTED]]
        raise Invalid(
            f"unknown query parameter(s): {', '.join(repr(k) for k in shown)}",
            errors=[{"field": k, "message": "unknown query parameter", "in": "query"} for k in shown],
        )
