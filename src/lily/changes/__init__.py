"""Change events after they are written: the pull feed (commit order, long-polling) and pruning.

Writing them is the pipeline's (:meth:`lily.pipeline.context.BatchContext.emit_change`); the rows and
their contract are :mod:`lily.domain.changes` and migration 0009.
"""
