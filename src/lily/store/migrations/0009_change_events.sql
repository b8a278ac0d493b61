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
-- (xid, seq): rows of one transaction in the order written, transactions in xid order. A long write
-- transaction of this database holds the horizon back: events after it wait (latency), none is lost;
-- those of other databases on the server do not (lily_change_horizon below).
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

-- The horizon readers serve below: the xmin of the caller's snapshot, but counting only transactions of
-- this database. A snapshot's xmin is cluster-wide, so a long write transaction in any other database on
-- the server (another application, another test) would hold every reader back for its whole length; yet
-- only a backend of this database can write these rows. A running xid is set aside only when
-- pg_stat_activity positively shows it belongs to a backend of another database (xids are unique across
-- the cluster, so that attribution cannot be wrong, however stale the view); anything unknown (a
-- prepared transaction, a backend the view does not show) still counts. With nothing left running, the
-- snapshot's xmax: every xid below it has ended and every new one will be above it. STABLE and inlined,
-- so it reads the calling statement's own snapshot. A bigint (the xid8's value), as min(xid8) needs PG 15.
CREATE FUNCTION lily_change_horizon() RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT coalesce(
        (SELECT min(x::text::bigint) FROM pg_snapshot_xip(pg_current_snapshot()) AS x
         WHERE (x::text::bigint % 4294967296) NOT IN (
             SELECT a.backend_xid::text::bigint FROM pg_stat_activity a
             WHERE a.backend_xid IS NOT NULL AND a.datid IS NOT NULL
               AND a.datid <> (SELECT d.oid FROM pg_database d WHERE d.datname = current_database()))),
        pg_snapshot_xmax(pg_current_snapshot())::text::bigint)
$$;

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
