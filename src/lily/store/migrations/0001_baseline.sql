-- Lily's baseline schema: the migrations of the first releases (0001 core, 0002 lineage, 0004 pipeline,
-- 0005 auth lookups, 0006 single-event append) folded into one before anything was released.
-- Forward-only from here: a change to the schema is a new numbered migration, never an edit to this one.

-- ===== from 0001_core.sql =====
-- Lily core schema: tenants and identities, assets with full history, audit, and the event log.
--
-- Isolation: every table with a tenant_id column is tenant-owned. It gets FORCE ROW LEVEL SECURITY and
-- the policy below, keyed on the transaction-local setting lily.tenant_id. The application runs as
-- lily_app, a role that owns nothing and cannot bypass RLS; the migration runner grants it DML.

-- Roles belong to the cluster, not the database: several Lily databases (or their concurrent first
-- migrations) share them, so "already exists" is success.
DO $$
BEGIN
    CREATE ROLE lily_app NOLOGIN NOBYPASSRLS;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END
$$;
-- The log consumer reads the whole event log across tenants (and nothing else across tenants).
DO $$
BEGIN
    CREATE ROLE lily_pipeline NOLOGIN NOBYPASSRLS;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END
$$;

-- Attach the standard tenant policy to a table. Later migrations call this for every new tenant table.
CREATE OR REPLACE FUNCTION lily_protect_tenant_table(tbl regclass) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', tbl);
    EXECUTE format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', tbl);
    EXECUTE format(
        'CREATE POLICY tenant_isolation ON %s USING (tenant_id = current_setting(''lily.tenant_id'', true)) '
        'WITH CHECK (tenant_id = current_setting(''lily.tenant_id'', true))', tbl);
END
$$;

CREATE TABLE tenants (
    tenant_id   text PRIMARY KEY CHECK (tenant_id ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    name        text NOT NULL,
    config      jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now()
);
SELECT lily_protect_tenant_table('tenants');

CREATE TABLE users (
    tenant_id      text NOT NULL REFERENCES tenants,
    username       text NOT NULL,
    user_id        uuid NOT NULL DEFAULT gen_random_uuid(),
    password_hash  text NOT NULL,
    role           text NOT NULL,
    disabled       boolean NOT NULL DEFAULT false,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, username)
);
SELECT lily_protect_tenant_table('users');

CREATE TABLE api_keys (
    tenant_id    text NOT NULL REFERENCES tenants,
    key_id       text NOT NULL,
    name         text NOT NULL,
    key_hash     text NOT NULL,           -- sha256 of the secret part; keys are random, so no slow hash
    role         text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz,
    PRIMARY KEY (tenant_id, key_id)
);
SELECT lily_protect_tenant_table('api_keys');

CREATE TABLE revoked_tokens (
    tenant_id   text NOT NULL REFERENCES tenants,
    jti         text NOT NULL,
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, jti)
);
SELECT lily_protect_tenant_table('revoked_tokens');

CREATE TABLE connectors (
    tenant_id     text NOT NULL REFERENCES tenants,
    connector_id  uuid NOT NULL DEFAULT gen_random_uuid(),
    name          text NOT NULL,
    kind          text NOT NULL,
    direction     text NOT NULL CHECK (direction IN ('inbound', 'outbound')),
    config        jsonb NOT NULL DEFAULT '{}',
    active        boolean NOT NULL DEFAULT true,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, connector_id)
);
SELECT lily_protect_tenant_table('connectors');

-- Current state of every asset. qualified_name is the asset's identity and the event log's subject key.
CREATE TABLE assets (
    tenant_id       text NOT NULL REFERENCES tenants,
    asset_id        uuid NOT NULL,
    qualified_name  text NOT NULL,
    type            text NOT NULL,
    name            text NOT NULL,
    description     text,
    owners          text[] NOT NULL DEFAULT '{}',
    tags            text[] NOT NULL DEFAULT '{}',
    attributes      jsonb NOT NULL DEFAULT '{}',
    placeholder     boolean NOT NULL DEFAULT false,
    version         integer NOT NULL,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    deleted_at      timestamptz,
    search          tsvector GENERATED ALWAYS AS (
        setweight(to_tsvector('simple', coalesce(name, '')), 'A') ||
        setweight(to_tsvector('simple', regexp_replace(qualified_name, '[^[:alnum:]]+', ' ', 'g')), 'B') ||
        setweight(to_tsvector('simple', coalesce(description, '')), 'C')
    ) STORED,
    PRIMARY KEY (tenant_id, asset_id),
    UNIQUE (tenant_id, qualified_name)
);
SELECT lily_protect_tenant_table('assets');
CREATE INDEX assets_search ON assets USING gin (search);
CREATE INDEX assets_tags ON assets USING gin (tags);
CREATE INDEX assets_type ON assets (tenant_id, type, asset_id);

