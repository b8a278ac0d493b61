-- Per-tenant auth epoch: API processes cache a credential's check in memory and send the epoch they
-- checked it at with each request's one authentication round trip. Every change to a tenant's users,
-- API keys or revoked tokens bumps the epoch in the same transaction (triggers below), so the next
-- request in every process sees a different epoch and checks the credential in full again: revocation,
-- disabling, deletion and role or group changes still take effect on the very next request. NOTIFY
-- alone would arrive after that request.
ALTER TABLE tenants ADD COLUMN auth_epoch bigint NOT NULL DEFAULT 0;

-- Runs as the writer, under row-level security: the change is made with lily.tenant_id set to its
-- tenant, so the tenant's row is visible to the UPDATE. A change whose tenant row is not visible would
-- leave caches stale; it is refused instead.
CREATE FUNCTION lily_bump_auth_epoch() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    v_tenant text := CASE WHEN TG_OP = 'DELETE' THEN OLD.tenant_id ELSE NEW.tenant_id END;
BEGIN
    UPDATE tenants SET auth_epoch = auth_epoch + 1 WHERE tenant_id = v_tenant;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'tenant % is not visible to this transaction (lily.tenant_id): its auth epoch cannot move', v_tenant
            USING ERRCODE = '42501';
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER users_auth_epoch AFTER INSERT OR UPDATE OR DELETE ON users
    FOR EACH ROW EXECUTE FUNCTION lily_bump_auth_epoch();
CREATE TRIGGER api_keys_auth_epoch AFTER INSERT OR UPDATE OR DELETE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION lily_bump_auth_epoch();
-- Only new revocations: the scheduler's pruning of expired ones (any tenant, no tenant set) frees
-- nothing a cache could hold, since an expired token is refused by its own claims.
CREATE TRIGGER revoked_tokens_auth_epoch AFTER INSERT ON revoked_tokens
    FOR EACH ROW EXECUTE FUNCTION lily_bump_auth_epoch();

