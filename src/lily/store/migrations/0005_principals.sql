-- Principals follow their rows: users get groups and a token cut-off, API keys can be revoked, tenants can
-- be deleted, and every authenticated request is checked against all of it (plus the rate limits) in one
-- function call, so a change takes effect on the next request in every API process.

-- Groups a user belongs to (governance policies match "group:NAME"). A user's tokens carry its
-- sessions_id (claim "sid") and only tokens with the current one are accepted. It is new for every user
-- row (a user deleted and re-created does not inherit the old tokens) and renewed on a password change and
-- on disabling (re-enabling does not revive the tokens of before). Exact, where a cut-off time compared
-- with the token's whole-second iat would not be.
ALTER TABLE users
    ADD COLUMN groups text[] NOT NULL DEFAULT '{}',
    ADD COLUMN sessions_id uuid NOT NULL DEFAULT gen_random_uuid(),
    ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now();

ALTER TABLE api_keys ADD COLUMN revoked_by text;

-- A deleted tenant keeps its rows (nothing is purged), but no token or key of it authenticates again and
-- its id cannot be taken by a new tenant.
ALTER TABLE tenants ADD COLUMN deleted_at timestamptz;

-- Per-tenant and per-principal request budgets (token buckets), counted in PostgreSQL so the limit holds
-- for the whole deployment, not per API process. UNLOGGED: losing them in a crash only refills them, and
-- their updates (one or two per request) write no WAL. The low fillfactor keeps those updates on the page.
CREATE UNLOGGED TABLE rate_buckets (
    tenant_id  text NOT NULL,
    bucket     text NOT NULL,             -- 'tenant', or the principal: 'key:<id>', 'user:<name>'
    tokens     double precision NOT NULL,
    at         timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, bucket)
) WITH (fillfactor = 50);
SELECT lily_protect_tenant_table('rate_buckets');

-- Login attempts per account and per client address, across tenants (an address is no tenant's). Keys
-- are SHA-256 digests, so no user name or address is kept in a table outside row-level security.
CREATE UNLOGGED TABLE login_attempts (
    scope         text NOT NULL CHECK (scope IN ('account', 'address')),
    key           bytea NOT NULL,
    attempts      integer NOT NULL,
    locked_until  timestamptz,
    last_at       timestamptz NOT NULL,
    PRIMARY KEY (scope, key)
) WITH (fillfactor = 50);
-- Counters idle past their window are pruned as attempts go (see lily_login_attempt), oldest first.
CREATE INDEX login_attempts_idle ON login_attempts (last_at);

-- Take one token from a bucket that refills at p_rate per second up to p_capacity. Returns 0 when a token
-- was taken, else the seconds until one is there (nothing is taken then, so a client that keeps asking
-- while refused does not push its own recovery further away). A bucket stores its tokens as of "at",
-- so the usual case is one UPDATE; a refusal reads the bucket once more, a first request inserts it.
CREATE FUNCTION lily_take_token(p_tenant text, p_bucket text, p_rate double precision, p_capacity double precision)
RETURNS double precision
LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := clock_timestamp();
    v_tokens double precision;
BEGIN
    -- One taker of a bucket at a time: the statements below then each see what the previous taker
    -- committed, so concurrent requests can never take more than the bucket holds — including when
    -- the bucket does not exist yet and several requests race to create it.
    PERFORM pg_advisory_xact_lock(hashtextextended(p_tenant || ' ' || p_bucket, 0));
    UPDATE rate_buckets b
    SET tokens = least(p_capacity, b.tokens + greatest(0, extract(epoch FROM v_now - b.at)) * p_rate) - 1,
        at = greatest(b.at, v_now)
    WHERE b.tenant_id = p_tenant AND b.bucket = p_bucket
      AND least(p_capacity, b.tokens + greatest(0, extract(epoch FROM v_now - b.at)) * p_rate) >= 1;
    IF FOUND THEN
        RETURN 0;
    END IF;
    SELECT least(p_capacity, b.tokens + greatest(0, extract(epoch FROM v_now - b.at)) * p_rate) INTO v_tokens
    FROM rate_buckets b WHERE b.tenant_id = p_tenant AND b.bucket = p_bucket;
    IF FOUND THEN
        RETURN (1 - v_tokens) / p_rate;
    END IF;
    INSERT INTO rate_buckets (tenant_id, bucket, tokens, at) VALUES (p_tenant, p_bucket, p_capacity - 1, v_now)
    ON CONFLICT (tenant_id, bucket) DO NOTHING;
    IF FOUND THEN
        RETURN 0;
    END IF;
    -- Another request created the bucket in between: take from it like any other.
    RETURN lily_take_token(p_tenant, p_bucket, p_rate, p_capacity);
END
$$;

-- Everything authentication needs, in one round trip: the tenant exists and is not deleted; the user
-- (enabled, token not older than its cut-off, not logged out) or the API key (secret's hash matches, not
-- revoked); the principal's current role and groups; and one token from the principal's and the
-- tenant's buckets (a rate of 0 or less turns a limit off). p_kind is 'user' (p_name a user name, p_jti
-- and p_sid from the JWT) or 'key' (p_name a key id, p_secret_hash the SHA-256 of its secret).
-- status: 'ok', 'unknown' (no such tenant, user or key, or a wrong secret), 'revoked' (logged out, or
-- of an earlier sessions_id), 'disabled', or 'limited' (retry_after says for how long).
-- Runs as the caller (lily_app), so row-level security applies; call it only outside a transaction.
CREATE FUNCTION lily_authenticate(
    p_tenant text, p_kind text, p_name text, p_jti text, p_sid text, p_secret_hash text,
    p_principal_rate double precision, p_principal_capacity double precision,
    p_tenant_rate double precision, p_tenant_capacity double precision
) RETURNS TABLE (status text, role text, groups text[], key_name text, retry_after double precision)
LANGUAGE plpgsql AS $$
DECLARE
    v_role text;
    v_groups text[] := '{}';
    v_key_name text;
    v_disabled boolean;
    v_sid uuid;
    v_wait double precision := 0;
