"""Live configs: collected from the venue's kline stream, continuously, instead of on an interval.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07
"""

from service.db.migrate import execute_script

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_script("""
    -- A live config has no interval (it is streamed) and is never due to the scheduler.
    ALTER TABLE data_collection_configs
        ADD COLUMN live boolean NOT NULL DEFAULT false,
        ALTER COLUMN interval_minutes DROP NOT NULL,
        ADD CONSTRAINT data_collection_configs_interval_or_live CHECK (live OR interval_minutes IS NOT NULL);
    """)


def downgrade() -> None:
    execute_script("""
    UPDATE data_collection_configs SET interval_minutes = 1 WHERE interval_minutes IS NULL;
    ALTER TABLE data_collection_configs
        DROP CONSTRAINT data_collection_configs_interval_or_live,
        ALTER COLUMN interval_minutes SET NOT NULL,
        DROP COLUMN live;
    """)
