"""Plugins: one registry for every extension point (see :mod:`lily.plugins.protocols`)."""
