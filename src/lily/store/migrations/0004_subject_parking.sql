-- A failing subject waits alone; a flooding tenant waits in its own lane. See README "The pipeline never
-- stalls for everyone".
--
-- The invariant the consumer keeps: every event at or below its partition's offset (applied_seq) is
-- decided (applied, failed, dead-lettered) or *held*: its subject is parked, or it is in its tenant's
-- lane. Held events keep status 'accepted'; they are found again through the log itself (the
-- events_subject index for a subject, the (partition, seq) index for a lane), so holding an event writes
-- nothing per event. Effects, outcomes, parking rows and offsets commit in one transaction, as before.

-- A (tenant, subject) whose head event failed transiently and waits for retry_at. Its queue is its
-- 'accepted' events at or below the partition's offset; later events of it join the queue as the
-- partition moves past them.
CREATE TABLE parked_subjects (
    tenant_id  text NOT NULL,
    subject    text NOT NULL,
    partition  integer NOT NULL,
    retry_at   timestamptz NOT NULL,
    parked_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (tenant_id, subject)
);
CREATE INDEX parked_subjects_due ON parked_subjects (partition, retry_at);
SELECT lily_protect_tenant_table('parked_subjects');
CREATE POLICY pipeline_parks_subjects ON parked_subjects TO lily_pipeline USING (true) WITH CHECK (true);
GRANT SELECT, INSERT, UPDATE, DELETE ON parked_subjects TO lily_pipeline;

-- A tenant that took more than its share of a partition's batch: its events from next_seq up to the
-- partition's offset wait in this lane, drained a share per pass, while the partition reads on past them.
CREATE TABLE tenant_lanes (
    partition  integer NOT NULL,
    tenant_id  text NOT NULL,
    next_seq   bigint NOT NULL,
    opened_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (partition, tenant_id)
);
SELECT lily_protect_tenant_table('tenant_lanes');
CREATE POLICY pipeline_runs_lanes ON tenant_lanes TO lily_pipeline USING (true) WITH CHECK (true);
GRANT SELECT, INSERT, UPDATE, DELETE ON tenant_lanes TO lily_pipeline;

-- Per partition, kept by the worker holding it so the hot path need not look at the tables above:
-- retry_at (already there) now means the earliest retry of a parked subject, NULL when none is parked;
-- it no longer holds the partition. lanes counts open lanes; held counts held events (part of the lag).
ALTER TABLE log_offsets
    ADD COLUMN lanes integer NOT NULL DEFAULT 0,
    ADD COLUMN held  bigint  NOT NULL DEFAULT 0;
COMMENT ON COLUMN log_offsets.retry_at IS 'earliest retry_at of a parked subject of this partition; NULL if none';
