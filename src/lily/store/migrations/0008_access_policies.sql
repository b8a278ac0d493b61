-- Access policies: per-asset allow/deny of read, write and govern for principals, on top of the role
-- baseline (viewer reads, editor writes, steward governs; admin is never locked out).
--
-- Reads are enforced by the database. An API transaction sets, next to lily.tenant_id, the caller's role
-- (lily.access_role) and the names policies match (lily.access_names, a text[] literal: everyone, role:R,
-- user:U, group:G, apikey:K). A RESTRICTIVE row-level-security policy on assets for lily_app then hides
-- every row a deny-read policy of the caller selects, so each read (GET, history, audit, lineage nodes,
-- listings, bulk errors, impact) treats a denied asset exactly like a missing one. The caller's deny-read
-- selectors are computed once per statement (an uncorrelated sub-select, i.e. an InitPlan), and with none
-- of them no per-row function runs at all. With no lily.access_role set (the pipeline, the scheduler,
-- admin commands: no caller) nothing is hidden; lily_pipeline is not subject to the policy at all.
--
-- Search runs in SECURITY DEFINER functions that bypass RLS (0006): lily_search_where now appends the
-- same rule compiled to a literal predicate (lily_read_predicate), one arm per criterion, so counts,
-- facets and pages exclude denied assets inside the query that reads the indexes.
--
-- Writes are checked by the API when it accepts them (the pipeline applies what was accepted), with the
-- same selectors (lily.domain.access mirrors lily_access_selects).

-- Normally added by 0007 (classifications); kept here so the selector's column always exists.
ALTER TABLE assets ADD COLUMN IF NOT EXISTS classifications text[] NOT NULL DEFAULT '{}';

CREATE TABLE access_policies (
    tenant_id              text NOT NULL REFERENCES tenants,
    policy_id              uuid NOT NULL DEFAULT gen_random_uuid(),
    name                   text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    description            text CHECK (length(description) <= 2000),
    effect                 text NOT NULL CHECK (effect IN ('allow', 'deny')),
    actions                text[] NOT NULL CHECK (cardinality(actions) > 0 AND actions <@ '{read,write,govern}'),
    principals             text[] NOT NULL CHECK (cardinality(principals) > 0),
    except_principals      text[] NOT NULL DEFAULT '{}',
    -- The selector: every criterion given (non-NULL) must match; within a list, any element.
    asset_ids              uuid[],
    qualified_name_prefix  text,
    types                  text[],
    tags                   text[],
    classifications        text[],
    version                integer NOT NULL DEFAULT 1,
    created_by             text NOT NULL,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_by             text NOT NULL,
    updated_at             timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, policy_id),
    UNIQUE (tenant_id, name),
    CONSTRAINT access_policies_selects CHECK (
        num_nonnulls(asset_ids, qualified_name_prefix, types, tags, classifications) > 0)
);
SELECT lily_protect_tenant_table('access_policies');

-- One selector of a policy, as the row-level rule carries it.
CREATE TYPE lily_access_selector AS (
    asset_ids              uuid[],
    qualified_name_prefix  text,
    types                  text[],
    tags                   text[],
    classifications        text[]
);

-- The caller's names (lily.access_names), empty when unset.
CREATE FUNCTION lily_access_names() RETURNS text[]
LANGUAGE sql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(nullif(current_setting('lily.access_names', true), ''), '{}')::text[]
$$;

-- The selectors of the deny-read policies that apply to the caller, or NULL when nothing is hidden from
-- it: no caller set (internal work) or an admin. Reads the policies of lily.tenant_id only, also when run
-- by lily_search (which bypasses RLS).
CREATE FUNCTION lily_read_denials() RETURNS lily_access_selector[]
LANGUAGE plpgsql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_role text := coalesce(current_setting('lily.access_role', true), '');
    v_names text[];
    found public.lily_access_selector[];
BEGIN
    IF v_role IN ('', 'admin') THEN
        RETURN NULL;
    END IF;
    -- plpgsql, not SQL: its query's plan is kept for the session (a SQL function with a SET clause is
    -- planned on every call, which cost more than the scan of a tenant's policies).
    v_names := public.lily_access_names();
    SELECT array_agg(ROW(p.asset_ids, p.qualified_name_prefix, p.types, p.tags, p.classifications)
                     ::public.lily_access_selector)
    INTO found
    FROM public.access_policies p
    WHERE p.tenant_id = current_setting('lily.tenant_id', true)
      AND p.effect = 'deny' AND 'read' = ANY (p.actions)
      AND p.principals && v_names
      AND NOT p.except_principals && v_names;
    RETURN coalesce(found, '{}');
END
$$;

