-- Search at 1M assets (issue 11): relevance scores its candidates in the scans that find them.
--
-- Until now a relevance page collected up to 500 candidate ids from each way of matching, then read
-- every candidate again by primary key to score it (four buffer reads each), and then read the page's
-- rows a third time for their columns. At 1M assets the second read was most of the search: 462
-- candidates of a rare word took 7.5 ms of a 9 ms query in EXPLAIN ANALYZE, 500 name-prefix candidates
-- 8.4 of 12.5. The scans that find the candidates have the row in hand; they now compute its score
-- there. A row found by two ways of matching gets the same score from both (the expression depends on
-- the row and q only), so UNION still keeps it once. The page's columns are still read for its own
-- rows only (a page, not the candidates, as 0015).
--
-- lily_search_page also built the WHERE clause and the ways of matching twice (once for itself, once
-- in lily_search_ids), which ran the typo fallback's probe twice; it now builds them once.

-- The UNION of ``per_arm`` rows (``cols``) from each way of matching ``arms`` under the WHERE clause
-- ``w``: lily_search_ids' body, for callers that have built w and the arms already. ``cols`` comes from
-- the search functions, never from a caller.
CREATE FUNCTION lily_search_union(w text, arms text[], per_arm integer, cols text) RETURNS text
LANGUAGE sql STABLE STRICT SET search_path = pg_catalog, pg_temp AS $$
    SELECT string_agg(format('(SELECT %s FROM public.assets a WHERE %s AND %s LIMIT %s)', cols, w, arm, per_arm),
                      ' UNION ')
    FROM unnest(arms) arm
$$;
ALTER FUNCTION lily_search_union(text, text[], integer, text) OWNER TO lily_search;
REVOKE ALL ON FUNCTION lily_search_union(text, text[], integer, text) FROM PUBLIC;

-- As 0015 (same results, same order), with the candidates scored where they are found.
CREATE OR REPLACE FUNCTION lily_search_page(f jsonb, sort text, after jsonb, lim integer, candidates integer)
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
    arms text[];
    tsq text;
    score text;
    keyset text := '';
BEGIN
    IF w IS NULL THEN
        RETURN;
    END IF;
    lim := least(greatest(coalesce(lim, 1), 1), 1001);
    candidates := least(greatest(coalesce(candidates, 1), 1), 100000);
    IF q IS NOT NULL THEN
        arms := public.lily_search_arms(w, q);
    END IF;
    IF q IS NOT NULL AND sort IS DISTINCT FROM 'relevance' THEN
        w := w || ' AND (' || array_to_string(arms, ' OR ') || ')';
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
        RETURN QUERY EXECUTE format(
            'WITH c AS MATERIALIZED (%1$s),'
            ' n AS (SELECT count(*)::integer AS ranked FROM c),'
            ' top AS (SELECT m.asset_id, m.score, m.name, m.updated_at FROM c m%3$s'
            '   ORDER BY m.score DESC, m.asset_id DESC LIMIT %4$s)'
            ' SELECT t.asset_id, t.score, t.name, t.updated_at, n.ranked, %5$s'
            ' FROM top t JOIN public.assets a ON a.tenant_id = %2$L AND a.asset_id = t.asset_id, n'
            ' ORDER BY t.score DESC, t.asset_id DESC',
            public.lily_search_union(w, arms, candidates,
                                     format('a.asset_id, a.name, a.updated_at, (%s)::float8 AS score', score)),
            current_setting('lily.tenant_id'), keyset, lim, cols);
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