BEGIN
    PERFORM set_config('lily.tenant_id', p_tenant, true);
    -- Only unlogged tables are written here; never wait for a WAL flush on their account.
    PERFORM set_config('synchronous_commit', 'off', true);
    IF NOT EXISTS (SELECT 1 FROM tenants t WHERE t.tenant_id = p_tenant AND t.deleted_at IS NULL) THEN
        RETURN QUERY SELECT 'unknown'::text, NULL::text, NULL::text[], NULL::text, NULL::double precision;
        RETURN;
    END IF;
    IF p_kind = 'key' THEN
        SELECT k.role, k.name INTO v_role, v_key_name FROM api_keys k
        WHERE k.tenant_id = p_tenant AND k.key_id = p_name AND k.key_hash = p_secret_hash
              AND k.revoked_at IS NULL;
        IF v_role IS NULL THEN
            RETURN QUERY SELECT 'unknown'::text, NULL::text, NULL::text[], NULL::text, NULL::double precision;
            RETURN;
        END IF;
    ELSE
        SELECT u.role, u.groups, u.disabled, u.sessions_id INTO v_role, v_groups, v_disabled, v_sid
        FROM users u WHERE u.tenant_id = p_tenant AND u.username = p_name;
        IF v_role IS NULL THEN
            RETURN QUERY SELECT 'unknown'::text, NULL::text, NULL::text[], NULL::text, NULL::double precision;
            RETURN;
        END IF;
        IF v_disabled THEN
            RETURN QUERY SELECT 'disabled'::text, NULL::text, NULL::text[], NULL::text, NULL::double precision;
            RETURN;
        END IF;
        IF v_sid::text IS DISTINCT FROM p_sid
           OR EXISTS (SELECT 1 FROM revoked_tokens r WHERE r.tenant_id = p_tenant AND r.jti = p_jti) THEN
            RETURN QUERY SELECT 'revoked'::text, NULL::text, NULL::text[], NULL::text, NULL::double precision;
            RETURN;
        END IF;
    END IF;
    -- The principal's bucket first, then the tenant's: one fixed order, so concurrent requests never
    -- deadlock on the two rows.
    IF p_principal_rate > 0 THEN
        v_wait := lily_take_token(p_tenant, p_kind || ':' || p_name, p_principal_rate, p_principal_capacity);
    END IF;
    IF v_wait = 0 AND p_tenant_rate > 0 THEN
        v_wait := lily_take_token(p_tenant, 'tenant', p_tenant_rate, p_tenant_capacity);
    END IF;
    RETURN QUERY SELECT CASE WHEN v_wait > 0 THEN 'limited' ELSE 'ok' END, v_role, v_groups, v_key_name, v_wait;