-- Whether a selector picks the asset with these columns. lily.domain.access.selects is the same rule.
CREATE FUNCTION lily_access_selects(
    s lily_access_selector, p_asset_id uuid, p_qualified_name text, p_type text, p_tags text[], p_classifications text[]
) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT (s.asset_ids IS NULL OR p_asset_id = ANY (s.asset_ids))
       AND (s.qualified_name_prefix IS NULL OR starts_with(p_qualified_name, s.qualified_name_prefix))
       AND (s.types IS NULL OR p_type = ANY (s.types))
       AND (s.tags IS NULL OR coalesce(p_tags, '{}') && s.tags)
       AND (s.classifications IS NULL OR coalesce(p_classifications, '{}') && s.classifications)
$$;

-- Whether no selector of ``denials`` picks the asset (NULL denials: nothing is hidden).
CREATE FUNCTION lily_asset_undenied(
    denials lily_access_selector[], p_asset_id uuid, p_qualified_name text, p_type text, p_tags text[],
    p_classifications text[]
) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT denials IS NULL OR NOT EXISTS (
        SELECT 1 FROM unnest(denials) s
        WHERE public.lily_access_selects(s, p_asset_id, p_qualified_name, p_type, p_tags, p_classifications))
$$;

-- Whether the caller (the transaction's settings) may read the asset with these columns; for code that
-- bypasses RLS and must apply the rule itself.
CREATE FUNCTION lily_asset_readable(
    p_asset_id uuid, p_qualified_name text, p_type text, p_tags text[], p_classifications text[]
) RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT public.lily_asset_undenied(public.lily_read_denials(), p_asset_id, p_qualified_name, p_type, p_tags,
                                      p_classifications)
$$;

-- The same rule as SQL text over the row alias ``alias``, for generated queries (search): 'true' when
-- nothing is hidden, else NOT (…) with the selectors as literals, so the planner sees plain predicates.
-- Kept short, as planning an OR of many arms costs more than running it: selectors of a single criterion
-- are merged per criterion (100 "deny tag x" policies make one &&), and selectors alike but for their
-- tags make one arm. Computed once per transaction and caller (a search asks for it several times):
-- the text is kept in a setting keyed by the transaction's start, tenant, role, names and alias. A
-- session-level one: a transaction-local value set inside a function with a SET clause (this one and
-- the search functions) is undone when the function returns. Policies changed earlier in the same
-- transaction are not seen by later searches of it (the API never does both in one transaction).
CREATE FUNCTION lily_read_predicate(alias text DEFAULT 'a') RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    key text := md5(concat_ws(E'\n', transaction_timestamp(), current_setting('lily.tenant_id', true),
                              current_setting('lily.access_role', true), current_setting('lily.access_names', true),
                              alias));
    denials public.lily_access_selector[];
    s public.lily_access_selector;
    arms text[] := '{}';
    parts text[];
    ids uuid[] := '{}';
    prefixes text[] := '{}';
    kinds text[] := '{}';
    labels text[] := '{}';
    classes text[] := '{}';
    result text;
BEGIN
    IF current_setting('lily.read_predicate_key', true) = key THEN
        RETURN current_setting('lily.read_predicate', true);
    END IF;
    denials := public.lily_read_denials();
    IF denials IS NULL OR cardinality(denials) = 0 THEN
        result := 'true';
    ELSE
        FOREACH s IN ARRAY denials LOOP
            IF num_nonnulls(s.asset_ids, s.qualified_name_prefix, s.types, s.tags, s.classifications) = 1 THEN
                ids := ids || coalesce(s.asset_ids, '{}');
                prefixes := prefixes || s.qualified_name_prefix;
                kinds := kinds || coalesce(s.types, '{}');
                labels := labels || coalesce(s.tags, '{}');
                classes := classes || coalesce(s.classifications, '{}');
            END IF;
        END LOOP;
        FOR s IN
            SELECT d.asset_ids, d.qualified_name_prefix, d.types,
                   CASE WHEN bool_and(d.tags IS NOT NULL) THEN array_agg(DISTINCT t ORDER BY t) END,
                   d.classifications
            FROM unnest(denials) d LEFT JOIN LATERAL unnest(d.tags) t ON true
            WHERE num_nonnulls(d.asset_ids, d.qualified_name_prefix, d.types, d.tags, d.classifications) > 1
            GROUP BY d.asset_ids, d.qualified_name_prefix, d.types, d.classifications, d.tags IS NULL
        LOOP
            -- Implied by a merged single-criterion arm (e.g. its tags are all denied on their own): skip it.
            CONTINUE WHEN s.asset_ids <@ ids OR s.types <@ kinds OR s.tags <@ labels OR s.classifications <@ classes
                OR s.qualified_name_prefix = ANY (prefixes);
            parts := '{}';
            IF s.asset_ids IS NOT NULL THEN
                parts := parts || format('%I.asset_id = ANY (%L::uuid[])', alias, s.asset_ids);
            END IF;
            IF s.qualified_name_prefix IS NOT NULL THEN
                parts := parts || format('starts_with(%I.qualified_name, %L)', alias, s.qualified_name_prefix);
            END IF;
            IF s.types IS NOT NULL THEN
                parts := parts || format('%I.type = ANY (%L::text[])', alias, s.types);
            END IF;
            IF s.tags IS NOT NULL THEN
                parts := parts || format('%I.tags && %L::text[]', alias, s.tags);
            END IF;
            IF s.classifications IS NOT NULL THEN
                parts := parts || format('coalesce(%I.classifications, ''{}'') && %L::text[]', alias,
                                         s.classifications);
            END IF;
            arms := arms || ('(' || array_to_string(parts, ' AND ') || ')');
        END LOOP;
        prefixes := array_remove(prefixes, NULL);
        IF cardinality(ids) > 0 THEN
            arms := arms || format('%I.asset_id = ANY (%L::uuid[])', alias, ids);
        END IF;
        IF cardinality(prefixes) > 0 THEN
            arms := arms || format('%I.qualified_name LIKE ANY (%L::text[])', alias,
                ARRAY(SELECT replace(replace(replace(p, '\', '\\'), '%', '\%'), '_', '\_') || '%'
                      FROM unnest(prefixes) p));
        END IF;
        IF cardinality(kinds) > 0 THEN
            arms := arms || format('%I.type = ANY (%L::text[])', alias, kinds);
        END IF;
        IF cardinality(labels) > 0 THEN
            arms := arms || format('%I.tags && %L::text[]', alias, labels);
        END IF;
        IF cardinality(classes) > 0 THEN
            arms := arms || format('coalesce(%I.classifications, ''{}'') && %L::text[]', alias, classes);
        END IF;
        result := 'NOT (' || array_to_string(arms, ' OR ') || ')';
    END IF;
    PERFORM set_config('lily.read_predicate', result, false), set_config('lily.read_predicate_key', key, false);
    RETURN result;
END
$$;

-- Every read of assets by the application role hides what the caller may not read. RESTRICTIVE: it is
-- ANDed with the tenant policy. FOR SELECT covers the rows UPDATE/DELETE/RETURNING read as well; the API
-- never writes assets itself (the pipeline does, as lily_pipeline or lily_app without a caller set).
CREATE POLICY access_read ON assets AS RESTRICTIVE FOR SELECT TO lily_app
USING (
    (SELECT public.lily_read_denials()) IS NULL
    OR cardinality((SELECT public.lily_read_denials())) = 0
    OR public.lily_asset_undenied((SELECT public.lily_read_denials()), asset_id, qualified_name, type, tags,
                                  classifications)
);

-- Search (0006): the filters' WHERE keeps its body under a new name; lily_search_where, which every
-- search path (pages, the candidate ids, counts, facets, the typo fallback's probe) calls, now adds the
-- caller's read rule to it.
ALTER FUNCTION lily_search_where(jsonb) RENAME TO lily_search_filters;

CREATE FUNCTION lily_search_where(f jsonb) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    w text := public.lily_search_filters(f);
    readable text;
BEGIN
    IF w IS NULL THEN
        RETURN NULL;
    END IF;
    readable := public.lily_read_predicate('a');
    IF readable = 'true' THEN
        RETURN w;
    END IF;
    RETURN w || ' AND ' || readable;
END
$$;

GRANT SELECT ON access_policies TO lily_search;
ALTER FUNCTION lily_search_where(jsonb) OWNER TO lily_search;
REVOKE ALL ON FUNCTION lily_search_where(jsonb) FROM PUBLIC;

-- Which of these names are assets of the tenant that the caller may not read. Writes name assets by
-- qualified name, and the API must refuse a write to a hidden asset without showing whether it exists
-- (the caller's own RLS-filtered reads cannot see it). Owned by lily_search, which may read assets.
CREATE FUNCTION lily_hidden_names(p_names text[]) RETURNS SETOF text
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT a.qualified_name FROM public.assets a
    WHERE a.tenant_id = current_setting('lily.tenant_id', true) AND a.qualified_name = ANY (p_names)
      AND NOT public.lily_asset_readable(a.asset_id, a.qualified_name, a.type, a.tags, a.classifications)
$$;
ALTER FUNCTION lily_hidden_names(text[]) OWNER TO lily_search;
REVOKE ALL ON FUNCTION lily_hidden_names(text[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lily_hidden_names(text[]) TO lily_app;

-- Classifications (0007) name their asset: the personal-data inventory lists them across assets, so a row
-- of an asset the caller may not read is hidden with it. The EXISTS reads assets under the caller's
-- rules (the policy above); for internal work (no caller set) it only asks that the asset exists.
CREATE POLICY access_read ON classifications AS RESTRICTIVE FOR SELECT TO lily_app
USING (
    (SELECT public.lily_read_denials()) IS NULL
    OR EXISTS (SELECT 1 FROM public.assets a
               WHERE a.tenant_id = classifications.tenant_id AND a.asset_id = classifications.asset_id)
);
