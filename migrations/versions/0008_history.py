"""Complete, verified history: listing starts, a coverage ledger, a quarantine, candle checks, listing pauses.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29
"""

from service.db.migrate import execute_script

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_script("""
    -- The open time of the exchange's first candle of each series (its listing), once it was asked.
    ALTER TABLE series ADD COLUMN listing_start bigint;

    -- Ranges of candle open times, half-open [start_time, end_time), one kind each, never overlapping
    -- within a series (the exclusion constraint is the second line behind the code that merges them).
    -- Written in the same transaction as the candles they describe.
    CREATE EXTENSION IF NOT EXISTS btree_gist;
    CREATE TABLE coverage (
        series_id  integer     NOT NULL REFERENCES series (id),
        start_time bigint      NOT NULL,
        end_time   bigint      NOT NULL,
        kind       text        NOT NULL CHECK (kind IN ('verified', 'exchange_gap', 'failed')),
        -- exchange_gap: how many fetches found the range empty (2 after its confirmation, 3 once
        -- re-checked a day later); verified and failed: 1.
        checks     smallint    NOT NULL DEFAULT 1,
        checked_at timestamptz NOT NULL DEFAULT now(),
        detail     text,
        CHECK (end_time > start_time),
        PRIMARY KEY (series_id, start_time),
        EXCLUDE USING gist (series_id WITH =, int8range(start_time, end_time) WITH &&)
    );

    -- Deleting candles (by hand, or any future retention) cuts the verified ranges that held them, so
    -- the ledger never claims candles that are gone: per series, [first, last] deleted becomes a hole
    -- (candles of that span still stored are simply fetched again by a repair).
    CREATE FUNCTION kline_collector_klines_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        WITH cut AS (
            SELECT series_id, min(open_time) AS lo, max(open_time) + 1 AS hi FROM gone GROUP BY series_id
        ), hit AS (
            DELETE FROM coverage c USING cut
             WHERE c.series_id = cut.series_id AND c.kind = 'verified'
               AND c.start_time < cut.hi AND c.end_time > cut.lo
            RETURNING c.series_id, c.start_time, c.end_time, c.kind, c.checks, c.checked_at, c.detail, cut.lo, cut.hi
        )
        INSERT INTO coverage (series_id, start_time, end_time, kind, checks, checked_at, detail)
        SELECT series_id, start_time, lo, kind, checks, checked_at, detail FROM hit WHERE start_time < lo
        UNION ALL
        SELECT series_id, hi, end_time, kind, checks, checked_at, detail FROM hit WHERE end_time > hi;   RETURN NULL; END $$;
    CREATE TRIGGER klines_deleted AFTER DELETE ON klines REFERENCING OLD TABLE AS gone
        FOR EACH STATEMENT EXECUTE FUNCTION kline_collector_klines_deleted();

    -- Candles the exchange sent that failed a check: never in klines, kept with the reason and the row.
    CREATE TABLE quarantined_klines (
        id             bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        series_id      integer     NOT NULL REFERENCES series (id),
        open_time      bigint      NOT NULL,
        reason         text        NOT NULL,
        raw            jsonb       NOT NULL,
        task_id        uuid,
        quarantined_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX quarantined_klines_series ON quarantined_klines (series_id, open_time);

    -- The second line of defence behind the ingest checks. NOT VALID: enforced for every new or
    -- changed row; rows stored before this revision are not re-read (a large table would be
    -- scanned under lock). NaN and infinities compare above every number in PostgreSQL, so the
    -- bounds on high and the volumes also keep them out.
    ALTER TABLE klines ADD CONSTRAINT klines_candle_valid CHECK (
            low <= open AND low <= close AND open <= high AND close <= high
        AND low >= 0 AND high < 'Infinity'
        AND volume >= 0 AND volume < 'Infinity'
        AND (quote_volume IS NULL OR (quote_volume >= 0 AND quote_volume < 'Infinity'))
        AND (taker_buy_base_volume IS NULL OR (taker_buy_base_volume >= 0 AND taker_buy_base_volume < 'Infinity'))
        AND (taker_buy_quote_volume IS NULL OR (taker_buy_quote_volume >= 0 AND taker_buy_quote_volume < 'Infinity'))
        AND (trades IS NULL OR trades >= 0)
        AND close_time > open_time
    ) NOT VALID;

    -- A config's history: from a date, or from the symbol's listing; neither: the recent
    -- DEFAULT_HISTORY_CANDLES only.
    ALTER TABLE data_collection_configs
        ADD COLUMN history_start        timestamptz,
        ADD COLUMN history_from_listing boolean NOT NULL DEFAULT false,
        -- Set while the config's symbol does not trade (BREAK, HALT, DELISTED): not scheduled.
        ADD COLUMN paused_reason        text,
        ADD COLUMN paused_at            timestamptz,
        ADD CHECK (NOT (history_from_listing AND history_start IS NOT NULL));

    -- A running task's estimated seconds to completion, from its measured throughput.
    ALTER TABLE tasks ADD COLUMN eta_seconds double precision;

    CREATE OR REPLACE FUNCTION kline_collector_task_event() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('kline_collector_events', json_build_object(
            'type', 'task', 'task_id', NEW.id, 'task_type', NEW.task_type, 'status', NEW.status,
            'progress', NEW.progress, 'message', left(NEW.message, 500), 'attempts', NEW.attempts,
            'worker_id', NEW.worker_id, 'created_at', NEW.created_at, 'started_at', NEW.started_at,
            'completed_at', NEW.completed_at, 'updated_at', NEW.updated_at, 'eta_seconds', NEW.eta_seconds
        )::text); RETURN NULL; END $$;
    """)


def downgrade() -> None:
    execute_script("""
    CREATE OR REPLACE FUNCTION kline_collector_task_event() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('kline_collector_events', json_build_object(
            'type', 'task', 'task_id', NEW.id, 'task_type', NEW.task_type, 'status', NEW.status,
            'progress', NEW.progress, 'message', left(NEW.message, 500), 'attempts', NEW.attempts,
            'worker_id', NEW.worker_id, 'created_at', NEW.created_at, 'started_at', NEW.started_at,
            'completed_at', NEW.completed_at, 'updated_at', NEW.updated_at
        )::text); RETURN NULL; END $$;
    ALTER TABLE tasks DROP COLUMN eta_seconds;
    ALTER TABLE data_collection_configs
        DROP COLUMN history_start, DROP COLUMN history_from_listing,
        DROP COLUMN paused_reason, DROP COLUMN paused_at;
    ALTER TABLE klines DROP CONSTRAINT klines_candle_valid;
    DROP TABLE quarantined_klines;
    DROP TRIGGER klines_deleted ON klines;
    DROP FUNCTION kline_collector_klines_deleted();
    DROP TABLE coverage;
    ALTER TABLE series DROP COLUMN listing_start;
    """)
