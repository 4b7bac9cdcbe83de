"""Managed collection: stored configs the scheduler runs, and one log row per run.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from service.db.migrate import execute_script

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_script("""
    CREATE TABLE data_collection_configs (
        id               integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        symbol           text        NOT NULL,
        exchange         text        NOT NULL,
        timeframes       text[]      NOT NULL CHECK (cardinality(timeframes) > 0),
        interval_minutes integer     NOT NULL CHECK (interval_minutes > 0),
        enabled          boolean     NOT NULL DEFAULT true,
        job_id           text        GENERATED ALWAYS AS ('collect_data_' || id) STORED,
        description      text,
        created_at       timestamptz NOT NULL DEFAULT now(),
        updated_at       timestamptz,
        created_by       text,
        -- When the scheduler last started this config's run and when it is due next: the schedule
        -- lives here, so a restart (or another process) rebuilds it from the table.
        last_run_at      timestamptz,
        next_run_at      timestamptz,
        UNIQUE (exchange, symbol)
    );
    CREATE INDEX data_collection_configs_due ON data_collection_configs (next_run_at) WHERE enabled;

    CREATE TABLE job_execution_logs (
        id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        job_name          text        NOT NULL,
        job_type          text        NOT NULL,
        symbol            text,
        exchange          text,
        timeframe         text,
        started_at        timestamptz NOT NULL DEFAULT now(),
        finished_at       timestamptz,
        duration_seconds  double precision,
        status            text        NOT NULL CHECK (status IN ('running', 'success', 'failed', 'skipped')),
        records_collected integer     NOT NULL DEFAULT 0,
        error_message     text,
        error_type        text,
        metadata          jsonb       NOT NULL DEFAULT '{}',
        task_id           uuid
    );
    CREATE INDEX job_execution_logs_started ON job_execution_logs (started_at DESC);
    CREATE INDEX job_execution_logs_job_name ON job_execution_logs (job_name, started_at DESC);
    CREATE INDEX job_execution_logs_type ON job_execution_logs (job_type, started_at DESC);
    CREATE INDEX job_execution_logs_symbol ON job_execution_logs (symbol, started_at DESC);
    CREATE INDEX job_execution_logs_status ON job_execution_logs (status, started_at DESC);
    CREATE INDEX job_execution_logs_running ON job_execution_logs (job_name) WHERE status = 'running';
    """)


def downgrade() -> None:
    execute_script("""
    DROP TABLE job_execution_logs;
    DROP TABLE data_collection_configs;
    """)
