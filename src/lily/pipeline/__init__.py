"""The pipeline: consumes the event log partition by partition, in order, and applies each event.

worker.py    claims partitions (advisory locks), reads batches, commits effects + offset together
stages.py    validate → pre-hooks → enrich → apply → post-hooks, over a batch of one tenant
apply/       one handler per event kind, each writing its batch as sets
hooks/       the hook protocol, entry-point loading, and the hooks Lily ships
writer.py    the accept side: append events and wait (bounded) until they are applied
"""
