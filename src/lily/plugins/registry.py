"""The plugin registry: every entry-point group read once at start-up, each plugin checked, typed per kind.

:func:`load_plugins` is called by whatever starts a process (the app factory, ``lily worker``,
``lily scheduler``, ``lily plugins``), never at import time. A plugin that does not conform stops
start-up with a :class:`PluginError` naming the entry point, its distribution and version, the kind
and everything wrong with it: a broken extension should fail loudly once, not misbehave per event.

Why not pluggy: its model is "call every implementation of a hook", which fits only pipeline hooks.
The other kinds are keyed lookups (one handler per event kind, a connector or channel by type name),
where pluggy adds an indirection and still leaves the typing to us.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from types import MappingProxyType
from typing import Any

from lily.config import Settings
from lily.domain import events as core_events
from lily.plugins.protocols import (
    KIND_GROUPS,
    Channel,
    Classifier,
    Connector,
    EventHandler,
    PipelineHook,
    QualityCheck,
    ScheduledJob,
)
from lily.plugins.validate import problems

log = logging.getLogger(__name__)

# The kinds Lily itself appends: without a handler for each, core writes could never be applied.
CORE_EVENT_KINDS = (
    core_events.ASSET_UPSERT,
    core_events.ASSET_REPLACE,
    core_events.ASSET_DELETE,
    core_events.LINEAGE_UPSERT,
    core_events.LINEAGE_DELETE,
    core_events.UPSTREAM_CHANGED,
)


class PluginError(Exception):
    """A plugin that cannot be used; the message names it and says what is wrong."""


@dataclass(frozen=True, slots=True)
class PluginInfo:
    """One loaded plugin, as ``lily plugins`` lists it."""

    kind: str
    name: str
    entry_point: str  # ``group:name = module:attr``
    distribution: str
    version: str
    provided_by: str | None = None  # ``connector:<name>`` for handlers a connector brings


@dataclass(frozen=True, slots=True)
class Plugins:
    """Every loaded plugin, by kind. Read-only after start-up."""

    handlers: Mapping[str, EventHandler]  # event kind → its one handler
    hooks: tuple[PipelineHook, ...]  # enabled hooks, in name order
    connectors: Mapping[str, Connector]
    channels: Mapping[str, Channel]
    classifiers: Mapping[str, Classifier]
    quality_checks: Mapping[str, QualityCheck]
    jobs: Mapping[str, ScheduledJob]
    listing: tuple[PluginInfo, ...]

    def describe(self, kind: str, name: str) -> str:
        """How errors name a loaded plugin: kind, name, entry point, distribution and version."""
        for p in self.listing:
            if (p.kind, p.name) == (kind, name):
                return f"{kind} plugin {name!r} ({p.entry_point}) from {p.distribution} {p.version}"
        return f"{kind} plugin {name!r}"


def _where(ep: EntryPoint) -> tuple[str, str]:
    dist = ep.dist
    if dist is None:
        return "an unknown distribution", "?"
    return dist.metadata["Name"] or dist.name, dist.version or "?"


def describe(kind: str, ep: EntryPoint) -> str:
    name, version = _where(ep)
    return f"{kind} plugin {ep.name!r} ({ep.group}: {ep.value}) from {name} {version}"


def _instantiate(kind: str, ep: EntryPoint) -> Any:
    try:
        target = ep.load()
    except Exception as exc:
        raise PluginError(f"{describe(kind, ep)} cannot be imported: {type(exc).__name__}: {exc}") from exc
    if not inspect.isclass(target):
        return target  # an instance (or module) the entry point names directly
    try:
        return target()
    except Exception as exc:
        raise PluginError(
            f"{describe(kind, ep)} cannot be instantiated with no arguments: {type(exc).__name__}: {exc}"
        ) from exc


def _checked(kind: str, ep: EntryPoint, plugin: Any, *, brought_by_connector: bool = False) -> None:
    found = problems(kind, plugin)
    name = getattr(plugin, "name", None)
    if brought_by_connector:
        what = f"{describe('connector', ep)}: the handler it brings ({type(plugin).__qualname__})"
    else:
        what = describe(kind, ep)
        if isinstance(name, str) and name != ep.name:
            found.append(f"its name {name!r} differs from the entry point's name {ep.name!r}")
    if found:
        raise PluginError(f"{what} is not a valid {kind}: " + "; ".join(found))


def _disabled(settings: Settings) -> set[tuple[str, str]]:
    """``LILY_PLUGINS_DISABLED``: ``kind:name`` entries, comma-separated."""
    out: set[tuple[str, str]] = set()
    for item in (i.strip() for i in settings.plugins_disabled.split(",")):
        if not item:
            continue
        kind, sep, name = item.partition(":")
        if not sep or kind not in KIND_GROUPS or not name:
            raise PluginError(
                f"LILY_PLUGINS_DISABLED entry {item!r} must be kind:name with kind one of {', '.join(KIND_GROUPS)}"
            )
        out.add((kind, name))
    return out


def _enabled_hooks(settings: Settings) -> set[str] | None:
    """``LILY_HOOKS``: ``*`` (every hook) or the names of the hooks to run."""
    wanted = settings.hooks.strip()
    return None if wanted == "*" else {n.strip() for n in wanted.split(",") if n.strip()}


@dataclass
class _Builder:
    by_kind: dict[str, dict[str, Any]] = field(default_factory=lambda: {k: {} for k in KIND_GROUPS})
    origin: dict[tuple[str, str], str] = field(default_factory=dict)
    handlers: dict[str, EventHandler] = field(default_factory=dict)
    handler_origin: dict[str, str] = field(default_factory=dict)
    listing: list[PluginInfo] = field(default_factory=list)

    def add(self, kind: str, ep: EntryPoint, plugin: Any, *, provided_by: str | None = None) -> None:
        if provided_by:
            what = f"{describe('connector', ep)}: the {kind} {plugin.name!r} it brings"
        else:
            what = describe(kind, ep)
        name: str = plugin.name
        if name in self.by_kind[kind]:
            raise PluginError(f"{what}: another {kind} is already named {name!r} ({self.origin[(kind, name)]})")
        if kind == "handler":
            for event_kind in plugin.kinds:
                if event_kind in self.handlers:
                    raise PluginError(
                        f"{what}: event kind {event_kind!r} is already handled by {self.handler_origin[event_kind]}"
                    )
            for event_kind in plugin.kinds:
                self.handlers[event_kind] = plugin
                self.handler_origin[event_kind] = what
        self.by_kind[kind][name] = plugin
        self.origin[(kind, name)] = what
        dist, version = _where(ep)
        self.listing.append(PluginInfo(kind, name, f"{ep.group}:{ep.name} = {ep.value}", dist, version, provided_by))


def _group(kind: str) -> Iterable[EntryPoint]:
    return sorted(entry_points(group=KIND_GROUPS[kind]), key=lambda e: (e.name, e.value))


def load_plugins(settings: Settings) -> Plugins:
    """Load, check and register every plugin of every kind; raises :class:`PluginError` on the first bad one.

    Disabled plugins (``LILY_PLUGINS_DISABLED``, hooks not in ``LILY_HOOKS``) are not even imported, so
    a broken optional plugin can be switched off without uninstalling it.
    """
    disabled = _disabled(settings)
    hooks_wanted = _enabled_hooks(settings)
    built = _Builder()
    for kind in KIND_GROUPS:
        for ep in _group(kind):
            if (kind, ep.name) in disabled or (
                kind == "hook" and hooks_wanted is not None and ep.name not in hooks_wanted
            ):
                log.info("%s is disabled", describe(kind, ep))
                continue
            plugin = _instantiate(kind, ep)
            _checked(kind, ep, plugin)
            built.add(kind, ep, plugin)
            if kind == "connector":
                _add_connector_handlers(built, ep, plugin, disabled)
    missing = [k for k in CORE_EVENT_KINDS if k not in built.handlers]
    if missing:
        raise PluginError(
            f"no handler for the core event kind(s) {', '.join(missing)}: Lily's own lily.handlers entry points are "
            "missing (reinstall lily) or disabled in LILY_PLUGINS_DISABLED"
        )
    if hooks_wanted is not None:
        unknown = sorted(hooks_wanted - set(built.by_kind["hook"]))
        if unknown:
            log.warning("LILY_HOOKS names hooks that are not installed: %s", ", ".join(unknown))
    k = built.by_kind
    # Read-only views: the registry is shared by every request and worker of the process.
    return Plugins(
        handlers=MappingProxyType(dict(built.handlers)),
        hooks=tuple(k["hook"][n] for n in sorted(k["hook"])),
        connectors=MappingProxyType(k["connector"]),
        channels=MappingProxyType(k["channel"]),
        classifiers=MappingProxyType(k["classifier"]),
        quality_checks=MappingProxyType(k["quality_check"]),
        jobs=MappingProxyType(k["job"]),
        listing=tuple(built.listing),
    )


def _add_connector_handlers(built: _Builder, ep: EntryPoint, connector: Any, disabled: set[tuple[str, str]]) -> None:
    provided_by = f"connector:{connector.name}"
    try:
        handlers = list(connector.handlers())
    except Exception as exc:
        raise PluginError(f"{describe('connector', ep)}: handlers() failed: {type(exc).__name__}: {exc}") from exc
    for handler in handlers:
        _checked("handler", ep, handler, brought_by_connector=True)
        if ("handler", handler.name) in disabled:
            continue
        built.add("handler", ep, handler, provided_by=provided_by)
