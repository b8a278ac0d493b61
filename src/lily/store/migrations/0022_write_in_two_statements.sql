-- A single write in two statements (issue 11): the append, checked against what the API acted on, and
-- the answer's read. Before, a cached writer's create made three round trips, two of them pipelines of
-- three or four statements; on loopback TCP each statement is a send of its own, and a pipeline cost the
-- API process about twice the CPU of one statement.

-- Append one event only while the tenant's auth epoch and policy epoch are still the ones the API
-- checked the caller at (its cached credential, and the policies it found to bind nothing). NULL when
-- either moved, or the tenant is gone: nothing is appended, and the API checks the caller again (one
-- round trip, as before) and decides anew. An epoch row is written only by a policy change; a tenant
-- without one has never had a policy, epoch 0.
CREATE FUNCTION lily_append_checked(
    p_auth_epoch bigint, p_policy_epoch bigint,
    p_event_id uuid, p_partition integer, p_tenant text, p_subject text, p_kind text, p_payload jsonb,
    p_actor text, p_request_id text, p_source text
) RETURNS bigint
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('lily.tenant_id', p_tenant, true);
    IF NOT EXISTS (
        SELECT 1 FROM public.tenants t
        WHERE t.tenant_id = p_tenant AND t.deleted_at IS NULL AND t.auth_epoch = p_auth_epoch
          AND coalesce((SELECT e.epoch FROM public.access_policy_epochs e WHERE e.tenant_id = p_tenant), 0)
              = p_policy_epoch
    ) THEN
        RETURN NULL;
    END IF;
    RETURN public.lily_append_event(p_event_id, p_partition, p_tenant, p_subject, p_kind, p_payload, p_actor,
                                    p_request_id, p_source);
END
$$;

-- What a write of an asset answers: the event's status and result, and the version an applied one
-- produced, as the caller (its tenant, role and names: the read rule of 0008 applies), in one statement
-- outside any transaction. The version is looked up with its keys as values: in a join, under row-level
-- security, a condition calling a function that is not LEAKPROOF (->>, the casts) may not become an
-- index condition, and the planner hashed every version of the tenant instead.
CREATE FUNCTION lily_write_outcome(p_tenant text, p_role text, p_names text, p_event_id uuid)
RETURNS TABLE (status text, result jsonb, snapshot jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    v_status text;
    v_result jsonb;
    v_snapshot jsonb;
BEGIN
    PERFORM set_config('lily.tenant_id', p_tenant, true);
    IF p_role IS NOT NULL THEN
        PERFORM set_config('lily.access_role', p_role, true), set_config('lily.access_names', p_names, true);
    END IF;
    SELECT e.status, e.result INTO v_status, v_result
    FROM public.events e WHERE e.tenant_id = p_tenant AND e.event_id = p_event_id;
    IF NOT FOUND THEN
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
