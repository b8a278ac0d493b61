"""Pipeline hooks: plugins in the ``lily.hooks`` entry-point group (:class:`lily.plugins.protocols.PipelineHook`).

A hook is a class with a no-argument constructor, a ``name``, and any of ``pre``, ``enrich`` and
``post``, each ``async def (self, ctx, events)``: it gets the whole batch (one tenant's events with
distinct subjects) and the worker's transaction as ``ctx.conn``. ``pre`` and ``enrich`` see the
undecided events and may change payloads or reject one (``event.reject``; raising
:class:`lily.domain.errors.Invalid` rejects every event it was shown); ``post`` sees the batch as
decided, inside the same transaction. Any other exception is a transient failure: the batch rolls back
and is retried with backoff, then dead-lettered. Hooks must be quick and must not do network I/O —
send outbound work through the outbox instead. The registry checks each method's shape at load time.

Register one in your package's ``pyproject.toml`` (``LILY_HOOKS`` picks which run; ``*``, the default,
runs all)::

    [project.entry-points."lily.hooks"]
    my_hook = "my_package.hooks:MyHook"

This package holds the hooks Lily ships: :mod:`.source_stamp`.
"""
