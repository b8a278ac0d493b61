"""OpenLineage, as Marquez speaks it: ``POST /api/v1/lineage`` takes run, dataset and job events and
turns them into Lily events; ``GET /api/v1/lineage`` answers in Marquez's graph shape.

Modules: :mod:`.events` (validation of the spec's events), :mod:`.translate` (event → Lily events, pure),
:mod:`.runs` (run-state rules, pure), :mod:`.graph` (Lily lineage → Marquez graph, pure),
:mod:`.router` (the HTTP surface).
"""
