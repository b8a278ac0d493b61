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
