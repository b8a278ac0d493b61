-- The source of an asset is core data, not an attribute an optional hook stamps: which source last
-- wrote the asset (api, bulk, openlineage, connector:<id>, propagation, ...) and whether a source that
-- reports its own changes feeds it. Downstream propagation reads has_active_source.
ALTER TABLE assets ADD COLUMN source text NOT NULL DEFAULT 'api';
ALTER TABLE assets ADD COLUMN has_active_source boolean NOT NULL DEFAULT false;

-- Assets written before this migration: the source_stamp hook's attribute, where it was enabled.
-- Placeholders are fed by nobody yet, whatever named them.
UPDATE assets
SET source = attributes->>'lily.source',
    has_active_source = NOT placeholder AND attributes->>'lily.source' NOT IN ('api', 'bulk', 'propagation')
WHERE attributes ? 'lily.source' AND jsonb_typeof(attributes->'lily.source') = 'string';
