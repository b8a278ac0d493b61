-- Every word of the search index is its tenant's (issue 11; the noisy neighbour stop 22 measured).
--
-- A GIN index holds one posting list per key, and search_doc's words were the same keys in every tenant:
-- a search by one tenant for a word another tenant has 50,000 times decoded those 50,000 postings before
-- its tenant filter threw them away (21.9 ms for a tenant holding none), and the cost grew with the other
-- tenant's data. A tenant column in the index would not help: one more list to intersect, of every row
-- of the tenant. Now each lexeme of search_doc is "tenant|word", positions and weights kept, and a search
-- asks for its tenant's words: the lists it reads hold its own rows. Phrases and ts_rank read search_doc as
-- before (same positions, same weights), and ANALYZE's statistics of the words are per tenant.
--
-- Tried first and backed out: the prefixed words in an expression index with search_doc left as it was.
-- A plan that walks a btree and filters then computed the expression on every row it read (about 150 us
-- a row at 1M assets; tag by updated_at 1.1 -> 19.8 ms), so the words are stored, computed once per write.
--
-- The filter columns (type, tags, owners, source, classifications) are still shared keys of the index.

-- The lexemes of ``doc`` as "t|lexeme". Tenant ids are [a-z0-9-] (lily.domain.tenants), so the prefix
-- needs no quoting; a lexeme's own quotes stay doubled, as the text form writes them.
CREATE FUNCTION lily_tenant_lexemes(t text, doc tsvector) RETURNS tsvector
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT regexp_replace(doc::text, '''((?:[^'']|'''')*)''', '''' || t || '|\1''', 'g')::tsvector
$$;

-- The same for a query's lexemes; its operators (&, |, !, <->, :*) stay as they are.
CREATE FUNCTION lily_tenant_tsquery(t text, q tsquery) RETURNS tsquery
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT regexp_replace(q::text, '''((?:[^'']|'''')*)''', '''' || t || '|\1''', 'g')::tsquery
$$;

-- search_doc as 0012 computed it, each lexeme its tenant's (the index goes with the column and comes back).
ALTER TABLE assets DROP COLUMN search_doc;
ALTER TABLE assets ADD COLUMN search_doc tsvector GENERATED ALWAYS AS (lily_tenant_lexemes(tenant_id, (((setweight((to_tsvector('simple'::regconfig, name) || to_tsvector('simple'::regconfig, regexp_replace(name, '[^[:alnum:]]+'::text, ' '::text, 'g'::text))), 'A'::"char") || setweight(to_tsvector('simple'::regconfig, regexp_replace(qualified_name, '[^[:alnum:]]+'::text, ' '::text, 'g'::text)), 'B'::"char")) || setweight(jsonb_to_tsvector('simple'::regconfig, jsonb_path_query_array(attributes, '$."columns"[*]."name"'::jsonpath), '["string"]'::jsonb), 'C'::"char")) || setweight(((to_tsvector('english'::regconfig, COALESCE(description, ''::text)) || to_tsvector('simple'::regconfig, COALESCE(description, ''::text))) || array_to_tsvector(tags)), 'D'::"char")))) STORED;
CREATE INDEX assets_search_doc_filters ON assets USING gin (search_doc, type, tags, owners, source, classifications)
    WITH (fastupdate = off) WHERE deleted_at IS NULL;
-- Ten times the default statistics of the words. A word ANALYZE did not keep is estimated at half the
-- rarest one kept, and a tenant's words are rarer than the same words over every tenant: a tenant of
-- 100,000 assets searching a word it lacks was estimated at 331 rows, so the probe (LIMIT 1) walked the
-- tenant's whole assets_by_updated looking for one (175-232 ms per statement at 1.15M assets). With
-- 10,000 words kept the estimate falls below the walk's break-even and the index answers (14-17 ms for
-- the whole search). ANALYZE of assets takes longer: 10 s at 1.15M rows on stop 22's machine.
ALTER TABLE assets ALTER COLUMN search_doc SET STATISTICS 1000;

-- As 0016, the text way of matching with the tenant's words (it reads the tenant, so STABLE now).
CREATE OR REPLACE FUNCTION lily_search_match_arms(q text) RETURNS text[]
LANGUAGE plpgsql STABLE STRICT SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN ARRAY[
        format('a.search_doc @@ %L::tsquery', public.lily_tenant_tsquery(current_setting('lily.tenant_id', true),
               websearch_to_tsquery('simple', q) || websearch_to_tsquery('english', q))),
        format('lower(a.name) LIKE %L', public.lily_search_like_prefix(lower(q)))];
END
$$;

-- As 0020's, with the relevance score's query in the tenant's words.
CREATE OR REPLACE FUNCTION lily_search_page(f jsonb, sort text, after jsonb, lim integer, candidates integer)
 RETURNS TABLE(asset_id uuid, score double precision, sort_name text, sort_updated timestamp with time zone, ranked integer, qualified_name text, type text, name text, description text, owners text[], tags text[], attributes jsonb, placeholder boolean, source text, has_active_source boolean, version integer, created_at timestamp with time zone, updated_at timestamp with time zone, deleted_at timestamp with time zone, classifications text[])
 LANGUAGE plpgsql
 STABLE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
 SET enable_seqscan TO 'off'
 SET max_parallel_workers_per_gather TO '0'
AS $function$
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
        tsq := format('%L::tsquery', public.lily_tenant_tsquery(current_setting('lily.tenant_id'),
                                   websearch_to_tsquery('simple', q) || websearch_to_tsquery('english', q)));
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
$function$;
