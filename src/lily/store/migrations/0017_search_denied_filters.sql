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
    s public.lily_access_selector;
BEGIN
    IF coalesce(cardinality(f_types), 0) = 0 AND coalesce(cardinality(f_tags), 0) = 0
       AND coalesce(cardinality(f_classes), 0) = 0 AND cardinality(f_names) = 0 THEN
        RETURN false;  -- nothing a denial could contradict: no need to read them
    END IF;
    FOREACH s IN ARRAY coalesce(public.lily_read_denials(), '{}') LOOP
        CONTINUE WHEN s.asset_ids IS NOT NULL;
        CONTINUE WHEN s.types IS NOT NULL AND NOT coalesce(cardinality(f_types) > 0 AND f_types <@ s.types, false);
        CONTINUE WHEN s.tags IS NOT NULL AND NOT coalesce(f_tags && s.tags, false);
        CONTINUE WHEN s.classifications IS NOT NULL AND NOT coalesce(f_classes && s.classifications, false);
        CONTINUE WHEN s.qualified_name_prefix IS NOT NULL
            AND NOT EXISTS (SELECT 1 FROM unnest(f_names) n WHERE starts_with(n, s.qualified_name_prefix));
        -- Every criterion of this denial holds for every asset the filters match (a selector has at least
        -- one criterion: access_policies' check constraint).
        RETURN true;
    END LOOP;
    RETURN false;
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
