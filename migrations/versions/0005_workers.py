"""Durable tasks any process can claim: the workers table, task ownership and cancel requests, periodic runs.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from service.db.migrate import execute_script

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_script("""
    -- One row per live process that runs tasks (a web process, or a `worker`). It refreshes
    -- heartbeat_at every few seconds; a row older than LEASE_SECONDS belongs to a dead process, whose
    -- peers delete it and take its tasks back. The database's clock decides, never a process's.
    CREATE TABLE workers (
        id           uuid        PRIMARY KEY,
        kind         text        NOT NULL CHECK (kind IN ('web', 'worker', 'cli')),
        hostname     text        NOT NULL,
        pid          integer     NOT NULL,
        started_at   timestamptz NOT NULL DEFAULT now(),
        heartbeat_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX workers_heartbeat ON workers (heartbeat_at);

    -- A running task belongs to one worker; when that worker's row goes (dead, or shut down), the
    -- task is left running with no owner, and the next process that looks takes it back (pending).
    ALTER TABLE tasks
        ADD COLUMN worker_id           uuid REFERENCES workers (id) ON DELETE SET NULL,
        ADD COLUMN attempts            integer NOT NULL DEFAULT 0,
        ADD COLUMN cancel_requested_at timestamptz,
        ADD COLUMN cancel_reason       text;
    CREATE INDEX tasks_claimable ON tasks (created_at) WHERE status = 'pending';
    CREATE INDEX tasks_owned ON tasks (worker_id) WHERE status = 'running';

    -- Periodic jobs besides the configs (symbol refresh, retention): one row per job, claimed with a
    -- conditional UPDATE, so each due time runs once across every process.
    CREATE TABLE periodic_runs (
        name        text        PRIMARY KEY,
        next_run_at timestamptz NOT NULL
    );
    """)


def downgrade() -> None:
    execute_script("""
    DROP TABLE periodic_runs;
    DROP INDEX tasks_owned;
    DROP INDEX tasks_claimable;
    ALTER TABLE tasks
        DROP COLUMN cancel_reason,
        DROP COLUMN cancel_requested_at,
        DROP COLUMN attempts,
        DROP COLUMN worker_id;
    DROP TABLE workers;
    """)
