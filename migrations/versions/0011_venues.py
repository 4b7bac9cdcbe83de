"""Every venue's symbols: a neutral listing state, the venue's other spellings, the settle asset;
and where a series' candles open, learnt where the venue does not document it.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""

from typing import get_args

from service.db.migrate import execute_script
from service.records import ListingState

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_STATES = ", ".join(f"'{state}'" for state in get_args(ListingState))


def upgrade() -> None:
    execute_script(f"""
    -- `status` stays the venue's own word (TRADING, BREAK, live, online…), shown to users; `state` is
    -- what the service acts on, the same on every venue: configs of a symbol not trading are paused.
    ALTER TABLE symbols
        ADD COLUMN state text NOT NULL DEFAULT 'trading' CHECK (state IN ({_STATES})),
        ADD COLUMN aliases text[] NOT NULL DEFAULT '{{}}',
        ADD COLUMN settle_asset text;
    UPDATE symbols SET state = CASE status WHEN 'TRADING' THEN 'trading' WHEN 'DELISTED' THEN 'delisted'
                                           ELSE 'paused' END;
    -- Kraken's XBTUSD for the pair XXBTZUSD: any spelling finds the stored id.
    CREATE INDEX symbols_by_alias ON symbols USING gin (aliases);

    -- Open times of the series are grid_offset_ms + k * step: learnt from the venue's answers where
    -- it does not document its grid (Kraken's weeks); NULL where the venue's documented grid holds.
    ALTER TABLE series ADD COLUMN grid_offset_ms bigint;
    """)


def downgrade() -> None:
    execute_script("""
    ALTER TABLE series DROP COLUMN grid_offset_ms;
    DROP INDEX symbols_by_alias;
    ALTER TABLE symbols DROP COLUMN settle_asset, DROP COLUMN aliases, DROP COLUMN state;
    """)
