"""Emptying klines with TRUNCATE also forgets its verified coverage (row triggers never see a TRUNCATE).

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29
"""

from service.db.migrate import execute_script

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_script("""
    -- DELETE cuts the verified ranges that held the deleted candles (klines_deleted); TRUNCATE
    -- removes every candle, so every verified range goes. Exchange gaps and failed ranges stay:
    -- they describe the exchange's answers, not what is stored.
    CREATE FUNCTION kline_collector_klines_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN DELETE FROM coverage WHERE kind = 'verified'; RETURN NULL; END $$;
    CREATE TRIGGER klines_truncated AFTER TRUNCATE ON klines
        FOR EACH STATEMENT EXECUTE FUNCTION kline_collector_klines_truncated();
    """)


def downgrade() -> None:
    execute_script("""
    DROP TRIGGER klines_truncated ON klines;
    DROP FUNCTION kline_collector_klines_truncated();
    """)
