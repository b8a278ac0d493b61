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
