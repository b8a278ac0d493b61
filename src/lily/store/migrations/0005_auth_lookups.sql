-- Authentication runs on every request, so its reads take one round trip: each function sets the tenant
-- and then reads, as two statements inside one call (one implicit transaction when the caller is in
-- autocommit). They run as the caller (lily_app), not as their owner: row-level security applies as
-- for any query. Call them only outside a transaction, since they switch the transaction's tenant.

CREATE FUNCTION lily_auth_api_key(p_tenant text, p_key_id text)
RETURNS TABLE (key_id text, name text, key_hash text, role text)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('lily.tenant_id', p_tenant, true);
    RETURN QUERY
        SELECT k.key_id, k.name, k.key_hash, k.role FROM api_keys k
        WHERE k.tenant_id = p_tenant AND k.key_id = p_key_id AND k.revoked_at IS NULL;
END
$$;

CREATE FUNCTION lily_auth_token_revoked(p_tenant text, p_jti text) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('lily.tenant_id', p_tenant, true);
    RETURN EXISTS (SELECT 1 FROM revoked_tokens r WHERE r.tenant_id = p_tenant AND r.jti = p_jti);
END
$$;
