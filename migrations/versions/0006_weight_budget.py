"""The exchange weight budget every process on one IP shares: limit and pause per exchange, weight per minute.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from service.db.migrate import execute_script

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_script("""
    -- One row per exchange: the weight limit a process last learnt from the exchange, and a pause
    -- (after a 429 or 418) every process obeys. Times are epoch seconds on the processes' own clock,
    -- the clock the minute windows are counted on, not the database's.
    CREATE TABLE weight_budgets (
        exchange     text             PRIMARY KEY,
        weight_limit integer          CHECK (weight_limit > 0),
        paused_until double precision,
        pause_reason text,
        updated_at   timestamptz      NOT NULL DEFAULT now()
    );

    -- One row per exchange and minute (epoch seconds // 60): the weight reserved in it by every
    -- process together, raised to the exchange's own count when that is higher. A process reserves
    -- a few requests' weight at a time and spends it locally. last_grant is what the latest
    -- reservation got: PostgreSQL before 18 cannot return a row's old value, and the grant depends on it.
    -- Rows older than an hour are deleted by the processes as the minutes turn.
    CREATE TABLE weight_budget_windows (
        exchange   text    NOT NULL,
        minute     bigint  NOT NULL,
        used       integer NOT NULL CHECK (used >= 0),
        last_grant integer NOT NULL DEFAULT 0 CHECK (last_grant >= 0),
        PRIMARY KEY (exchange, minute)
    );
    """)


def downgrade() -> None:
    execute_script("""
    DROP TABLE weight_budget_windows;
    DROP TABLE weight_budgets;
    """)
