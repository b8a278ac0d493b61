"""Checks a plugin object against its kind's protocol, by name and signature, at load time.

``typing.runtime_checkable`` only asks whether attributes exist: it accepts a synchronous ``apply`` or
one that takes the wrong arguments, and refuses a hook that defines only some of its phases. This
module reads what each protocol in :mod:`lily.plugins.protocols` declares — attributes with their
types, methods with their arity and whether they are ``async def`` — and lists every way a plugin
differs. Pure: it imports and calls nothing of the plugin beyond reading its attributes.
"""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Callable
from functools import cache
from typing import Any, ClassVar, get_args, get_origin

from lily.plugins.protocols import HOOK_PHASES, PROTOCOLS, HookPhase, RunnableConnector

# Names appear in LILY_HOOKS / LILY_PLUGINS_DISABLED (comma-separated, ``kind:name``) and in URLs.
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$")

# Members every Protocol class has, which are not part of any plugin contract.
_PROTOCOL_NAMESPACES = frozenset({"Protocol", "Generic", "object"})


def _declared(proto: type[Any]) -> tuple[dict[str, Any], dict[str, Callable[..., Any]]]:
    """The attributes (name → type hint) and methods (name → function) a protocol declares."""
    hints = typing.get_type_hints(proto)  # class-level annotations only; methods are not evaluated
    methods: dict[str, Callable[..., Any]] = {}
    for klass in reversed(proto.__mro__):
        if klass.__name__ in _PROTOCOL_NAMESPACES:
            continue
        for attr, value in vars(klass).items():
            if not attr.startswith("_") and inspect.isfunction(value):
                methods[attr] = value
    return {k: v for k, v in hints.items() if not k.startswith("_")}, methods


@cache
def contract(kind: str) -> tuple[dict[str, Any], dict[str, Callable[..., Any]]]:
    return _declared(PROTOCOLS[kind])


def _type_problem(value: Any, hint: Any) -> str | None:
    """Why ``value`` does not fit ``hint``, for the few shapes protocols use; None when it fits."""
    origin = get_origin(hint)
    if origin is ClassVar:
        return _type_problem(value, get_args(hint)[0])
    if hint is Any:
        return None
    if origin is type:
        (base,) = get_args(hint)
        if not (isinstance(value, type) and issubclass(value, base)):
            return f"must be a subclass of {base.__module__}.{base.__qualname__}, got {value!r}"
        return None
    if origin is tuple:
        args = get_args(hint)
        if not isinstance(value, tuple):
            return f"must be a tuple, got {type(value).__name__}"
        if len(args) == 2 and args[1] is Ellipsis:
            if not value:
                return "must not be empty"
            wrong = [v for v in value if not isinstance(v, args[0])]
            if wrong:
                return f"must hold only {args[0].__name__} values, got {wrong[0]!r}"
        return None
    if isinstance(hint, type):
        if not isinstance(value, hint):
            return f"must be a {hint.__name__}, got {type(value).__name__}"
        if hint is str and not value:
            return "must not be empty"
        return None
    return None  # a shape no protocol uses yet: not checked rather than refused


def _is_async(fn: Any) -> bool:
    # A callable object counts by its class's ``__call__`` (``async def __call__``).
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)


def _arity(fn: Callable[..., Any]) -> int:
    """How many positional arguments the protocol's method takes (``self`` excluded)."""
    params = list(inspect.signature(fn).parameters.values())
    return len(params) - 1


def _signature_problem(member: Any, reference: Callable[..., Any], label: str) -> str | None:
    if not callable(member):
        return f"{label} must be a method, got {type(member).__name__}"
    wants_async = inspect.iscoroutinefunction(reference)
    if wants_async and not _is_async(member):
        return f"{label} must be `async def`"
    if not wants_async and _is_async(member):
        return f"{label} must be a plain `def`, not `async def`"
    try:
        signature = inspect.signature(member)
    except (TypeError, ValueError):
        return None  # a builtin without a signature: nothing to compare
    count = _arity(reference)
    params = list(signature.parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    varargs = any(p.kind is p.VAR_POSITIONAL for p in params)
    keyword_only = [p.name for p in params if p.kind is p.KEYWORD_ONLY and p.default is p.empty]
    if len(required) > count or (len(positional) < count and not varargs):
        expected = ", ".join(n for n in inspect.signature(reference).parameters if n != "self")
        taken = ", ".join(p.name for p in positional)
        return f"{label} must take {count} argument(s) ({expected}), but takes ({taken})"
    if keyword_only:
        return f"{label} has required keyword-only parameter(s) {', '.join(keyword_only)}"
    return None


def problems(kind: str, plugin: Any) -> list[str]:
    """Every way ``plugin`` differs from the protocol of ``kind`` (empty when it conforms)."""
    attributes, methods = contract(kind)
    found: list[str] = []
    for attr, hint in attributes.items():
        if not hasattr(plugin, attr):
            found.append(f"has no attribute {attr!r}")
            continue
        problem = _type_problem(getattr(plugin, attr), hint)
        if problem:
            found.append(f"{attr!r} {problem}")
    name = getattr(plugin, "name", None)
    if isinstance(name, str) and name and not NAME.match(name):
        found.append(f"'name' {name!r} must be 1-100 letters, digits, '_', '.' or '-', starting with a letter or digit")
    for attr, reference in methods.items():
        member = getattr(plugin, attr, None)
        if member is None:
            found.append(f"has no method {attr}()")
            continue
        problem = _signature_problem(member, reference, f"{attr}()")
        if problem:
            found.append(problem)
    if kind == "hook":
        found.extend(_hook_problems(plugin))
    if kind == "connector":
        found.extend(_connector_problems(plugin))
    return found


def _connector_problems(plugin: Any) -> list[str]:
    out: list[str] = []
    large = getattr(plugin, "large_bodies", None)
    if large is not None:
        problem = _type_problem(large, tuple[str, ...])
        if problem:
            out.append(f"'large_bodies' {problem}")
        elif any(not p.startswith("/") for p in large):
            out.append("'large_bodies' must hold absolute path prefixes ('/api/...')")
    run = getattr(plugin, "run", None)
    if run is not None:
        problem = _signature_problem(run, RunnableConnector.run, "run()")
        if problem:
            out.append(problem)
    return out


def _hook_problems(plugin: Any) -> list[str]:
    """A hook defines any subset of the phases, but at least one, each shaped like :class:`HookPhase`."""
    defined = [phase for phase in HOOK_PHASES if getattr(plugin, phase, None) is not None]
    if not defined:
        return [f"defines none of {', '.join(p + '()' for p in HOOK_PHASES)}"]
    out: list[str] = []
    for phase in defined:
        problem = _signature_problem(getattr(plugin, phase), HookPhase.__call__, f"{phase}()")
        if problem:
            out.append(problem)
    return out
