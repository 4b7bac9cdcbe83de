"""Every change to an account is announced, so that each process drops what it cached of it.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

from service.db.migrate import execute_script

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_script("""
    -- Processes keep the accounts that tokens name in memory (service/auth/users_cache.py). A trigger,
    -- not the code, announces the change, so an operator's UPDATE in psql, a create-user run and any
    -- other process's write all reach them, when the transaction commits. The payload is the user id;
    -- an empty payload (TRUNCATE) means every account.
    CREATE FUNCTION kline_collector_user_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN PERFORM pg_notify('kline_collector_users', OLD.id::text); RETURN NULL; END $$;
    CREATE TRIGGER users_changed AFTER UPDATE OR DELETE ON users
        FOR EACH ROW EXECUTE FUNCTION kline_collector_user_changed();

    CREATE FUNCTION kline_collector_users_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN PERFORM pg_notify('kline_collector_users', ''); RETURN NULL; END $$;
    CREATE TRIGGER users_truncated AFTER TRUNCATE ON users
        FOR EACH STATEMENT EXECUTE FUNCTION kline_collector_users_truncated();
    """)


def downgrade() -> None:
    execute_script("""
    DROP TRIGGER users_truncated ON users;
    DROP FUNCTION kline_collector_users_truncated();
    DROP TRIGGER users_changed ON users;
    DROP FUNCTION kline_collector_user_changed();
    """)
