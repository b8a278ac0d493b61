-- Two changes to the write path (issue 11), each explained above its statement.

-- A single append no longer sends NOTIFY in its own transaction. A transaction that has
-- notified takes one lock for the whole cluster at commit (PreCommit_Notify: an exclusive lock on the
-- notification queue) and holds it through its commit's WAL flush, so every single write committed
-- one after another, each waiting for its own flush: at 500 creates a second, sampled pg_stat_activity
-- found on average 1.5 appends waiting on that lock (wait event Lock/object) and WAL flushes that could
-- not be shared. The appending process now wakes the workers after the commit, with many appends in
-- one notification sent with synchronous_commit off (lily.pipeline.wake). Batch appends
-- (store.log.append) still notify in their transaction: one lock for a whole batch.
CREATE OR REPLACE FUNCTION lily_append_event(
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
    RETURN v_seq;
END
$$;

-- The event a write's answer reads is found by its id alone, and its tenant checked on the row found.
-- With `e.tenant_id = p_tenant` in the WHERE, the plan PL/pgSQL caches after five calls was made while
-- `events` was small (a new deployment, or one whose statistics are not yet gathered: autovacuum off, or
-- not yet run), and on a small table the planner prices `events_subject` (tenant_id, subject, seq) the
-- same as the primary key: it took it, with tenant_id as the index condition, and the cached plan then
-- scanned every event of the tenant on each call, ever longer as the log grew. The connection keeps a
-- cached plan until statistics change, so where nothing analyses the table it never changes. On this
-- machine's shared server (autovacuum off), after 9,000 events each call read 1,442 buffers (0.9 ms)
-- instead of 3. Row-level security still binds the read to the tenant the function sets.
CREATE OR REPLACE FUNCTION lily_write_outcome(p_tenant text, p_role text, p_names text, p_event_id uuid)
RETURNS TABLE (status text, result jsonb, snapshot jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    v_tenant text;
    v_status text;
    v_result jsonb;
    v_snapshot jsonb;
BEGIN
    PERFORM set_config('lily.tenant_id', p_tenant, true);
    IF p_role IS NOT NULL THEN
        PERFORM set_config('lily.access_role', p_role, true), set_config('lily.access_names', p_names, true);
    END IF;
    SELECT e.tenant_id, e.status, e.result INTO v_tenant, v_status, v_result
    FROM public.events e WHERE e.event_id = p_event_id;
    IF NOT FOUND OR v_tenant IS DISTINCT FROM p_tenant THEN
        RETURN;
    END IF;
    IF v_status = 'applied' THEN
        SELECT v.snapshot INTO v_snapshot FROM public.asset_versions v
        WHERE v.tenant_id = p_tenant AND v.asset_id = (v_result ->> 'asset_id')::uuid
          AND v.version = (v_result ->> 'version')::int;
    END IF;
    RETURN QUERY SELECT v_status, v_result, v_snapshot;
END
$$;
