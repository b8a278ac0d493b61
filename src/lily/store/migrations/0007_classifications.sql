-- Classification: dotted names from a tenant taxonomy (PII.Email) on assets and their columns, with their
-- provenance (manual, rule, propagated, external), the removals stewards made (rules and propagation never
-- re-add those), and every asset's classifications denormalised onto the asset row for policies and search.
--
-- Rows change only in the pipeline (events of kind classification.*), so they are ordered per asset with
-- the asset's other changes, and assets.classifications is rewritten in the same transaction.

-- Names a steward added to the tenant's taxonomy. The built-in ones (PII.*, GDPR.*, Sensitivity.*) live
-- in code (lily.domain.classification), the same for every tenant, and are never rows here.
CREATE TABLE classification_taxonomy (
    tenant_id    text NOT NULL REFERENCES tenants,
    name         text NOT NULL CHECK (name ~ '^[A-Za-z][A-Za-z0-9_]{0,63}(\.[A-Za-z][A-Za-z0-9_]{0,63}){0,7}$'),
    description  text CHECK (length(description) <= 1024),
    created_by   text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, name)
);
SELECT lily_protect_tenant_table('classification_taxonomy');

-- One row per way an asset (column_name NULL) or one of its columns carries a classification: a steward's
-- (manual), a classifier's (rule), an outside system's (external), or one per path it was propagated along
-- (origin: where it was set by hand or rule; via: the upstream asset/column of the step; distance: steps
-- from the origin). A column keeps a classification while any row carries it, so a diamond keeps it as
-- long as one of its paths does.
CREATE TABLE classifications (
    tenant_id          text NOT NULL,
    classification_id  bigint GENERATED ALWAYS AS IDENTITY,
    asset_id           uuid NOT NULL,
    column_name        text CHECK (length(column_name) BETWEEN 1 AND 1024),
    classification     text NOT NULL CHECK (length(classification) <= 512),
    source             text NOT NULL CHECK (source IN ('manual', 'rule', 'propagated', 'external')),
    origin_asset_id    uuid,
    origin_column      text,
    via_asset_id       uuid,
    via_column         text,
    distance           integer CHECK (distance >= 1),
    confidence         double precision NOT NULL DEFAULT 1 CHECK (confidence >= 0 AND confidence <= 1),
    propagate          boolean NOT NULL DEFAULT false,
    applied_by         text NOT NULL,
    applied_at         timestamptz NOT NULL,
    event_id           uuid,
    detail             jsonb NOT NULL DEFAULT '{}',   -- e.g. the classifier and its reason
    PRIMARY KEY (tenant_id, classification_id),
    FOREIGN KEY (tenant_id, asset_id) REFERENCES assets (tenant_id, asset_id) ON DELETE CASCADE,
    CONSTRAINT classifications_path CHECK (
        (source = 'propagated') = (origin_asset_id IS NOT NULL AND via_asset_id IS NOT NULL AND distance IS NOT NULL))
);
SELECT lily_protect_tenant_table('classifications');
-- One row per (place, name, source, path). NULLS NOT DISTINCT needs PostgreSQL 15, hence the COALESCEs.
CREATE UNIQUE INDEX classifications_identity ON classifications (
    tenant_id, asset_id, (coalesce(column_name, '')), classification, source,
    (coalesce(origin_asset_id, '00000000-0000-0000-0000-000000000000'::uuid)), (coalesce(origin_column, '')),
    (coalesce(via_asset_id, '00000000-0000-0000-0000-000000000000'::uuid)), (coalesce(via_column, '')));
-- The inventory: a name and its children (classification = 'PII' OR LIKE 'PII.%'), paged by place.
CREATE INDEX classifications_by_name ON classifications (tenant_id, classification text_pattern_ops, asset_id);
-- Retraction: the places a place's classification was passed on to.
CREATE INDEX classifications_via ON classifications (tenant_id, via_asset_id, classification)
    WHERE via_asset_id IS NOT NULL;

-- What stewards removed from a place: rules and propagation never put it back (a steward adding it by
-- hand again lifts the removal).
CREATE TABLE classification_removals (
    tenant_id       text NOT NULL,
    asset_id        uuid NOT NULL,
    column_name     text CHECK (length(column_name) BETWEEN 1 AND 1024),
    classification  text NOT NULL CHECK (length(classification) <= 512),
    removed_by      text NOT NULL,
    removed_at      timestamptz NOT NULL,
    event_id        uuid,
    FOREIGN KEY (tenant_id, asset_id) REFERENCES assets (tenant_id, asset_id) ON DELETE CASCADE
);
SELECT lily_protect_tenant_table('classification_removals');
CREATE UNIQUE INDEX classification_removals_identity
    ON classification_removals (tenant_id, asset_id, (coalesce(column_name, '')), classification);

-- Every classification of the asset and of its columns, parents included (PII.Email gives PII and
-- PII.Email), sorted: access-policy selectors and search's classification= filter match it with && / @>.
ALTER TABLE assets ADD COLUMN classifications text[] NOT NULL DEFAULT '{}';
CREATE INDEX assets_classifications ON assets USING gin (classifications) WITH (fastupdate = off)
    WHERE deleted_at IS NULL;

-- 'PII.Contact.Email' → {PII, PII.Contact, PII.Contact.Email}, for every name given; sorted, distinct.
CREATE FUNCTION lily_classification_closure(names text[]) RETURNS text[]
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(array_agg(DISTINCT p ORDER BY p), '{}')
    FROM unnest(names) AS n,
         LATERAL generate_series(1, cardinality(string_to_array(n, '.'))) AS i,
         LATERAL array_to_string((string_to_array(n, '.'))[1:i], '.') AS p
$$;
