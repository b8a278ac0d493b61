-- A search whose filters only match assets the caller may not read answers at once (issue 8).
--
-- A viewer denied reading tag=pii who searched tag=pii, by name or by date, made the planner walk the
-- name (or updated_at) index of the whole tenant: it estimates the read rule's NOT (tags && '{pii}') as
-- letting most rows through, so it expected the first page within a few thousand rows, and found none in
-- a million (6.5 s on the 1M benchmark tenant, a core held for each such request). A caller could stall
-- the database at will with a filter its own policies contradict.
--
-- lily_read_hides_all(f) reads the denials in force for the caller and says whether one of them selects
-- every asset the filters can match; lily_search_where then adds "false", which the planner folds into
-- an empty plan. It only says true when that follows from the filters alone (so it can never hide an
-- asset the caller may read):
--   a denied type list      when the filter's types are all in it,
--   a denied tag list       when a tag the filter requires is in it (tags are all-of),
--   a denied classification when a classification the filter requires is in it (all-of, as stored with
--                           its parents, the way the denial matches it),
--   a denied prefix         when the filter's qualified_name or qualified_name_prefix starts with it,
-- and a denial of several criteria when each of them holds; a denial naming asset ids never does. A case
-- it misses is only slower, never wrong: the read rule still applies to every row.

CREATE FUNCTION lily_read_hides_all(f jsonb) RETURNS boolean
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    f_types text[] := CASE WHEN jsonb_typeof(f->'types') = 'array'
                           THEN ARRAY(SELECT jsonb_array_elements_text(f->'types')) END;
    f_tags text[] := CASE WHEN jsonb_typeof(f->'tags') = 'array'
                          THEN ARRAY(SELECT jsonb_array_elements_text(f->'tags')) END;
    f_classes text[] := CASE WHEN jsonb_typeof(f->'classifications') = 'array'
                             THEN ARRAY(SELECT jsonb_array_elements_text(f->'classifications')) END;
    f_names text[] := ARRAY(SELECT n FROM unnest(ARRAY[f->>'qualified_name', nullif(f->>'qualified_name_prefix', '')]) n
                            WHERE n IS NOT NULL);
    v_tenant text := current_setting('lily.tenant_id', true);
    v_epoch bigint;
    key text;
    slot text;
    cached text;
    selectors jsonb;
BEGIN
    IF coalesce(cardinality(f_types), 0) = 0 AND coalesce(cardinality(f_tags), 0) = 0
       AND coalesce(cardinality(f_classes), 0) = 0 AND cardinality(f_names) = 0 THEN
        RETURN false;  -- nothing a denial could contradict: no need to read them
    END IF;
    -- The caller's denials (but those naming asset ids, which never hide every match), kept per
    -- connection as lily_read_predicate keeps its rule (0015): in slots of their own, under a key that
    -- holds the tenant's policy epoch, as JSON. Read afresh, or kept as lily_access_selector[] text, or
    -- tested one by one in plpgsql, they cost 0.3-1 ms with 60 denials: more than the searches this is for.
    SELECT e.epoch INTO v_epoch FROM public.access_policy_epochs e WHERE e.tenant_id = v_tenant;
    IF v_epoch IS NOT NULL THEN
        key := md5(concat_ws(E'\n', v_tenant, current_setting('lily.access_role', true),
                             current_setting('lily.access_names', true), v_epoch));
        slot := 'lily.read_denials_' || (hashtext(key) & 15);
        cached := current_setting(slot, true);
        IF starts_with(cached, key || E'\n') THEN
            selectors := substr(cached, 34)::jsonb;
        END IF;
    END IF;
    IF selectors IS NULL THEN
        SELECT coalesce(jsonb_agg(jsonb_build_object('t', d.types, 'g', d.tags, 'c', d.classifications,
                                                     'p', d.qualified_name_prefix)), '[]')
        INTO selectors
        FROM unnest(public.lily_read_denials()) d WHERE d.asset_ids IS NULL;
        IF v_epoch IS NOT NULL THEN
            PERFORM set_config(slot, key || E'\n' || selectors::text, false);
        END IF;
    END IF;
    -- A denial whose every criterion holds for every asset the filters match (a selector has at least
    -- one criterion: access_policies' check constraint).
    RETURN EXISTS (
        SELECT 1 FROM jsonb_to_recordset(selectors) AS s(t text[], g text[], c text[], p text)
        WHERE (s.t IS NULL OR coalesce(cardinality(f_types) > 0 AND f_types <@ s.t, false))
          AND (s.g IS NULL OR coalesce(f_tags && s.g, false))
          AND (s.c IS NULL OR coalesce(f_classes && s.c, false))
          AND (s.p IS NULL OR EXISTS (SELECT 1 FROM unnest(f_names) n WHERE starts_with(n, s.p))));
END
$$;
ALTER FUNCTION lily_read_hides_all(jsonb) OWNER TO lily_search;
REVOKE ALL ON FUNCTION lily_read_hides_all(jsonb) FROM PUBLIC;

-- As 0008, with the check above.
CREATE OR REPLACE FUNCTION lily_search_where(f jsonb) RETURNS text
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
    IF public.lily_read_hides_all(f) THEN
        RETURN w || ' AND false';
    END IF;
    RETURN w || ' AND ' || readable;
END
$$;
