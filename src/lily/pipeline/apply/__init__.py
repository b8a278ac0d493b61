"""Lily's own event handlers, one module per family of event kinds.

Each takes a batch of one tenant's events with distinct subjects (the worker guarantees it) and writes
the whole batch as sets. They are plugins like any other (:class:`lily.plugins.protocols.EventHandler`),
registered in Lily's ``pyproject.toml`` under ``lily.handlers``; the apply stage finds every handler,
Lily's and third parties', through :func:`lily.plugins.load_plugins`, never through an import here.
"""
