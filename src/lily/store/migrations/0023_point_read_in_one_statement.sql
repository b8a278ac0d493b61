-- A point read (GET /metadata/{id}) in one statement (issue 11). It was a pipeline of four: the settings,
-- the tenant's auth epoch, the asset, its history. On loopback TCP each statement of a pipeline is a send
-- of its own, and the pipeline's round trip was the largest part of the API process's CPU per read.
--
-- Run as the caller (its tenant, role and names: the read rule of 0008 applies), outside any transaction.
-- The first row is always there: the tenant's auth epoch (NULL once the tenant is deleted) and the asset's
-- columns, in the order of lily.domain.assets.Asset (NULL when the caller sees no such asset). The rows
-- after it are the page of history, newest first, and only when the asset was found: asset_versions has
-- no read rule of its own, so the history of an asset the caller may not read is never returned.
-- One result set of one shape, so every value keeps its type (a JSON document would turn the uuids and
-- timestamps into strings, for the API to parse back).
CREATE FUNCTION lily_read_asset(
    p_tenant text, p_role text, p_names text, p_asset_id uuid, p_before integer, p_limit integer
) RETURNS TABLE (
    auth_epoch bigint,
    asset_id uuid, qualified_name text, type text, name text, description text, owners text[], tags text[],
    attributes jsonb, placeholder boolean, source text, has_active_source boolean, version integer,
    created_at timestamptz, updated_at timestamptz, deleted_at timestamptz, classifications text[],
    h_version integer, h_action text, h_changes jsonb, h_snapshot jsonb, h_actor text, h_request_id text,
    h_event_id uuid, h_origin jsonb, h_changed_at timestamptz
)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    PERFORM set_config('transaction_read_only', 'on', true), set_config('lily.tenant_id', p_tenant, true);
    IF p_role IS NOT NULL THEN
        PERFORM set_config('lily.access_role', p_role, true), set_config('lily.access_names', p_names, true);
    END IF;
    -- Into the output columns, which RETURN NEXT then sends as the first row.
    SELECT t.auth_epoch,
           a.asset_id, a.qualified_name, a.type, a.name, a.description, a.owners, a.tags, a.attributes,
           a.placeholder, a.source, a.has_active_source, a.version, a.created_at, a.updated_at, a.deleted_at,
           a.classifications
    INTO auth_epoch,
         asset_id, qualified_name, type, name, description, owners, tags, attributes,
         placeholder, source, has_active_source, version, created_at, updated_at, deleted_at,
         classifications
    FROM (SELECT) AS one
    LEFT JOIN public.tenants t ON t.tenant_id = p_tenant AND t.deleted_at IS NULL
    LEFT JOIN public.assets a ON a.tenant_id = p_tenant AND a.asset_id = p_asset_id;
    RETURN NEXT;
    IF asset_id IS NULL THEN
        RETURN;
    END IF;
    RETURN QUERY
    SELECT NULL::bigint,
           NULL::uuid, NULL::text, NULL::text, NULL::text, NULL::text, NULL::text[], NULL::text[], NULL::jsonb,
           NULL::boolean, NULL::text, NULL::boolean, NULL::integer, NULL::timestamptz, NULL::timestamptz,
           NULL::timestamptz, NULL::text[],
           v.version, v.action, v.changes, v.snapshot, v.actor, v.request_id, v.event_id, v.origin, v.changed_at
    FROM public.asset_versions v
    WHERE v.tenant_id = p_tenant AND v.asset_id = p_asset_id AND v.version < p_before
    ORDER BY v.version DESC
    LIMIT p_limit;
END
$$;
