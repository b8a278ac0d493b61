"""API_ROUTERS is ordered for speed (hot routes first); no order may hide a route behind another."""

from __future__ import annotations

import re

from fastapi.routing import APIRoute

from lily.api.app import API_ROUTERS


def in_match_order() -> list[APIRoute]:
    return [route for router in API_ROUTERS for route in router.routes if isinstance(route, APIRoute)]


def concrete(path: str) -> str:
    """The path with each parameter given a value any parameter pattern takes."""
    return re.sub(r"\{[^}]+\}", "x1", path)


def test_no_route_is_shadowed_by_one_tried_before_it() -> None:
    routes = in_match_order()
    shadowed = []
    for i, route in enumerate(routes):
        path = concrete(route.path)
        for earlier in routes[:i]:
            if earlier.path_regex.match(path) and earlier.methods & route.methods and earlier.path != route.path:
                shadowed.append(f"{sorted(route.methods)} {route.path} is taken by {earlier.path}")
    assert not shadowed, shadowed


def test_the_check_sees_a_shadowed_route() -> None:
    # The order the first test guards: the item route tried before /metadata/search would take it.
    routes = in_match_order()
    item = next(r for r in routes if r.path == "/metadata/{asset_id}" and "GET" in r.methods)
    search = next(r for r in routes if r.path == "/metadata/search")
    assert item.path_regex.match(concrete(search.path))
    assert routes.index(search) < routes.index(item)
