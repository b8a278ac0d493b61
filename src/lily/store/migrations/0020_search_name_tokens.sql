-- The typo fallback reads the names holding the nearest words through a btree of (tenant, word, asset)
-- (issue 11).
--
-- Since 0012 the fallback matched a misspelt q's nearest name words through the full-text index
-- (`search_doc @@ 'customers':A`). A GIN index answers only with a bitmap of every match: at 1M assets
-- the word `customers` is in 44,000 names, and its bitmap was built and sorted before the first of the 500
-- candidates the page ranks was read (about 12 of the fallback's 16 ms). Here each name word of each
-- asset is a row of a btree, so the candidates come in index order and the scan stops at 500 (0.3 ms for
-- that part, warm), one way of matching per near word. Which 500 of the 44,000 are ranked is as arbitrary as before (the first in the index
-- instead of the first in the heap) and now the same on every run; the page says the ranking was bounded.
--
-- The rows are kept by the trigger that keeps the name words: a new asset's words are added, a renamed
-- asset's old words go and its new ones come. Assets are never deleted (a deletion sets deleted_at, and
-- every search reads only live assets), so nothing else removes them. No foreign key: the rows derive
-- from assets rows of the same tenant, and a key would cost a lookup per word on every write.
CREATE TABLE asset_name_tokens (
    tenant_id  text NOT NULL,
    word       text NOT NULL,
    asset_id   uuid NOT NULL,
    PRIMARY KEY (tenant_id, word, asset_id)
);

INSERT INTO asset_name_tokens (tenant_id, word, asset_id)
SELECT a.tenant_id, w, a.asset_id FROM assets a, lily_name_words(a.name) w
ON CONFLICT DO NOTHING;
SELECT lily_protect_tenant_table('asset_name_tokens');
GRANT SELECT ON asset_name_tokens TO lily_search;

-- As 0012, and the tokens (above).
CREATE OR REPLACE FUNCTION lily_collect_name_words() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, public, pg_temp AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        INSERT INTO asset_name_words (tenant_id, word)
        SELECT DISTINCT c.tenant_id, w
        FROM changed c LEFT JOIN before b ON b.tenant_id = c.tenant_id AND b.asset_id = c.asset_id,
             lily_name_words(c.name) w
        WHERE c.deleted_at IS NULL AND b.name IS DISTINCT FROM c.name
          AND NOT EXISTS (SELECT 1 FROM asset_name_words x WHERE x.tenant_id = c.tenant_id AND x.word = w)
        ORDER BY 1, 2
        ON CONFLICT DO NOTHING;
        DELETE FROM asset_name_tokens t
        USING (SELECT b.tenant_id, b.asset_id, w
               FROM before b JOIN changed c ON c.tenant_id = b.tenant_id AND c.asset_id = b.asset_id,
                    lily_name_words(b.name) w
               WHERE b.name IS DISTINCT FROM c.name) o
        WHERE t.tenant_id = o.tenant_id AND t.word = o.w AND t.asset_id = o.asset_id;
        INSERT INTO asset_name_tokens (tenant_id, word, asset_id)
        SELECT c.tenant_id, w, c.asset_id
        FROM changed c JOIN before b ON b.tenant_id = c.tenant_id AND b.asset_id = c.asset_id,
             lily_name_words(c.name) w
        WHERE b.name IS DISTINCT FROM c.name
        ORDER BY 1, 2, 3
        ON CONFLICT DO NOTHING;
    ELSE
        INSERT INTO asset_name_words (tenant_id, word)
        SELECT DISTINCT c.tenant_id, w FROM changed c, lily_name_words(c.name) w
        WHERE c.deleted_at IS NULL
          AND NOT EXISTS (SELECT 1 FROM asset_name_words x WHERE x.tenant_id = c.tenant_id AND x.word = w)
        ORDER BY 1, 2
        ON CONFLICT DO NOTHING;
        INSERT INTO asset_name_tokens (tenant_id, word, asset_id)
        SELECT c.tenant_id, w, c.asset_id FROM changed c, lily_name_words(c.name) w
        ORDER BY 1, 2, 3
        ON CONFLICT DO NOTHING;
    END IF;
    RETURN NULL;
END
$$;

-- As 0018, the fallback's way of matching through the tokens.
CREATE OR REPLACE FUNCTION lily_search_arms(w text, q text) RETURNS text[]
LANGUAGE plpgsql STABLE STRICT SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    arms text[] := public.lily_search_match_arms(q);
    found boolean;
    near text[];
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
    SELECT array_agg(n.word ORDER BY n.word) INTO near FROM (
        SELECT x.word FROM public.asset_name_words x
        WHERE x.tenant_id = current_setting('lily.tenant_id', true) AND x.word OPERATOR(public.%) lower(q)
        ORDER BY public.similarity(x.word, lower(q)) DESC, x.word LIMIT 8) n;
    IF near IS NULL THEN
        RETURN ARRAY['false'];
    END IF;
    -- A way of matching per word, each with t.word = one word: the primary key then proves the asset ids
    -- distinct, so the scan of the tokens stops at the arm's LIMIT. With t.word = ANY (…) the planner first
    -- gathered and de-duplicated every token of the words (40,000 for `customers`: 10 ms).
    RETURN ARRAY(
        SELECT format('a.asset_id IN (SELECT t.asset_id FROM public.asset_name_tokens t'
                      ' WHERE t.tenant_id = %L AND t.word = %L)', current_setting('lily.tenant_id', true), n)
        FROM unnest(near) n);
END
$$;

-- No parallel workers for a page. With the tokens the planner estimated the fallback's way of matching at
-- 35,000 rows and gathered it from two workers: starting them cost more than the 500 lookups it needed
-- (5.6 → 11 ms alone), and eight searches at once on two cores made sixteen more processes (p99 94 ms at
-- 8 clients; 35 ms without). A page reads a bounded number of rows; concurrency comes from the searches.
ALTER FUNCTION lily_search_page(jsonb, text, jsonb, integer, integer) SET max_parallel_workers_per_gather = 0;
