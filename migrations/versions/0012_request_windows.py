"""The sliding request windows of the venues that count requests so (Bybit, OKX per endpoint,
Coinbase, Kraken), shared by every process on one IP like Binance's weight minutes.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""

from service.db.migrate import execute_script

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_script("""
    -- One row per budget (a venue, or one endpoint of it): when each request in the venue's window
    -- stops counting (epoch seconds on the processes' clock; one element per unit of cost, sorted
    -- but for the newest). A reservation is one upsert: it drops what has expired and appends the
    -- request only if the rest leaves room; concurrent ones queue on the row lock. `granted` is what
    -- the latest reservation got (PostgreSQL before 18 cannot return a row's old value). Pauses stay
    -- in weight_budgets, under the budget's name.
    CREATE TABLE request_windows (
        budget        text             PRIMARY KEY,
        counted_until double precision[] NOT NULL,
        granted       boolean          NOT NULL DEFAULT false,
        updated_at    timestamptz      NOT NULL DEFAULT now()
    );
    """)


def downgrade() -> None:
    execute_script("DROP TABLE request_windows;")
