-- Outbound notifications (issue 9): channels (where to send), subscriptions (which change events),
-- deliveries (one message to one channel, with its retries) and their attempts, and the dispatchers'
-- positions in the change-event feed (0009).
--
-- Delivery is at least once: a change event becomes at most one delivery per channel (the unique
-- (channel, message_id) makes turning events into deliveries idempotent), and a delivery is claimed
-- with a lease — claiming pushes next_attempt_at to the lease's end — so a dispatcher that dies
-- mid-send leaves a row that comes due again by itself and is sent again, with the same message id.

CREATE TABLE notification_channels (
    tenant_id        text NOT NULL REFERENCES tenants,
    channel_id       uuid NOT NULL DEFAULT gen_random_uuid(),
    name             text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    type             text NOT NULL CHECK (length(type) BETWEEN 1 AND 100),  -- the lily.channels plugin
    config           jsonb NOT NULL DEFAULT '{}',   -- the public part of the plugin's Config
    -- The Config's secret fields and, for webhooks, the signing secrets (newest first), sealed by
    -- lily.crypto; never readable through the API.
    secrets_sealed   text,
    previous_secret_until timestamptz,              -- a rotated-out signing secret signs until then
    enabled          boolean NOT NULL DEFAULT true,
    disabled_reason  text,                          -- why the dispatcher disabled it (a 410), shown by GET
    created_by       text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, channel_id),
    UNIQUE (tenant_id, name)
);
SELECT lily_protect_tenant_table('notification_channels');

CREATE TABLE notification_subscriptions (
    tenant_id        text NOT NULL,
    subscription_id  uuid NOT NULL DEFAULT gen_random_uuid(),
    channel_id       uuid NOT NULL,
    event_types      text[] NOT NULL CHECK (cardinality(event_types) BETWEEN 1 AND 50),
    filter           jsonb NOT NULL DEFAULT '{}',   -- {"qualified_name_prefix", "types", "tags", "classifications"}
    created_by       text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, subscription_id),
    FOREIGN KEY (tenant_id, channel_id) REFERENCES notification_channels ON DELETE CASCADE
);
SELECT lily_protect_tenant_table('notification_subscriptions');
CREATE INDEX notification_subscriptions_channel ON notification_subscriptions (tenant_id, channel_id);

CREATE TABLE deliveries (
    tenant_id        text NOT NULL,
    delivery_id      uuid NOT NULL DEFAULT gen_random_uuid(),
    channel_id       uuid NOT NULL,
    message_id       text NOT NULL,     -- the webhook-id: the change event's id, or the notification's
    event_type       text NOT NULL,
    payload          jsonb NOT NULL,    -- the change event (or notification) as sent
    state            text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'dead')),
    attempts         integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),   -- every attempt, all rounds
    round_start      integer NOT NULL DEFAULT 0,  -- attempts before the last manual retry: the schedule restarts
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    lease_owner      text,              -- the dispatcher sending it now (until next_attempt_at)
    last_status      integer,
    last_error       text,
    last_response    text,              -- the receiver's answer, truncated
    occurred_at      timestamptz NOT NULL,   -- when the change happened (latency = delivered_at - this)
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz,
    PRIMARY KEY (tenant_id, delivery_id),
    UNIQUE (tenant_id, channel_id, message_id),
    FOREIGN KEY (tenant_id, channel_id) REFERENCES notification_channels ON DELETE CASCADE
);
SELECT lily_protect_tenant_table('deliveries');
-- The dispatchers' claim: due pending deliveries of every tenant, oldest due first.
CREATE INDEX deliveries_due ON deliveries (tenant_id, channel_id, next_attempt_at) WHERE state = 'pending';
CREATE INDEX deliveries_listing ON deliveries (tenant_id, created_at DESC, delivery_id DESC);
CREATE INDEX deliveries_age ON deliveries USING brin (updated_at);

CREATE TABLE delivery_attempts (
    tenant_id        text NOT NULL,
    delivery_id      uuid NOT NULL,
    attempt          integer NOT NULL,
    started_at       timestamptz NOT NULL,
    duration_ms      integer NOT NULL,
    status           integer,
    error            text,
    response         text,              -- truncated
    dispatcher       text NOT NULL,
    PRIMARY KEY (tenant_id, delivery_id, attempt),
    FOREIGN KEY (tenant_id, delivery_id) REFERENCES deliveries ON DELETE CASCADE
);
SELECT lily_protect_tenant_table('delivery_attempts');

-- Where each tenant's dispatch stands in its change-event feed: every event at or before (xid, seq) has
-- been turned into its deliveries (in the same transaction that moved the position). A row exists for
-- every tenant with a subscription; it starts at the feed's end when the first subscription is made.
CREATE TABLE dispatch_positions (
    tenant_id   text NOT NULL PRIMARY KEY,
    xid         xid8 NOT NULL,
    seq         bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
SELECT lily_protect_tenant_table('dispatch_positions');

-- Dispatchers claim and record deliveries of every tenant, find the tenants with new change events,
-- disable a channel its receiver says is gone (410), and prune; the start-up key check and the
-- re-sealing job read and re-seal channel secrets. All as lily_pipeline. Turning a tenant's change
-- events into deliveries happens in that tenant's own transaction (lily_app).
CREATE POLICY pipeline_dispatches ON deliveries TO lily_pipeline USING (true) WITH CHECK (true);
CREATE POLICY pipeline_records_attempts ON delivery_attempts TO lily_pipeline USING (true) WITH CHECK (true);
CREATE POLICY pipeline_reads_positions ON dispatch_positions FOR SELECT TO lily_pipeline USING (true);
CREATE POLICY pipeline_reads_channels ON notification_channels FOR SELECT TO lily_pipeline USING (true);
CREATE POLICY pipeline_updates_channels ON notification_channels FOR UPDATE TO lily_pipeline
    USING (true) WITH CHECK (true);
GRANT SELECT, INSERT, UPDATE, DELETE ON deliveries, delivery_attempts TO lily_pipeline;
GRANT SELECT ON dispatch_positions TO lily_pipeline;
GRANT SELECT, UPDATE ON notification_channels TO lily_pipeline;
