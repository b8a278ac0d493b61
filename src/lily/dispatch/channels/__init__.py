"""Lily's built-in channels, registered through the ``lily.channels`` entry points like any plugin's."""
