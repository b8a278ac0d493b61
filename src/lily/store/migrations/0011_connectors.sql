-- The connector registry: a tenant's inbound connector instances (crawlers, pollers, CDC readers), their
-- runs, and what each crawl last saw. Everything a run produces still goes through the event log, with
-- `connector:<connector_id>` as the events' source; these tables only drive and record the runs.

-- The baseline's connectors table becomes the registry. `kind` is the connector plugin's name (the
-- API's "type"), `active` its enabled flag, `config` the public part of its Config; the secret part is
-- `config_sealed`, sealed by lily.crypto (the `_sealed` suffix registers it with the key check and the
-- re-sealing job, which need the lily_pipeline policy below), never readable through the API.
ALTER TABLE connectors
    ADD COLUMN schedule          jsonb,                 -- {"cron": "*/30 * * * *"} | {"every_seconds": N} | null (runs on request only)
    ADD COLUMN config_sealed     text,                  -- the Config's secret fields, sealed (lily.crypto)
    ADD COLUMN state             jsonb NOT NULL DEFAULT '{}',   -- the plugin's own state between runs (a CDC position, a cursor)
    ADD COLUMN updated_at        timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN next_run_at       timestamptz,           -- the next scheduled (or retry) run; null: none
    ADD COLUMN failures          integer NOT NULL DEFAULT 0 CHECK (failures >= 0),  -- consecutive failed runs (retry backoff)
    -- One process at a time runs a connector (a crawl, or a long-lived CDC consumer): it holds the lease
    -- and renews it while it works; a lease past lease_until is free to take (its holder died).
    ADD COLUMN lease_owner       text,
    ADD COLUMN lease_until       timestamptz,
    ADD CONSTRAINT connectors_name_length CHECK (length(name) BETWEEN 1 AND 200),
    ADD CONSTRAINT connectors_schedule_shape CHECK (schedule IS NULL OR jsonb_typeof(schedule) = 'object'),
    ADD CONSTRAINT connectors_lease_whole CHECK ((lease_owner IS NULL) = (lease_until IS NULL));
CREATE UNIQUE INDEX connectors_name ON connectors (tenant_id, direction, name);
-- The poll job's scan across tenants: enabled connectors by when they are next due.
CREATE INDEX connectors_due ON connectors (next_run_at) WHERE active AND next_run_at IS NOT NULL;

-- One row per run: what it saw and did, and how it ended.
CREATE TABLE connector_runs (
    tenant_id      text NOT NULL,
    run_id         uuid NOT NULL,
    connector_id   uuid NOT NULL,
    trigger        text NOT NULL CHECK (trigger IN ('schedule', 'manual', 'retry')),
    state          text NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed')),
    requested_by   text,
    runner         text,                                  -- host:pid:random of the process that ran it
    attempt        integer NOT NULL DEFAULT 1,
    created_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    started_at     timestamptz,
    finished_at    timestamptz,
    seen           integer NOT NULL DEFAULT 0,
    created        integer NOT NULL DEFAULT 0,
    updated        integer NOT NULL DEFAULT 0,
    unchanged      integer NOT NULL DEFAULT 0,
    removed        integer NOT NULL DEFAULT 0,
    events         integer NOT NULL DEFAULT 0,            -- events appended to the log
    errors         jsonb NOT NULL DEFAULT '[]',           -- per-object problems of a run that still succeeded
    error          text,                                  -- why the run failed
    detail         jsonb NOT NULL DEFAULT '{}',           -- e.g. why stale removal was held back
    PRIMARY KEY (tenant_id, run_id),
    FOREIGN KEY (tenant_id, connector_id) REFERENCES connectors ON DELETE CASCADE,
    CHECK ((state = 'queued') = (started_at IS NULL)),
    CHECK ((state IN ('succeeded', 'failed')) = (finished_at IS NOT NULL))
);
SELECT lily_protect_tenant_table('connector_runs');
CREATE INDEX connector_runs_by_connector ON connector_runs (tenant_id, connector_id, created_at DESC, run_id DESC);
-- At most one waiting run-now request per connector: asking again while one waits returns it.
CREATE UNIQUE INDEX connector_runs_queued ON connector_runs (tenant_id, connector_id) WHERE state = 'queued';
CREATE INDEX connector_runs_unfinished ON connector_runs (state) WHERE state IN ('queued', 'running');

-- What the connector's last successful crawls saw: each object's qualified name and a fingerprint of
-- what was written for it. An unchanged fingerprint appends nothing; a name missing from a complete
-- crawl is stale (soft-deleted, subject to the fail-safe).
CREATE TABLE connector_objects (
    tenant_id       text NOT NULL,
    connector_id    uuid NOT NULL,
    qualified_name  text NOT NULL,
    fingerprint     text NOT NULL,
    seen_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, connector_id, qualified_name),
    FOREIGN KEY (tenant_id, connector_id) REFERENCES connectors ON DELETE CASCADE
);
SELECT lily_protect_tenant_table('connector_objects');

-- The poll job (lily.scheduler) finds due connectors and queued runs of every tenant, takes their
-- leases and records runs, as lily_pipeline; the runs' own work happens in tenant transactions.
CREATE POLICY pipeline_polls_connectors ON connectors TO lily_pipeline USING (true) WITH CHECK (true);
CREATE POLICY pipeline_records_connector_runs ON connector_runs TO lily_pipeline USING (true) WITH CHECK (true);
GRANT SELECT, UPDATE ON connectors TO lily_pipeline;
-- ... and never runs a deleted tenant's connectors: it reads which tenants are deleted (nothing else).
CREATE POLICY pipeline_sees_deleted_tenants ON tenants FOR SELECT TO lily_pipeline USING (true);
GRANT SELECT (tenant_id, deleted_at) ON tenants TO lily_pipeline;
GRANT SELECT, INSERT, UPDATE ON connector_runs TO lily_pipeline;
