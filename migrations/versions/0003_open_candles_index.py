"""Open candles are found without scanning history: every run resumes at the oldest one.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from service.db.migrate import execute_script

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Partial: only the few candles still open are indexed, so writes of closed history pay nothing.
    execute_script("""
    CREATE INDEX klines_open ON klines (series_id, open_time) WHERE NOT is_closed;
    """)


def downgrade() -> None:
    execute_script("DROP INDEX klines_open;")