-- Every version of every asset: the full snapshot, what changed, who changed it, when.
CREATE TABLE asset_versions (
    tenant_id    text NOT NULL,
    asset_id     uuid NOT NULL,
    version      integer NOT NULL,
    action       text NOT NULL,
    snapshot     jsonb NOT NULL,
    changes      jsonb NOT NULL,
    actor        text NOT NULL,
    event_id     uuid,
    request_id   text,
    origin       jsonb,             -- set when the change was propagated from another asset
    changed_at   timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, asset_id, version)
);
SELECT lily_protect_tenant_table('asset_versions');

-- Every mutating call, asset or not.
CREATE TABLE audit_log (
    tenant_id       text NOT NULL,
    audit_id        bigint GENERATED ALWAYS AS IDENTITY,
    asset_id        uuid,
    action          text NOT NULL,
    actor           text NOT NULL,
    version_before  integer,
    version_after   integer,
    request_id      text,
    event_id        uuid,
    detail          jsonb NOT NULL DEFAULT '{}',
    at              timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, audit_id)
);
SELECT lily_protect_tenant_table('audit_log');
CREATE INDEX audit_log_asset ON audit_log (tenant_id, asset_id, audit_id);

-- The event log. P partitions; appenders take the partition's head row lock to number events, so a
-- partition's sequence numbers commit in order and a consumer can never skip a late commit.
CREATE TABLE log_heads (
    partition  integer PRIMARY KEY,
    next_seq   bigint NOT NULL DEFAULT 1
);
CREATE TABLE log_offsets (
    partition    integer PRIMARY KEY,
    applied_seq  bigint NOT NULL DEFAULT 0,
    -- a failing event holds its partition until this time (retry backoff), keeping order
    retry_at     timestamptz
);

CREATE TABLE events (
    event_id         uuid PRIMARY KEY,
    partition        integer NOT NULL,
    seq              bigint NOT NULL,
    tenant_id        text NOT NULL,
    subject          text NOT NULL,
    kind             text NOT NULL,
    payload          jsonb NOT NULL,
    actor            text NOT NULL,
    request_id       text,
    source           text NOT NULL DEFAULT 'api',
    bulk_job_id      uuid,
    item_index       integer,
    status           text NOT NULL DEFAULT 'accepted'
                     CHECK (status IN ('accepted', 'applied', 'failed', 'dead_lettered')),
    attempts         integer NOT NULL DEFAULT 0,
    error            text,
    result           jsonb,
    accepted_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    applied_at       timestamptz,
    UNIQUE (partition, seq)
-- Every event is updated once, when applied. Free room on each page lets that update stay on the page
-- (a HOT update: no new index entries), which no indexed column's change prevents (status is in none).
) WITH (fillfactor = 75);
SELECT lily_protect_tenant_table('events');
CREATE POLICY pipeline_reads_log ON events FOR SELECT TO lily_pipeline USING (true);
CREATE POLICY pipeline_updates_log ON events FOR UPDATE TO lily_pipeline USING (true) WITH CHECK (true);
-- Follow-up events (e.g. downstream propagation) of many tenants are appended by the consumer at once.
CREATE POLICY pipeline_appends_log ON events FOR INSERT TO lily_pipeline WITH CHECK (true);
CREATE INDEX events_bulk_job ON events (bulk_job_id) WHERE bulk_job_id IS NOT NULL;
CREATE INDEX events_subject ON events (tenant_id, subject, seq);

CREATE TABLE idempotency_keys (
    tenant_id     text NOT NULL,
    key           text NOT NULL,
    request_hash  text NOT NULL,
    response      jsonb NOT NULL,     -- what the first request was answered with: an event id or a job id
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, key)
);
SELECT lily_protect_tenant_table('idempotency_keys');

