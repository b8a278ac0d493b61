-- Search with access policies (issue 8): the caller's read rule, compiled to SQL (0008), was compiled
-- again in every transaction, and every page's rows were read back under row-level security, which
-- re-ran the per-row rule on rows the search query had already filtered by the same rule. Measured at
-- 200k assets with 100 policies, those two were a fixed 1-2 ms of every search.
--
-- 1. A policy epoch per tenant, moved in the same transaction as any insert, update or delete of its
--    access policies (a row trigger, so an operator's direct SQL counts too), from one global sequence
--    (an epoch value never comes back, whatever happens to a tenant). The compiled rule is kept per
--    connection under (tenant, role, names, epoch): the epoch is read in the same snapshot as the query
--    that uses the rule, so a policy change applies to the very next search in every process, and to
--    later statements of the transaction that made it.
-- 2. Prefix denials compile to left(qualified_name, n) = ANY (…) per prefix length: hashed in execution,
--    and no per-pattern selectivity estimate when planning (20 LIKE patterns cost 0.1 ms per statement).
-- 3. lily_search_page returns the asset's columns itself, from the query that applied the tenant and the
--    read rule — as counts and facets always did — so a page is no longer read back under RLS.

CREATE SEQUENCE lily_policy_epoch;

CREATE TABLE access_policy_epochs (
    tenant_id  text PRIMARY KEY REFERENCES tenants,
    epoch      bigint NOT NULL
);
INSERT INTO access_policy_epochs (tenant_id, epoch)
SELECT t.tenant_id, nextval('lily_policy_epoch') FROM (SELECT DISTINCT tenant_id FROM access_policies) t;
SELECT lily_protect_tenant_table('access_policy_epochs');
GRANT SELECT ON access_policy_epochs TO lily_search;

-- Runs as the writer, under its row-level security: a policy change is made with lily.tenant_id set to
-- its tenant. A change whose epoch row cannot be written fails, rather than leave compiled rules stale.
CREATE FUNCTION lily_bump_policy_epoch() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    v_tenant text := CASE WHEN TG_OP = 'DELETE' THEN OLD.tenant_id ELSE NEW.tenant_id END;
BEGIN
    INSERT INTO access_policy_epochs AS e (tenant_id, epoch) VALUES (v_tenant, nextval('lily_policy_epoch'))
    ON CONFLICT (tenant_id) DO UPDATE SET epoch = excluded.epoch;
    RETURN NULL;
END
$$;
CREATE TRIGGER access_policies_epoch AFTER INSERT OR UPDATE OR DELETE ON access_policies
    FOR EACH ROW EXECUTE FUNCTION lily_bump_policy_epoch();

-- As 0008, the same rule (the test compares it with RLS), with two changes. It is kept per connection in
-- one of 16 session settings (lily.read_rule_0 … 15, picked by a hash of the key), each holding its key
-- and the text, so a pooled connection serving several callers keeps each one's rule; the key holds the
-- tenant's policy epoch, read here. No epoch row (no policy change since 0015, hence no policy): compiled
-- every time, which is a look-up that finds nothing. No caller or an admin: 'true' at once. And prefixes
-- compile to one left(…) = ANY (…) per length.
CREATE OR REPLACE FUNCTION lily_read_predicate(alias text DEFAULT 'a') RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_role text := coalesce(current_setting('lily.access_role', true), '');
    v_tenant text := current_setting('lily.tenant_id', true);
    v_epoch bigint;
    key text;
    slot text;
    cached text;
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
    IF v_role IN ('', 'admin') THEN
        RETURN 'true';
    END IF;
    SELECT e.epoch INTO v_epoch FROM public.access_policy_epochs e WHERE e.tenant_id = v_tenant;
    IF v_epoch IS NOT NULL THEN
        key := md5(concat_ws(E'\n', v_tenant, v_role, current_setting('lily.access_names', true), alias, v_epoch));
        slot := 'lily.read_rule_' || (hashtext(key) & 15);
        cached := current_setting(slot, true);
        IF starts_with(cached, key || E'\n') THEN
            RETURN substr(cached, 34);
        END IF;
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
        IF cardinality(ids) > 0 THEN
            arms := arms || format('%I.asset_id = ANY (%L::uuid[])', alias, ids);
        END IF;
        -- starts_with(q, p) is left(q, char_length(p)) = p (the database's collation is deterministic).
        arms := arms || ARRAY(
            SELECT format('left(%I.qualified_name, %s) = ANY (%L::text[])', alias, n, array_agg(DISTINCT p ORDER BY p))
            FROM unnest(prefixes) p, char_length(p) n WHERE p IS NOT NULL GROUP BY n ORDER BY n);
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
    IF v_epoch IS NOT NULL THEN
        -- Session-level: a transaction-local value set inside a function with a SET clause is undone when
        -- it returns. An aborted transaction undoes it as well.
        PERFORM set_config(slot, key || E'\n' || result, false);
    END IF;
    RETURN result;
END
$$;

-- As 0006, returning the page's asset columns as well (see 3. above).
DROP FUNCTION lily_search_page(jsonb, text, jsonb, integer, integer);
CREATE FUNCTION lily_search_page(f jsonb, sort text, after jsonb, lim integer, candidates integer)
RETURNS TABLE (asset_id uuid, score float8, sort_name text, sort_updated timestamptz, ranked integer,
               qualified_name text, type text, name text, description text, owners text[], tags text[],
               attributes jsonb, placeholder boolean, source text, has_active_source boolean, version integer,
               created_at timestamptz, updated_at timestamptz, deleted_at timestamptz, classifications text[])
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET enable_seqscan = off AS $$
DECLARE
    w text := public.lily_search_where(f);
    q text := nullif(btrim(f->>'q'), '');
    lq text := lower(nullif(btrim(f->>'q'), ''));
    cols text := 'a.qualified_name, a.type, a.name, a.description, a.owners, a.tags, a.attributes, a.placeholder,'
                 ' a.source, a.has_active_source, a.version, a.created_at, a.updated_at, a.deleted_at,'
                 ' a.classifications';
    tsq text;
    score text;
    keyset text := '';
BEGIN
    IF w IS NULL THEN
        RETURN;
    END IF;
    lim := least(greatest(coalesce(lim, 1), 1), 1001);
    candidates := least(greatest(coalesce(candidates, 1), 1), 100000);
    IF q IS NOT NULL AND sort IS DISTINCT FROM 'relevance' THEN
        w := w || ' AND (' || array_to_string(public.lily_search_arms(w, q), ' OR ') || ')';
    END IF;
    IF sort = 'relevance' AND q IS NOT NULL THEN
        tsq := format('(websearch_to_tsquery(''simple'', %1$L) || websearch_to_tsquery(''english'', %1$L))', q);
        score := format(
            'CASE WHEN lower(a.name) = %1$L THEN 3 WHEN lower(a.name) LIKE %2$L THEN 2'
            ' WHEN a.search_doc @@ %3$s THEN 1 ELSE 0 END'
            ' + CASE WHEN a.search_doc @@ %3$s THEN ts_rank(''{0.05, 0.2, 0.5, 1.0}'', a.search_doc, %3$s, 32)'
            ' ELSE 0.99 * public.similarity(lower(a.name), %1$L) END',
            lq, public.lily_search_like_prefix(lq), tsq);
        IF after IS NOT NULL THEN
            keyset := format(' WHERE (m.score, m.asset_id) < (%L::float8, %L::uuid)', after->>0, after->>1);
        END IF;
        -- The candidates' rows are read again by primary key (tenant included) to be scored, and the
        -- page's once more for their columns (kept out of the candidates, which are sorted).
        RETURN QUERY EXECUTE format(
            'WITH ids AS MATERIALIZED (%1$s),'
            ' c AS MATERIALIZED (SELECT a.asset_id, a.name, a.updated_at, (%2$s)::float8 AS score'
            '   FROM ids JOIN public.assets a ON a.tenant_id = %3$L AND a.asset_id = ids.asset_id),'
            ' n AS (SELECT count(*)::integer AS ranked FROM c),'
            ' top AS (SELECT m.asset_id, m.score, m.name, m.updated_at FROM c m%4$s'
            '   ORDER BY m.score DESC, m.asset_id DESC LIMIT %5$s)'
            ' SELECT t.asset_id, t.score, t.name, t.updated_at, n.ranked, %6$s'
            ' FROM top t JOIN public.assets a ON a.tenant_id = %3$L AND a.asset_id = t.asset_id, n'
            ' ORDER BY t.score DESC, t.asset_id DESC',
            public.lily_search_ids(f, candidates), score, current_setting('lily.tenant_id'), keyset, lim, cols);
    ELSIF sort = 'updated_at' THEN
        IF after IS NOT NULL THEN
            keyset := format(' AND (a.updated_at, a.asset_id) < (%L::timestamptz, %L::uuid)', after->>0, after->>1);
        END IF;
        RETURN QUERY EXECUTE format(
            'SELECT a.asset_id, NULL::float8, a.name, a.updated_at, NULL::integer, %s FROM public.assets a'
            ' WHERE %s%s ORDER BY a.updated_at DESC, a.asset_id DESC LIMIT %s', cols, w, keyset, lim);
    ELSE
        IF after IS NOT NULL THEN
            keyset := format(' AND (a.name COLLATE "C", a.asset_id) > (%L COLLATE "C", %L::uuid)', after->>0, after->>1);
        END IF;
        RETURN QUERY EXECUTE format(
            'SELECT a.asset_id, NULL::float8, a.name, a.updated_at, NULL::integer, %s FROM public.assets a'
            ' WHERE %s%s ORDER BY a.name COLLATE "C", a.asset_id LIMIT %s', cols, w, keyset, lim);
    END IF;
END
$$;
ALTER FUNCTION lily_search_page(jsonb, text, jsonb, integer, integer) OWNER TO lily_search;
REVOKE ALL ON FUNCTION lily_search_page(jsonb, text, jsonb, integer, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lily_search_page(jsonb, text, jsonb, integer, integer) TO lily_app;
