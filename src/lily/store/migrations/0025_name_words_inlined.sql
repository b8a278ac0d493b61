-- lily_name_words is inlined into the statements that call it (issue 11).
--
-- Every asset the pipeline writes runs lily_name_words twice, in the name-words trigger (0012, 0020):
-- once for the tenant's dictionary, once for the name tokens. As declared in 0012 (STRICT, and with its
-- own search_path) the planner could not inline it: each call was a function call of its own, which
-- planned its one SELECT again. In EXPLAIN ANALYZE of a four-asset apply, each call took 0.43 ms, of
-- which its query ran 0.02–0.03; in pg_stat_statements at 200 creates a second the dictionary's INSERT
-- cost 0.86 ms per apply statement, about a third of the INSERT into assets that fires it (2.85 ms).
--
-- A set-returning SQL function is inlined only when it is neither STRICT nor has SET clauses. The body
-- names everything by schema instead (pg_catalog's functions and operators), so no caller's search_path
-- can change what it calls; and without STRICT a NULL name still gives no words (lower(NULL) is NULL, and
-- regexp_split_to_table of NULL returns no row). ROWS 4 (0019) is kept for a caller that cannot inline
-- it; inlined, the planner estimates the split's rows through the filters (about five).
CREATE OR REPLACE FUNCTION lily_name_words(name text) RETURNS SETOF text
LANGUAGE sql IMMUTABLE PARALLEL SAFE ROWS 4 AS $$
    SELECT DISTINCT w FROM pg_catalog.regexp_split_to_table(pg_catalog.lower(name), '[^[:alnum:]]+') w
    WHERE pg_catalog.length(w) OPERATOR(pg_catalog.>=) 3 AND pg_catalog.length(w) OPERATOR(pg_catalog.<=) 64
      AND w OPERATOR(pg_catalog.!~) '^[0-9]+$'
$$;
