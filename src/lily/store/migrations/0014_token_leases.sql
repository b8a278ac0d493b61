-- Rate-limit tokens leased to API processes a batch at a time (issue 11: every request used to take one
-- token from its key's and its tenant's bucket, so all requests of one key queued on one advisory lock).
-- A process now asks for up to N tokens of a bucket at once and spends them in memory
-- (lily.auth.leases); the bucket rows are touched about once per N requests. Tokens are never made up:
-- whatever a process spends was taken from the shared bucket first, so across P processes a key or a
-- tenant can be admitted at most P x N requests more than its bucket in any window (the tokens processes
-- held when the window opened), and loses at most as many when processes drop unspent ones.

-- Up to p_want tokens (at least one, never more than the bucket holds) from one bucket, under the same
-- advisory lock as lily_take_token (0005), so both kinds of taker queue on it together.
-- granted = 0 means none could be taken; wait then says how long until one can.
CREATE FUNCTION lily_take_tokens(
    p_tenant text, p_bucket text, p_rate double precision, p_capacity double precision, p_want integer
) RETURNS TABLE (granted integer, wait double precision)
LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := clock_timestamp();
    v_tokens double precision;
    v_granted integer;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended(p_tenant || ' ' || p_bucket, 0));
    SELECT least(p_capacity, b.tokens + greatest(0, extract(epoch FROM v_now - b.at)) * p_rate) INTO v_tokens
    FROM rate_buckets b WHERE b.tenant_id = p_tenant AND b.bucket = p_bucket;
    IF NOT FOUND THEN
        v_tokens := p_capacity;
        -- The lock is held: nobody else can create the row in between.
        INSERT INTO rate_buckets (tenant_id, bucket, tokens, at) VALUES (p_tenant, p_bucket, p_capacity, v_now);
    END IF;
    IF v_tokens < 1 THEN
        RETURN QUERY SELECT 0, (1 - v_tokens) / p_rate;
        RETURN;
    END IF;
    v_granted := least(p_want, floor(v_tokens))::integer;
    UPDATE rate_buckets b SET tokens = v_tokens - v_granted, at = greatest(b.at, v_now)
    WHERE b.tenant_id = p_tenant AND b.bucket = p_bucket;
    RETURN QUERY SELECT v_granted, 0::double precision;
END
$$;

-- lily_authenticate_at (0012) with leases: the same check (cached while p_known_epoch is the tenant's
-- epoch, else in full, then status as lily_authenticate's), then up to p_principal_want tokens of the
-- principal's bucket and p_tenant_want of the tenant's (0: that bucket is not asked, e.g. because the
-- process still holds tokens of it, or its rate is 0). A refused credential takes nothing. 'limited'
-- when a bucket asked gave none; the principal's tokens granted before the tenant's bucket refused are
-- still returned (the process keeps them), in the same fixed order as 0005's, so two takers never deadlock.
CREATE FUNCTION lily_authenticate_lease(
    p_tenant text, p_kind text, p_name text, p_jti text, p_sid text, p_secret_hash text,
    p_principal_rate double precision, p_principal_capacity double precision, p_principal_want integer,
    p_tenant_rate double precision, p_tenant_capacity double precision, p_tenant_want integer,
    p_known_epoch bigint
) RETURNS TABLE (
    status text, role text, groups text[], key_name text, retry_after double precision, epoch bigint,
    principal_granted integer, tenant_granted integer
)
LANGUAGE plpgsql AS $$
DECLARE
    v_epoch bigint;
    v_status text := 'cached';
    v_role text;
    v_groups text[];
    v_key_name text;
    v_principal integer := 0;
    v_tenant integer := 0;
    v_wait double precision := 0;
BEGIN
    PERFORM set_config('lily.tenant_id', p_tenant, true);
    -- Only unlogged tables are written here; never wait for a WAL flush on their account.
    PERFORM set_config('synchronous_commit', 'off', true);
    SELECT t.auth_epoch INTO v_epoch FROM tenants t WHERE t.tenant_id = p_tenant AND t.deleted_at IS NULL;
    IF v_epoch IS NULL THEN
        RETURN QUERY SELECT 'unknown'::text, NULL::text, NULL::text[], NULL::text, NULL::double precision,
            NULL::bigint, 0, 0;
        RETURN;
    END IF;
    IF p_known_epoch IS DISTINCT FROM v_epoch THEN
        -- Rates of 0: the full check without taking any token.
        SELECT a.status, a.role, a.groups, a.key_name INTO v_status, v_role, v_groups, v_key_name
        FROM lily_authenticate(p_tenant, p_kind, p_name, p_jti, p_sid, p_secret_hash, 0, 0, 0, 0) a;
        IF v_status <> 'ok' THEN
            RETURN QUERY SELECT v_status, NULL::text, NULL::text[], NULL::text, NULL::double precision, v_epoch, 0, 0;
            RETURN;
        END IF;
    END IF;
    IF p_principal_want > 0 THEN
        SELECT t.granted, t.wait INTO v_principal, v_wait
        FROM lily_take_tokens(p_tenant, p_kind || ':' || p_name, p_principal_rate, p_principal_capacity,
                              p_principal_want) t;
    END IF;
    IF v_wait = 0 AND p_tenant_want > 0 THEN
        SELECT t.granted, t.wait INTO v_tenant, v_wait
        FROM lily_take_tokens(p_tenant, 'tenant', p_tenant_rate, p_tenant_capacity, p_tenant_want) t;
    END IF;
    RETURN QUERY SELECT CASE WHEN v_wait > 0 THEN 'limited' ELSE v_status END, v_role, v_groups, v_key_name,
        v_wait, v_epoch, v_principal, v_tenant;
END
$$;
