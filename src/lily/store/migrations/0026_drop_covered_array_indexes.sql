-- Drop the GIN indexes of assets.tags, assets.owners and assets.classifications (issue 11).
--
-- Since 0012 the search index assets_search_doc_filters holds these three columns too (through
-- btree_gin, beside search_doc, type and source). A GIN index serves a condition on any of its columns
-- alone, so a filter on tags, owners or classifications has an index without them; and no other query
-- filters assets by these arrays (the access rule reads them on rows already found, and under RLS, as
-- the app role, their operators could not use an index anyway). Over the whole search benchmark at 1M
-- assets none of the three was scanned once. Every asset the pipeline writes still paid for each: four
-- rows a statement, as an apply writes them, took 2.2–2.4 ms with them and 1.95 ms without (0.5 of about
-- 0.6 ms a row), on the machine of stop 21.
DROP INDEX IF EXISTS assets_tags;
DROP INDEX IF EXISTS assets_owners;
DROP INDEX IF EXISTS assets_classifications;
