"""What each venue's live streams look like, published by the process streaming them, so that any
process answers GET /api/v1/live (the recommended split deployment serves the API from processes
that do not stream).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-08
"""

from service.db.migrate import execute_script

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_script("""
    -- One row per venue being streamed: its connections and series as the owner last saw them
    -- (about once a second); a row older than a few seconds belongs to a process that is gone.
    CREATE TABLE live_state (
        exchange   text        PRIMARY KEY,
        state      jsonb       NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now()
    );
    """)


def downgrade() -> None:
    execute_script("DROP TABLE live_state;")
