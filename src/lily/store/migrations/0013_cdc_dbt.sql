-- dbt artifacts uploaded to a dbt connector (POST /lily/v1/connectors/{tenant}/{id}/artifacts), kept
-- until the next upload replaces them, so whichever process runs the connector reads the same files.
-- Bodies are gzip-compressed; each is bounded by LILY_DBT_MAX_ARTIFACT_BYTES before compression.
-- (CDC needs no table of its own: its position, slot and health live in connectors.state, and its
-- consumer holds the connector's lease: both from 0011.)
CREATE TABLE connector_artifacts (
    tenant_id     text NOT NULL,
    connector_id  uuid NOT NULL,
    name          text NOT NULL CHECK (name IN ('manifest.json', 'catalog.json', 'run_results.json')),
    body          bytea NOT NULL,
    bytes         bigint NOT NULL CHECK (bytes >= 0),          -- uncompressed size
    uploaded_at   timestamptz NOT NULL DEFAULT now(),
    uploaded_by   text,
    PRIMARY KEY (tenant_id, connector_id, name),
    FOREIGN KEY (tenant_id, connector_id) REFERENCES connectors ON DELETE CASCADE
);
SELECT lily_protect_tenant_table('connector_artifacts');
