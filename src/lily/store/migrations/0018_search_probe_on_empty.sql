-- A relevance page asks whether q matches anything only when it found nothing (issue 8, issue 11).
--
-- Before its query, lily_search_page called lily_search_arms, which probed with an EXISTS per way of
-- matching (text, name prefix) whether to fall back to typo matching. Each probe carried the WHERE clause,
-- so the caller's read rule was planned four times per search: twice in the probe, once in each arm of
-- the page query. With 100 policies the rule is 17 KB of SQL, and its planning was a fifth of what the
-- policies cost a one-word search. Now the page query runs with the two ways of matching at once; the
-- probe runs only when it returns no row. On a first page that means nothing matched, so the page is
-- the typo fallback's. On a later page it may also mean the pages have ended; the probe tells the two
-- apart, as it always did. Results and order are unchanged.

-- The two ways of matching q, before any fallback (as 0012's lily_search_arms builds them).
CREATE FUNCTION lily_search_match_arms(q text) RETURNS text[]
LANGUAGE sql IMMUTABLE STRICT SET search_path = pg_catalog, pg_temp AS $$
    SELECT ARRAY[
        format('a.search_doc @@ (websearch_to_tsquery(''simple'', %1$L) || websearch_to_tsquery(''english'', %1$L))', q),
        format('lower(a.name) LIKE %L', public.lily_search_like_prefix(lower(q)))]
$$;
ALTER FUNCTION lily_search_match_arms(text) OWNER TO lily_search;
REVOKE ALL ON FUNCTION lily_search_match_arms(text) FROM PUBLIC;

-- As 0012, its ways of matching from lily_search_match_arms.
CREATE OR REPLACE FUNCTION lily_search_arms(w text, q text) RETURNS text[]
LANGUAGE plpgsql STABLE STRICT SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    arms text[] := public.lily_search_match_arms(q);
    found boolean;
    near text;
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
    SELECT string_agg(quote_literal(n.word) || ':A', ' | ') INTO near FROM (
        SELECT x.word FROM public.asset_name_words x
        WHERE x.tenant_id = current_setting('lily.tenant_id', true) AND x.word OPERATOR(public.%) lower(q)
        ORDER BY public.similarity(x.word, lower(q)) DESC, x.word LIMIT 8) n;
    IF near IS NULL THEN
        RETURN ARRAY['false'];
    END IF;
    RETURN ARRAY[format('a.search_doc @@ %L::tsquery', near)];
END
$$;

-- As 0016, with the relevance page's probe moved after its query (see above).
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
    matching text[];
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
        matching := public.lily_search_match_arms(q);
        arms := matching;
        LOOP
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
            -- A row, or the fallback's answer (empty or not): done. No row from the ways of matching: on a
            -- first page nothing matched; on a later one the pages may have ended — the probe decides
            -- whether the fallback's ways of matching take over (the same answer as probing first).
            EXIT WHEN FOUND OR arms IS DISTINCT FROM matching;
            arms := public.lily_search_arms(w, q);
            EXIT WHEN arms = matching;
        END LOOP;
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
