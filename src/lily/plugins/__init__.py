"""Plugins: one registry for every extension point.

:mod:`.protocols` is the contract of each kind, :mod:`.validate` checks a plugin against it,
:mod:`.registry` loads every entry-point group once at start-up (:func:`load_plugins`), and
:mod:`.config` validates a plugin's per-use settings.
"""

from lily.plugins.registry import PluginError, PluginInfo, Plugins, load_plugins

__all__ = ["PluginError", "PluginInfo", "Plugins", "load_plugins"]