END
$$;

-- One login attempt against an account's and a client address's counters, counted before the password is
-- checked (so a burst of parallel guesses is counted as it arrives, not after). An attempt while either is
-- locked is refused and not counted: waiting out a lock is all it takes. A counter idle for p_window
-- seconds starts again. From the p_free-th attempt on, each attempt locks its counter for
-- p_base * 2^(attempts - p_free) seconds, at most p_max: growing with the failures, but never a long
-- lock-out of an account someone else is guessing at.
-- Returns 0 when the attempt may go on, else the seconds until it may be tried again.
CREATE FUNCTION lily_login_attempt(
    p_account bytea, p_address bytea, p_free_account integer, p_free_address integer,
    p_base double precision, p_max double precision, p_window double precision
) RETURNS double precision
LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := clock_timestamp();
    v_wait double precision;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    -- Names anyone may try are keys here, so rows come cheap: about one attempt in a hundred clears up
    -- to a hundred counters that have been idle past their window (they would start again anyway).
    IF random() < 0.01 THEN
        DELETE FROM login_attempts WHERE ctid = ANY(ARRAY(
            SELECT ctid FROM login_attempts
            WHERE last_at < v_now - make_interval(secs => p_window) AND coalesce(locked_until, '-infinity') < v_now
            ORDER BY last_at LIMIT 100 FOR UPDATE SKIP LOCKED));
    END IF;
    INSERT INTO login_attempts (scope, key, attempts, locked_until, last_at)
    VALUES ('account', p_account, 0, NULL, v_now), ('address', p_address, 0, NULL, v_now)
    ON CONFLICT (scope, key) DO NOTHING;
    -- Both rows locked, account before address, always: concurrent attempts queue here, never deadlock.
    SELECT coalesce(max(extract(epoch FROM l.locked_until - v_now)), 0) INTO v_wait FROM (
        SELECT a.locked_until FROM login_attempts a
        WHERE (a.scope, a.key) IN (('account', p_account), ('address', p_address))
        ORDER BY a.scope FOR UPDATE
    ) l WHERE l.locked_until > v_now;
    IF v_wait > 0 THEN
        RETURN v_wait;
    END IF;
    UPDATE login_attempts a SET
        attempts = c.attempts,
        last_at = v_now,
        locked_until = CASE WHEN c.attempts >= c.free
                            THEN v_now + make_interval(secs => least(p_max, p_base * power(2, least(c.attempts - c.free, 30))))
                       END
    FROM (
        SELECT b.scope, b.key,
               CASE WHEN b.last_at < v_now - make_interval(secs => p_window) THEN 1 ELSE b.attempts + 1 END AS attempts,
               CASE b.scope WHEN 'account' THEN p_free_account ELSE p_free_address END AS free
        FROM login_attempts b
        WHERE (b.scope, b.key) IN (('account', p_account), ('address', p_address))
    ) c
    WHERE a.scope = c.scope AND a.key = c.key;
    RETURN 0;
END
$$;

-- A login that succeeded: the account starts afresh, and the address gets this attempt back (so many
-- people behind one address who log in correctly never add up to a lock).
CREATE FUNCTION lily_login_succeeded(p_account bytea, p_address bytea, p_free_address integer) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    DELETE FROM login_attempts WHERE scope = 'account' AND key = p_account;
    UPDATE login_attempts a SET attempts = greatest(0, a.attempts - 1),
        locked_until = CASE WHEN a.attempts - 1 >= p_free_address THEN a.locked_until END
    WHERE a.scope = 'address' AND a.key = p_address;
END
$$;
