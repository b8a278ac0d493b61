-- The trigram index of asset names goes: no query has used it since 0012 (issue 11).
--
-- 0006 matched misspelt names with `lower(a.name) % q` over every name, through this index; 0012 moved the
-- fallback to the tenant's dictionary of name words (its own trigram index, a few thousand rows), and 0020
-- to a btree of the names holding them. After every query shape of bench/search.py at 1M assets it had
-- not been scanned once (pg_stat_user_indexes), yet each asset written paid for it: a GIN index without a
-- pending list, about twenty trigrams per name, inserted on every create and rename.
DROP INDEX assets_name_trgm;