CREATE TABLE bulk_jobs (
    tenant_id     text NOT NULL,
    job_id        uuid NOT NULL,
    actor         text NOT NULL,
    total         integer NOT NULL DEFAULT 0,
    rejected      integer NOT NULL DEFAULT 0,    -- items refused before reaching the log
    errors        jsonb NOT NULL DEFAULT '[]',   -- first errors: [{"index", "error"}]
    receiving     boolean NOT NULL DEFAULT true,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, job_id)
);
SELECT lily_protect_tenant_table('bulk_jobs');

-- ===== from 0002_lineage.sql =====
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

-- ===== from 0004_pipeline.sql =====
-- Pipeline: the dead-letter queue and replay lineage of events.
--
-- An event that failed max_attempts times keeps status 'dead_lettered' in the log for ever (the log is
-- history); its place in the *queue* lives here, so an admin can replay or discard it without rewriting
-- the event. A replay is a new event in the log whose replay_of names the dead-lettered one.

CREATE TABLE dead_letters (
    tenant_id         text NOT NULL,
    event_id          uuid NOT NULL REFERENCES events,
    partition         integer NOT NULL,
    seq               bigint NOT NULL,
    subject           text NOT NULL,
    kind              text NOT NULL,
    error             text NOT NULL,
    attempts          integer NOT NULL,
    dead_lettered_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    state             text NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'replayed', 'discarded')),
    resolved_at       timestamptz,
    resolved_by       text,
    replayed_as       uuid,             -- the event a replay appended
    PRIMARY KEY (tenant_id, event_id)
);
SELECT lily_protect_tenant_table('dead_letters');
-- The consumer dead-letters events of any tenant, and health/metrics count the open ones across tenants.
CREATE POLICY pipeline_records_dead_letters ON dead_letters FOR INSERT TO lily_pipeline WITH CHECK (true);
CREATE POLICY pipeline_reads_dead_letters ON dead_letters FOR SELECT TO lily_pipeline USING (true);
GRANT SELECT, INSERT ON dead_letters TO lily_pipeline;

-- The admin list: open letters of a tenant, oldest first, paged by (dead_lettered_at, event_id).
CREATE INDEX dead_letters_open ON dead_letters (tenant_id, dead_lettered_at, event_id) WHERE state = 'open';

ALTER TABLE events ADD COLUMN replay_of uuid;

-- ===== from 0005_auth_lookups.sql =====
-- Authentication runs on every request, so its reads take one round trip: each function sets the tenant
-- and then reads, as two statements inside one call (one implicit transaction when the caller is in
-- autocommit). They run as the caller (lily_app), not as their owner: row-level security applies as
-- for any query. Call them only outside a transaction, since they switch the transaction's tenant.

CREATE FUNCTION lily_auth_api_key(p_tenant text, p_key_id text)
RETURNS TABLE (key_id text, name text, key_hash text, role text)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('lily.tenant_id', p_tenant, true);
    RETURN QUERY
        SELECT k.key_id, k.name, k.key_hash, k.role FROM api_keys k
        WHERE k.tenant_id = p_tenant AND k.key_id = p_key_id AND k.revoked_at IS NULL;
END
$$;

CREATE FUNCTION lily_auth_token_revoked(p_tenant text, p_jti text) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('lily.tenant_id', p_tenant, true);
    RETURN EXISTS (SELECT 1 FROM revoked_tokens r WHERE r.tenant_id = p_tenant AND r.jti = p_jti);
END
$$;

-- ===== from 0006_append_one.sql =====
-- A single write's append in one round trip, outside any client transaction: set the tenant, take the
-- partition's head (its row lock is held until this call's implicit commit, so sequence numbers still
-- commit in order), insert the event, wake the workers. Runs as the caller (lily_app): RLS applies.

CREATE FUNCTION lily_append_event(
    p_event_id uuid, p_partition integer, p_tenant text, p_subject text, p_kind text, p_payload jsonb,
    p_actor text, p_request_id text, p_source text
) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_seq bigint;
BEGIN
    PERFORM set_config('lily.tenant_id', p_tenant, true);
    UPDATE log_heads SET next_seq = next_seq + 1 WHERE partition = p_partition RETURNING next_seq - 1 INTO v_seq;
    INSERT INTO events (event_id, partition, seq, tenant_id, subject, kind, payload, actor, request_id, source)
    VALUES (p_event_id, p_partition, v_seq, p_tenant, p_subject, p_kind, p_payload, p_actor, p_request_id,
            p_source);
    PERFORM pg_notify('lily_log', p_partition::text);
    RETURN v_seq;
END
$$;

