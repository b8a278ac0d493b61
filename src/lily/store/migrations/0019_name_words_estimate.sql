-- The name-words trigger (0012) probes the words index for each word of a new name (issue 11).
--
-- lily_collect_name_words inserts the words of new names that the tenant's dictionary lacks, filtering
-- with NOT EXISTS. lily_name_words, a set-returning function, was estimated at the default 1,000 rows
-- per name, so for one new asset the planner chose a hash anti join and built a hash of every word the
-- tenant has: with 50,000 words, 8 to 10 ms on each apply transaction that wrote an asset, and growing
-- with the vocabulary. A name has a handful of words; at 4 the one-asset statement probes the index
-- (0.4 ms at 50,000 words), while a bulk statement of a thousand names still hashes.
ALTER FUNCTION lily_name_words(text) ROWS 4;
