-- Search that uses its indexes, with isolation still enforced by the database.
--
-- Under FORCE ROW LEVEL SECURITY the planner must evaluate the tenant policy before any operator that is
-- not LEAKPROOF, and the operators search needs (@@, @>, LIKE, pg_trgm's %) are not: every search was a
-- sequential scan of the tenant. Search therefore runs in SECURITY DEFINER functions owned by lily_search,
-- a NOLOGIN role made only for them that bypasses RLS and may only SELECT from assets. The functions read
-- the tenant from the transaction-local setting lily.tenant_id — the same setting the RLS policy reads, so
-- the trust is unchanged — and take no tenant argument; with no tenant set they answer nothing. Every
-- filter value reaches the generated SQL through format('%L'), every identifier and sort from a fixed list.
--
-- pg_trgm: CREATE EXTENSION needs a superuser (or a trusted-extension owner); the migrator runs as the
-- login role, a superuser in the embedded server. On a managed server, create it beforehand.
CREATE EXTENSION IF NOT EXISTS pg_trgm WITH SCHEMA public;

DO $$
BEGIN
    CREATE ROLE lily_search NOLOGIN BYPASSRLS NOINHERIT;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END
$$;
GRANT USAGE ON SCHEMA public TO lily_search;
GRANT SELECT ON assets TO lily_search;

-- Field weights: name (A) > qualified name (B) > column names (C) > description and tags (D). The
-- description is indexed twice: stemmed ('english', so "events" finds "event") and exact ('simple');
-- identifiers only exact, split at punctuation as well as whole. A description hit matches both halves
-- of the query (stemmed and exact) and so ranks above a tag hit, which matches only the exact half; the
-- rank weights (D 0.05, C 0.2, B 0.5, A 1) keep a double D hit below one C hit.
DROP INDEX assets_search;
ALTER TABLE assets DROP COLUMN search;
ALTER TABLE assets ADD COLUMN search_doc tsvector GENERATED ALWAYS AS (
    setweight(to_tsvector('simple', name) ||
              to_tsvector('simple', regexp_replace(name, '[^[:alnum:]]+', ' ', 'g')), 'A') ||
    setweight(to_tsvector('simple', regexp_replace(qualified_name, '[^[:alnum:]]+', ' ', 'g')), 'B') ||
    setweight(jsonb_to_tsvector('simple', jsonb_path_query_array(attributes, '$.columns[*].name'), '["string"]'), 'C') ||
    setweight(to_tsvector('english', coalesce(description, '')) ||
              to_tsvector('simple', coalesce(description, '')) ||
              array_to_tsvector(tags), 'D')
) STORED;

-- Live rows only: search never shows a deleted asset. No GIN pending list (fastupdate): every search
-- would scan it linearly, and the planner, costing it, shuns the index until a vacuum flushes it.
CREATE INDEX assets_search_doc ON assets USING gin (search_doc) WITH (fastupdate = off) WHERE deleted_at IS NULL;
CREATE INDEX assets_name_trgm ON assets USING gin (lower(name) public.gin_trgm_ops) WITH (fastupdate = off)
    WHERE deleted_at IS NULL;
CREATE INDEX assets_name_prefix ON assets (tenant_id, lower(name) text_pattern_ops) WHERE deleted_at IS NULL;
CREATE INDEX assets_by_name ON assets (tenant_id, name COLLATE "C", asset_id) WHERE deleted_at IS NULL;
CREATE INDEX assets_by_updated ON assets (tenant_id, updated_at, asset_id) WHERE deleted_at IS NULL;
CREATE INDEX assets_qn_prefix ON assets (tenant_id, qualified_name text_pattern_ops) WHERE deleted_at IS NULL;
CREATE INDEX assets_owners ON assets USING gin (owners) WITH (fastupdate = off) WHERE deleted_at IS NULL;
ALTER INDEX assets_tags SET (fastupdate = off);

-- 'abc' -> 'abc%', with LIKE's own metacharacters escaped.
CREATE FUNCTION lily_search_like_prefix(p text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT SET search_path = pg_catalog, pg_temp AS $$
    SELECT replace(replace(replace(p, '\', '\\'), '%', '\%'), '_', '\_') || '%'
$$;

-- The WHERE clause of a filter document, without q, tenant included (from the setting, never from the
-- document). NULL when no tenant is set. Keys: types, tags, owners, sources, qualified_name,
-- qualified_name_prefix, updated_since; unknown keys are ignored.
CREATE FUNCTION lily_search_where(f jsonb) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    tenant text := nullif(current_setting('lily.tenant_id', true), '');
    w text;
BEGIN
    IF tenant IS NULL THEN
        RETURN NULL;
    END IF;
    w := format('a.tenant_id = %L AND a.deleted_at IS NULL', tenant);
    IF jsonb_typeof(f->'types') = 'array' AND jsonb_array_length(f->'types') > 0 THEN
        w := w || format(' AND a.type = ANY(%L::text[])', ARRAY(SELECT jsonb_array_elements_text(f->'types')));
    END IF;
    IF jsonb_typeof(f->'tags') = 'array' AND jsonb_array_length(f->'tags') > 0 THEN
        w := w || format(' AND a.tags @> %L::text[]', ARRAY(SELECT jsonb_array_elements_text(f->'tags')));
    END IF;
    IF jsonb_typeof(f->'owners') = 'array' AND jsonb_array_length(f->'owners') > 0 THEN
        w := w || format(' AND a.owners && %L::text[]', ARRAY(SELECT jsonb_array_elements_text(f->'owners')));
    END IF;
    IF jsonb_typeof(f->'sources') = 'array' AND jsonb_array_length(f->'sources') > 0 THEN
        w := w || format(' AND a.source = ANY(%L::text[])', ARRAY(SELECT jsonb_array_elements_text(f->'sources')));
    END IF;
    IF f->>'qualified_name' IS NOT NULL THEN
        w := w || format(' AND a.qualified_name = %L', f->>'qualified_name');
    END IF;
    IF nullif(f->>'qualified_name_prefix', '') IS NOT NULL THEN
        w := w || format(' AND a.qualified_name LIKE %L', public.lily_search_like_prefix(f->>'qualified_name_prefix'));
    END IF;
    IF f->>'updated_since' IS NOT NULL THEN
        w := w || format(' AND a.updated_at >= %L::timestamptz', (f->>'updated_since')::timestamptz);
    END IF;
    RETURN w;
END
$$;

-- The ways a row matches q, one predicate each, so each can use its own index (an OR of them makes the
-- planner fall back to the tenant's whole range): full text and name prefix; and, only when neither finds
-- anything, a misspelt name (trigram similarity) — for one word of three characters or more, as
-- similarity against several words matches too loosely. The typo arm is a fallback because a trigram
-- scan of a short word visits a large share of the names: it would cost every query that tens of ms.
-- ``w`` is the WHERE clause of lily_search_where.
CREATE FUNCTION lily_search_arms(w text, q text) RETURNS text[]
LANGUAGE plpgsql STABLE STRICT SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    arms text[] := ARRAY[
        format('a.search_doc @@ (websearch_to_tsquery(''simple'', %1$L) || websearch_to_tsquery(''english'', %1$L))', q),
        format('lower(a.name) LIKE %L', public.lily_search_like_prefix(lower(q)))];
    found boolean;
BEGIN
    IF q ~ '\s' OR length(q) < 3 THEN
        RETURN arms;
    END IF;
    EXECUTE format('SELECT EXISTS (SELECT 1 FROM public.assets a WHERE %1$s AND %2$s)'
                   ' OR EXISTS (SELECT 1 FROM public.assets a WHERE %1$s AND %3$s)', w, arms[1], arms[2])
        INTO found;
    IF found THEN
        RETURN arms;
    END IF;
    RETURN ARRAY[format('lower(a.name) OPERATOR(public.%%) %L', lower(q))];
END
$$;

-- SQL for the matching rows' ``cols`` (asset_id first), at most ``per_arm`` from each way of matching
-- (so more than ``per_arm`` in all whenever more than ``per_arm`` match). ``cols`` comes from the
-- functions below, never from a caller.
CREATE FUNCTION lily_search_ids(f jsonb, per_arm integer, cols text DEFAULT 'a.asset_id') RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    w text := public.lily_search_where(f);
    q text := nullif(btrim(f->>'q'), '');
BEGIN
    IF w IS NULL THEN
        RETURN NULL;
    END IF;
    IF q IS NULL THEN
        RETURN format('SELECT %s FROM public.assets a WHERE %s LIMIT %s', cols, w, per_arm);
    END IF;
    RETURN (SELECT string_agg(format('(SELECT %s FROM public.assets a WHERE %s AND %s LIMIT %s)', cols, w, arm, per_arm),
                              ' UNION ')
            FROM unnest(public.lily_search_arms(w, q)) arm);
END
$$;

-- One page of asset ids in the order asked for, after the keyset position ``after`` ([key, asset_id] of
-- the last row seen, or NULL). Sorts: 'relevance' (needs q; tiers exact name 3, name prefix 2, text
-- match 1 plus its weighted rank, typo matches their trigram similarity), 'name', 'updated_at'.
-- Relevance ranks a bounded candidate set, up to ``candidates`` rows from each way of matching (every
-- exact name is a name prefix, so exact names are always among them); ``ranked`` says how many were
-- ranked, so the caller can say when the bound cut in. The name and updated_at sorts walk their index
-- from the keyset position: no page redoes the pages before it.
CREATE FUNCTION lily_search_page(f jsonb, sort text, after jsonb, lim integer, candidates integer)
RETURNS TABLE (asset_id uuid, score float8, sort_name text, sort_updated timestamptz, ranked integer)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    w text := public.lily_search_where(f);
    q text := nullif(btrim(f->>'q'), '');
    lq text := lower(nullif(btrim(f->>'q'), ''));
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
        -- The candidates' rows are read again by primary key (tenant included) to be scored.
        RETURN QUERY EXECUTE format(
            'WITH ids AS MATERIALIZED (%1$s),'
            ' c AS MATERIALIZED (SELECT a.asset_id, a.name, a.updated_at, (%2$s)::float8 AS score'
            '   FROM ids JOIN public.assets a ON a.tenant_id = %3$L AND a.asset_id = ids.asset_id),'
            ' n AS (SELECT count(*)::integer AS ranked FROM c)'
            ' SELECT m.asset_id, m.score, m.name, m.updated_at, n.ranked FROM c m, n%4$s'
            ' ORDER BY m.score DESC, m.asset_id DESC LIMIT %5$s',
            public.lily_search_ids(f, candidates), score, current_setting('lily.tenant_id'), keyset, lim);
    ELSIF sort = 'updated_at' THEN
        IF after IS NOT NULL THEN
            keyset := format(' AND (a.updated_at, a.asset_id) < (%L::timestamptz, %L::uuid)', after->>0, after->>1);
        END IF;
        RETURN QUERY EXECUTE format(
            'SELECT a.asset_id, NULL::float8, a.name, a.updated_at, NULL::integer FROM public.assets a'
            ' WHERE %s%s ORDER BY a.updated_at DESC, a.asset_id DESC LIMIT %s', w, keyset, lim);
    ELSE
        IF after IS NOT NULL THEN
            keyset := format(' AND (a.name COLLATE "C", a.asset_id) > (%L COLLATE "C", %L::uuid)', after->>0, after->>1);
        END IF;
        RETURN QUERY EXECUTE format(
            'SELECT a.asset_id, NULL::float8, a.name, a.updated_at, NULL::integer FROM public.assets a'
            ' WHERE %s%s ORDER BY a.name COLLATE "C", a.asset_id LIMIT %s', w, keyset, lim);
    END IF;
END
$$;

-- How many rows match, counted up to ``bound`` + 1 over the caller's own rows (never planner statistics,
-- which span tenants). A result above ``bound`` means "more than bound".
CREATE FUNCTION lily_search_count(f jsonb, bound integer) RETURNS integer
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ids text;
    n integer;
BEGIN
    bound := least(greatest(coalesce(bound, 0), 0), 1000000);
    ids := public.lily_search_ids(f, bound + 1);
    IF ids IS NULL THEN
        RETURN 0;
    END IF;
    EXECUTE format('SELECT count(*)::integer FROM (%s) s', ids) INTO n;
    RETURN least(n, bound + 1);
END
$$;

-- The top ``top`` values of each facet asked for (type, tag, owner, source) with their counts, all
-- counted in one pass over at most ``bound`` matching rows; ``sampled`` is the number of rows counted
-- (bound + 1 when cut off). The facet columns are read by the matching scans themselves.
CREATE FUNCTION lily_search_facets(f jsonb, facets text[], top integer, bound integer)
RETURNS TABLE (facet text, value text, n bigint, sampled integer)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ids text;
    parts text[] := '{}';
    name text;
BEGIN
    FOREACH name IN ARRAY coalesce(facets, '{}') LOOP
        parts := parts || CASE name
            WHEN 'type' THEN 'SELECT ''type'', s.type FROM s'
            WHEN 'tag' THEN 'SELECT ''tag'', t FROM s, unnest(s.tags) t'
            WHEN 'owner' THEN 'SELECT ''owner'', o FROM s, unnest(s.owners) o'
            WHEN 'source' THEN 'SELECT ''source'', s.source FROM s'
        END;
        IF parts[array_length(parts, 1)] IS NULL THEN
            RAISE EXCEPTION 'unknown facet %', name USING ERRCODE = '22023';
        END IF;
    END LOOP;
    top := least(greatest(coalesce(top, 1), 1), 100);
    bound := least(greatest(coalesce(bound, 1), 1), 1000000);
    ids := public.lily_search_ids(f, bound + 1, 'a.asset_id, a.type, a.tags, a.owners, a.source');
    IF ids IS NULL OR cardinality(parts) = 0 THEN
        RETURN;
    END IF;
    RETURN QUERY EXECUTE format(
        'WITH s AS MATERIALIZED (SELECT * FROM (%1$s) u LIMIT %2$s),'
        ' k AS (SELECT count(*)::integer AS sampled FROM s),'
        ' v (facet, value) AS (%3$s),'
        ' c AS (SELECT v.facet, v.value, count(*) AS n,'
        '   row_number() OVER (PARTITION BY v.facet ORDER BY count(*) DESC, v.value) AS r FROM v GROUP BY 1, 2)'
        ' SELECT c.facet, c.value, c.n, k.sampled FROM c, k WHERE c.r <= %4$s ORDER BY c.facet, c.r',
        ids, bound + 1, array_to_string(parts, ' UNION ALL '), top);
END
$$;

ALTER FUNCTION lily_search_like_prefix(text) OWNER TO lily_search;
ALTER FUNCTION lily_search_where(jsonb) OWNER TO lily_search;
ALTER FUNCTION lily_search_arms(text, text) OWNER TO lily_search;
ALTER FUNCTION lily_search_ids(jsonb, integer, text) OWNER TO lily_search;
ALTER FUNCTION lily_search_page(jsonb, text, jsonb, integer, integer) OWNER TO lily_search;
ALTER FUNCTION lily_search_count(jsonb, integer) OWNER TO lily_search;
ALTER FUNCTION lily_search_facets(jsonb, text[], integer, integer) OWNER TO lily_search;
REVOKE ALL ON FUNCTION lily_search_like_prefix(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION lily_search_where(jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION lily_search_arms(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION lily_search_ids(jsonb, integer, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION lily_search_page(jsonb, text, jsonb, integer, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION lily_search_count(jsonb, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION lily_search_facets(jsonb, text[], integer, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lily_search_page(jsonb, text, jsonb, integer, integer) TO lily_app;
GRANT EXECUTE ON FUNCTION lily_search_count(jsonb, integer) TO lily_app;
GRANT EXECUTE ON FUNCTION lily_search_facets(jsonb, text[], integer, integer) TO lily_app;
