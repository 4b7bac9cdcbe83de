"""Every change of a task or an execution log is announced on one channel, from whichever process made it.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from service.db.migrate import execute_script

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_script("""
    -- (execute_script ends a statement at a line ending in a semicolon: the function bodies end theirs
    -- mid-line.) A trigger, not the code: every write path (any process, a task's progress, a recovery by a peer,
    -- an operator's UPDATE) is announced, when its transaction commits. Payloads stay small (NOTIFY
    -- allows 8000 bytes): what changed and its new state; details are read through the API.
    CREATE FUNCTION kline_collector_task_event() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('kline_collector_events', json_build_object(
            'type', 'task', 'task_id', NEW.id, 'task_type', NEW.task_type, 'status', NEW.status,
            'progress', NEW.progress, 'message', left(NEW.message, 500), 'attempts', NEW.attempts,
            'worker_id', NEW.worker_id, 'created_at', NEW.created_at, 'started_at', NEW.started_at,
            'completed_at', NEW.completed_at, 'updated_at', NEW.updated_at
        )::text); RETURN NULL; END $$;
    CREATE TRIGGER tasks_event AFTER INSERT OR UPDATE ON tasks
        FOR EACH ROW EXECUTE FUNCTION kline_collector_task_event();

    CREATE FUNCTION kline_collector_log_event() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('kline_collector_events', json_build_object(
            'type', 'execution_log', 'id', NEW.id, 'job_name', NEW.job_name, 'job_type', NEW.job_type,
            'symbol', NEW.symbol, 'exchange', NEW.exchange, 'status', NEW.status,
            'records_collected', NEW.records_collected, 'error_type', NEW.error_type,
            'error_message', left(NEW.error_message, 500), 'task_id', NEW.task_id,
            'started_at', NEW.started_at, 'finished_at', NEW.finished_at,
            'duration_seconds', NEW.duration_seconds
        )::text); RETURN NULL; END $$;
    CREATE TRIGGER job_execution_logs_event AFTER INSERT OR UPDATE ON job_execution_logs
        FOR EACH ROW EXECUTE FUNCTION kline_collector_log_event();
    """)


def downgrade() -> None:
    execute_script("""
    DROP TRIGGER job_execution_logs_event ON job_execution_logs;
    DROP FUNCTION kline_collector_log_event();
    DROP TRIGGER tasks_event ON tasks;
    DROP FUNCTION kline_collector_task_event();
    """)
