-- Lineage: asset-to-asset edges (optionally carried by a process/job asset) and column-level mappings.
--
-- Every foreign key includes tenant_id, so an edge can only join assets of its own tenant: isolation
-- holds in the schema itself, not only in RLS and our WHERE clauses. Asset ids are unique per tenant
-- only, which is one more reason the keys are composite.

CREATE TABLE lineage_edges (
    tenant_id      text NOT NULL,
    edge_id        uuid NOT NULL DEFAULT gen_random_uuid(),
    upstream_id    uuid NOT NULL,
    downstream_id  uuid NOT NULL,
    process_id     uuid,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, edge_id),
    -- Assets are soft-deleted; a hard delete (retention purge) takes the lineage through it along.
    FOREIGN KEY (tenant_id, upstream_id) REFERENCES assets (tenant_id, asset_id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, downstream_id) REFERENCES assets (tenant_id, asset_id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, process_id) REFERENCES assets (tenant_id, asset_id) ON DELETE CASCADE,
    CONSTRAINT lineage_edges_no_self_loop CHECK (upstream_id <> downstream_id),
    CONSTRAINT lineage_edges_process_valid CHECK (
        process_id IS NULL OR (process_id <> upstream_id AND process_id <> downstream_id
                               AND process_id <> '00000000-0000-0000-0000-000000000000'::uuid))
);
SELECT lily_protect_tenant_table('lineage_edges');

-- One edge per (upstream, downstream, process). NULLS NOT DISTINCT would need PostgreSQL 15 and we
-- support 14, hence the COALESCE onto a sentinel (the nil uuid, which the CHECK above keeps out of process_id).
CREATE UNIQUE INDEX lineage_edges_identity ON lineage_edges
    (tenant_id, upstream_id, downstream_id, (COALESCE(process_id, '00000000-0000-0000-0000-000000000000'::uuid)));

-- Traversal, one per direction. The INCLUDE columns make each BFS step an index-only scan.
CREATE INDEX lineage_edges_downstream ON lineage_edges (tenant_id, upstream_id)
    INCLUDE (downstream_id, process_id, edge_id);
CREATE INDEX lineage_edges_upstream ON lineage_edges (tenant_id, downstream_id)
    INCLUDE (upstream_id, process_id, edge_id);
-- Without it, purging a job asset would scan every edge to cascade.
CREATE INDEX lineage_edges_process ON lineage_edges (tenant_id, process_id) WHERE process_id IS NOT NULL;

-- Which upstream columns feed which downstream column, on a given edge. Hanging the mapping on the edge
-- means removing an edge removes its mappings, and the upstream/downstream assets are never restated.
CREATE TABLE column_lineage (
    tenant_id          text NOT NULL,
    edge_id            uuid NOT NULL,
    downstream_column  text NOT NULL CHECK (length(downstream_column) BETWEEN 1 AND 1024),
    upstream_column    text NOT NULL CHECK (length(upstream_column) BETWEEN 1 AND 1024),
    transformation     text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, edge_id, downstream_column, upstream_column),
    FOREIGN KEY (tenant_id, edge_id) REFERENCES lineage_edges (tenant_id, edge_id) ON DELETE CASCADE
);
SELECT lily_protect_tenant_table('column_lineage');