-- lily_authenticate with a cache in front: p_known_epoch is the epoch at which the calling process last
-- checked this credential in full (NULL when it has not). When the tenant's epoch is still that one,
-- nothing about the credential can have changed: only the rate limits are taken and the status is
-- 'cached' (or 'limited'). Otherwise the full check runs (status as lily_authenticate's). Either way
-- ``epoch`` is the tenant's epoch, read before the credential's rows: a change committed in between
-- leaves the caller with an older epoch than its answer, so its next request checks again.
CREATE FUNCTION lily_authenticate_at(
    p_tenant text, p_kind text, p_name text, p_jti text, p_sid text, p_secret_hash text,
    p_principal_rate double precision, p_principal_capacity double precision,
    p_tenant_rate double precision, p_tenant_capacity double precision, p_known_epoch bigint
) RETURNS TABLE (status text, role text, groups text[], key_name text, retry_after double precision, epoch bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_epoch bigint;
    v_wait double precision := 0;
BEGIN
    PERFORM set_config('lily.tenant_id', p_tenant, true);
    PERFORM set_config('synchronous_commit', 'off', true);
    SELECT t.auth_epoch INTO v_epoch FROM tenants t WHERE t.tenant_id = p_tenant AND t.deleted_at IS NULL;
    IF v_epoch IS NULL THEN
        RETURN QUERY SELECT 'unknown'::text, NULL::text, NULL::text[], NULL::text, NULL::double precision, NULL::bigint;
        RETURN;
    END IF;
    IF p_known_epoch IS DISTINCT FROM v_epoch THEN
        RETURN QUERY SELECT a.status, a.role, a.groups, a.key_name, a.retry_after, v_epoch
            FROM lily_authenticate(p_tenant, p_kind, p_name, p_jti, p_sid, p_secret_hash, p_principal_rate,
                                   p_principal_capacity, p_tenant_rate, p_tenant_capacity) a;
        RETURN;
    END IF;
    IF p_principal_rate > 0 THEN
        v_wait := lily_take_token(p_tenant, p_kind || ':' || p_name, p_principal_rate, p_principal_capacity);
    END IF;
    IF v_wait = 0 AND p_tenant_rate > 0 THEN
        v_wait := lily_take_token(p_tenant, 'tenant', p_tenant_rate, p_tenant_capacity);
    END IF;
    RETURN QUERY SELECT CASE WHEN v_wait > 0 THEN 'limited' ELSE 'cached' END,
        NULL::text, NULL::text[], NULL::text, v_wait, v_epoch;
END
$$;

-- ---------------------------------------------------------------------------------------------------
-- Search speed (issue 11). The functions below replace 0006's (0008's read rule stays: every path still
-- goes through lily_search_where, which adds it).
--
-- Typo matching searched 1M names by trigram similarity (5 s at 8 clients). It now searches the tenant's
-- distinct name words — a few thousand, kept by a trigger — for the words nearest to the misspelt one,
-- and then finds the names holding those words through the full-text index (names' words carry weight A).
CREATE EXTENSION IF NOT EXISTS btree_gin WITH SCHEMA public;

CREATE TABLE asset_name_words (
    tenant_id  text NOT NULL REFERENCES tenants,
    word       text NOT NULL,
    PRIMARY KEY (tenant_id, word)
);

-- A name's words as search_doc's name half splits them, lower case; at least three characters (the typo
-- fallback's own minimum) and not all digits (names numbered like fct_orders_1234 would make every name
-- a word of its own).
CREATE FUNCTION lily_name_words(name text) RETURNS SETOF text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT DISTINCT w FROM regexp_split_to_table(lower(name), '[^[:alnum:]]+') w
    WHERE length(w) BETWEEN 3 AND 64 AND w !~ '^[0-9]+$'
$$;

INSERT INTO asset_name_words (tenant_id, word)
SELECT DISTINCT a.tenant_id, w FROM assets a, lily_name_words(a.name) w WHERE a.deleted_at IS NULL
ON CONFLICT DO NOTHING;
SELECT lily_protect_tenant_table('asset_name_words');
CREATE INDEX asset_name_words_trgm ON asset_name_words USING gin (tenant_id, word public.gin_trgm_ops);
GRANT SELECT ON asset_name_words TO lily_search;

-- Words of new names, once per statement (a pipeline batch, a COPY). Runs as the writer, under its
-- row-level security: the words belong to the tenant whose assets were written. Only words not there yet
-- are inserted, in one order, so concurrent writers of one tenant seldom meet, and never deadlock within
-- a statement. Words are never removed: a stale word only makes the fallback look once more.
CREATE FUNCTION lily_collect_name_words() RETURNS trigger
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
    ELSE
        INSERT INTO asset_name_words (tenant_id, word)
        SELECT DISTINCT c.tenant_id, w FROM changed c, lily_name_words(c.name) w
        WHERE c.deleted_at IS NULL
          AND NOT EXISTS (SELECT 1 FROM asset_name_words x WHERE x.tenant_id = c.tenant_id AND x.word = w)
        ORDER BY 1, 2
        ON CONFLICT DO NOTHING;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER assets_name_words_insert AFTER INSERT ON assets
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION lily_collect_name_words();
CREATE TRIGGER assets_name_words_update AFTER UPDATE ON assets
    REFERENCING OLD TABLE AS before NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION lily_collect_name_words();

-- One GIN index for full text and the filters that come with it: a word with type=table (or a tag, an
-- owner, a source, a classification) is intersected inside the index, where before the planner either
-- read every row holding the word to test its type, or walked the type's rows testing the word.
-- btree_gin indexes the scalar columns. It serves text alone as well as the old one did.
CREATE INDEX assets_search_doc_filters ON assets USING gin (search_doc, type, tags, owners, source, classifications)
    WITH (fastupdate = off) WHERE deleted_at IS NULL;
DROP INDEX assets_search_doc;

-- 0006's filters plus classification: all of them, a parent matching its children (assets.classifications
-- holds every name with its parents, 0007).
CREATE OR REPLACE FUNCTION lily_search_filters(f jsonb) RETURNS text
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
    IF jsonb_typeof(f->'classifications') = 'array' AND jsonb_array_length(f->'classifications') > 0 THEN
        w := w || format(' AND a.classifications @> %L::text[]',
                         ARRAY(SELECT jsonb_array_elements_text(f->'classifications')));
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

-- As 0006, but the typo fallback looks up the tenant's name words nearest to q (up to 8, by trigram
-- similarity) and matches the names holding one of them, through the full-text index.
CREATE OR REPLACE FUNCTION lily_search_arms(w text, q text) RETURNS text[]
LANGUAGE plpgsql STABLE STRICT SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    arms text[] := ARRAY[
        format('a.search_doc @@ (websearch_to_tsquery(''simple'', %1$L) || websearch_to_tsquery(''english'', %1$L))', q),
        format('lower(a.name) LIKE %L', public.lily_search_like_prefix(lower(q)))];
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

-- As 0006, with the classification facet (each name with its parents, as the filter matches them).
CREATE OR REPLACE FUNCTION lily_search_facets(f jsonb, facets text[], top integer, bound integer)
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
            WHEN 'classification' THEN 'SELECT ''classification'', c FROM s, unnest(s.classifications) c'
        END;
        IF parts[array_length(parts, 1)] IS NULL THEN
            RAISE EXCEPTION 'unknown facet %', name USING ERRCODE = '22023';
        END IF;
    END LOOP;
    top := least(greatest(coalesce(top, 1), 1), 100);
    bound := least(greatest(coalesce(bound, 1), 1), 1000000);
    ids := public.lily_search_ids(f, bound + 1, 'a.asset_id, a.type, a.tags, a.owners, a.source, a.classifications');
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

-- The planner, told LIMIT 1 (the typo fallback's probes) or LIMIT 500 of a word it believes common,
-- prefers walking the table until enough rows turn up: 4-6 s over a million rows when none or few do.
-- Search always has an index for its predicates, so inside the search functions a sequential scan is
-- only the last resort.
ALTER FUNCTION lily_search_page(jsonb, text, jsonb, integer, integer) SET enable_seqscan = off;
ALTER FUNCTION lily_search_count(jsonb, integer) SET enable_seqscan = off;
ALTER FUNCTION lily_search_facets(jsonb, text[], integer, integer) SET enable_seqscan = off;
