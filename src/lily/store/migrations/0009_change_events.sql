-- Change events: what every applied change tells the outside world (issue 9). Written in the same
-- transaction as the change it describes, so there is no change without its event and no event of a
-- change that rolled back. Read by the pull feed (GET /lily/v1/changes) and the dispatcher (0010).
--
-- Commit order. A sequence alone cannot give it: transaction A takes seq 10, B takes seq 11, B commits
-- first; a reader that served 11 and moved its cursor past it would never see 10. So each row keeps the
-- id of the transaction that wrote it (xid, pg_current_xact_id(): the top-level transaction's, also
-- inside savepoints), and a reader serves only rows whose xid is below its snapshot's xmin: every
-- transaction below xmin has finished, so no row can still appear below that line, and a cursor
-- (xid, seq) that only moves over served rows never passes a row that commits later. Order is
-- (xid, seq): rows of one transaction in the order written, transactions in xid order. A long
-- transaction anywhere in the cluster holds xmin back: events after it wait (latency), none is lost.
CREATE TABLE change_events (
    tenant_id       text NOT NULL,
    xid             xid8 NOT NULL DEFAULT pg_current_xact_id(),
    seq             bigint GENERATED ALWAYS AS IDENTITY,
    id              uuid NOT NULL,               -- stable identity (the webhook-id of its deliveries)
    type            text NOT NULL CHECK (type ~ '^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$' AND length(type) <= 100),
    asset_id        uuid,
    qualified_name  text,
    version         integer,                     -- the asset's version after the change, if it made one
    changes         jsonb NOT NULL DEFAULT '{}',
    actor           text NOT NULL,
    occurred_at     timestamptz NOT NULL,
    origin          jsonb NOT NULL DEFAULT '{}', -- {"source", "event_id", "request_id"}: where it came from
    PRIMARY KEY (tenant_id, xid, seq)
);
SELECT lily_protect_tenant_table('change_events');

-- The worker writes the change events of all the tenants of a batch in one statement, as lily_pipeline;
-- the dispatcher reads them across tenants and the prune job deletes old ones, as lily_pipeline too.
CREATE POLICY pipeline_writes_changes ON change_events FOR INSERT TO lily_pipeline WITH CHECK (true);
CREATE POLICY pipeline_reads_changes ON change_events FOR SELECT TO lily_pipeline USING (true);
CREATE POLICY pipeline_prunes_changes ON change_events FOR DELETE TO lily_pipeline USING (true);
GRANT SELECT, INSERT, DELETE ON change_events TO lily_pipeline;

-- Readers go tenant by tenant (the feed, the dispatcher's per-tenant positions): the primary key is their
-- index. Pruning goes by age; rows arrive in time order, so a BRIN index is enough and costs the hot path
-- next to nothing.
CREATE INDEX change_events_age ON change_events USING brin (occurred_at);

-- Wake feed readers and dispatchers: one notification per tenant per statement, delivered at commit
-- (payload: the tenant id). A wake-up only, never the data: a lost one costs a poll interval.
CREATE FUNCTION lily_change_events_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('lily_changes', t.tenant_id) FROM (SELECT DISTINCT tenant_id FROM new_rows) t;
    RETURN NULL;
END
$$;
CREATE TRIGGER change_events_notify AFTER INSERT ON change_events
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION lily_change_events_notify();
