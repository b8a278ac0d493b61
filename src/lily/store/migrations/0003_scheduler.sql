-- The scheduler: which timed jobs the deployment knows, who leads, and every run.
--
-- Leadership itself is a session-level advisory lock held by the leader on a dedicated connection
-- (see lily.scheduler.leader); scheduler_leader only records who holds it, for the admin API.
-- Everything the scheduler writes it writes as lily_pipeline, the role for cross-tenant system work.

-- A job's first sighting anchors its schedule: a due time before it never runs, so a job deployed at
-- noon with a 03:00 cron does not fire at once, while one whose leader was down at 03:00 still does.
CREATE TABLE scheduled_jobs (
    job            text PRIMARY KEY,
    schedule       text NOT NULL,
    first_seen_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    last_seen_at   timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE TABLE scheduler_leader (
    singleton     boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    node          text NOT NULL,           -- host:pid:random of the leading process
    since         timestamptz NOT NULL,
    heartbeat_at  timestamptz NOT NULL
);

-- One row per run. A scheduled run is inserted, already 'running', before its work starts; the unique
-- index on its due time means two leaders (one deposed but still running) can never both run it.
-- A run-now request is inserted 'queued' and claimed by the leader. tenant_id is NULL for
-- deployment-wide jobs and names the tenant for tenant-scoped ones (connector polls, retention).
CREATE TABLE job_runs (
    run_id         uuid PRIMARY KEY,
    job            text NOT NULL CHECK (length(job) BETWEEN 1 AND 200),
    tenant_id      text REFERENCES tenants ON DELETE CASCADE,
    trigger        text NOT NULL CHECK (trigger IN ('schedule', 'manual')),
    scheduled_for  timestamptz NOT NULL,
    state          text NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed')),
    requested_by   text,
    runner         text,
    created_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    started_at     timestamptz,
    finished_at    timestamptz,
    error          text,
    result         jsonb,
    CHECK ((trigger = 'schedule') = (requested_by IS NULL)),
    CHECK ((state = 'queued') = (started_at IS NULL)),
    CHECK ((state IN ('succeeded', 'failed')) = (finished_at IS NOT NULL))
);
CREATE UNIQUE INDEX job_runs_due ON job_runs (job, (coalesce(tenant_id, '')), scheduled_for)
    WHERE trigger = 'schedule';
-- At most one waiting run-now request per job (and tenant): asking again while one waits returns it.
CREATE UNIQUE INDEX job_runs_queued ON job_runs (job, (coalesce(tenant_id, ''))) WHERE state = 'queued';
-- The runs list, newest first, and the last run of every job.
CREATE INDEX job_runs_by_job ON job_runs (job, scheduled_for DESC, run_id DESC);
CREATE INDEX job_runs_unfinished ON job_runs (state) WHERE state IN ('queued', 'running');

-- Tenant isolation: a tenant sees its own runs (the standard policy) and, with a tenant set, the rows
-- of deployment-wide jobs (the API shows a tenant admin their metadata but not their errors). With no
-- tenant set nothing is visible, as for every tenant table.
SELECT lily_protect_tenant_table('job_runs');
CREATE POLICY system_runs_visible_to_tenants ON job_runs FOR SELECT
    USING (tenant_id IS NULL AND coalesce(current_setting('lily.tenant_id', true), '') <> '');
CREATE POLICY scheduler_runs_jobs ON job_runs TO lily_pipeline USING (true) WITH CHECK (true);

GRANT SELECT, INSERT, UPDATE, DELETE ON scheduled_jobs, scheduler_leader, job_runs TO lily_pipeline;

-- The built-in prune job (lily.scheduler.builtin) deletes, across tenants, only what has expired:
-- revocations of tokens past their expiry (such a token is refused as expired anyway) and idempotency
-- keys, whose age limit is a setting and so is applied by the job's query.
CREATE POLICY scheduler_reads_expired ON revoked_tokens FOR SELECT TO lily_pipeline USING (expires_at < now());
CREATE POLICY scheduler_prunes_expired ON revoked_tokens FOR DELETE TO lily_pipeline USING (expires_at < now());
CREATE POLICY scheduler_reads_keys ON idempotency_keys FOR SELECT TO lily_pipeline USING (true);
CREATE POLICY scheduler_prunes_keys ON idempotency_keys FOR DELETE TO lily_pipeline USING (true);
GRANT SELECT, DELETE ON revoked_tokens, idempotency_keys TO lily_pipeline;
CREATE INDEX revoked_tokens_expiry ON revoked_tokens (expires_at);
CREATE INDEX idempotency_keys_age ON idempotency_keys (created_at);
