"""Collection core: symbols, series, klines (+ market_data view) and persisted tasks.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from service.db.migrate import execute_script

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_script("""
    CREATE TABLE symbols (
        exchange     text        NOT NULL,
        symbol       text        NOT NULL,
        base_asset   text        NOT NULL,
        quote_asset  text        NOT NULL,
        status       text        NOT NULL,
        updated_at   timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (exchange, symbol)
    );
    CREATE INDEX symbols_by_pair ON symbols (exchange, base_asset, quote_asset);

    -- One row per (exchange, symbol, timeframe): klines carry only its small integer id,
    -- which keeps the klines key narrow and COPY fast.
    CREATE TABLE series (
        id         integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        exchange   text        NOT NULL,
        symbol     text        NOT NULL,
        timeframe  text        NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        UNIQUE (exchange, symbol, timeframe)
    );

    -- Times are the exchange's own epoch milliseconds (bigint): COPY takes the exchange's digits
    -- as they come; market_data turns them into timestamptz. Values are numeric, never float.
    -- No foreign key to series: a per-row RI check would halve COPY speed, and series rows are
    -- never deleted.
    CREATE TABLE klines (
        series_id              integer NOT NULL,
        open_time              bigint  NOT NULL,
        open                   numeric NOT NULL,
        high                   numeric NOT NULL,
        low                    numeric NOT NULL,
        close                  numeric NOT NULL,
        volume                 numeric NOT NULL,
        close_time             bigint  NOT NULL,
        quote_volume           numeric,
        trades                 bigint,
        taker_buy_base_volume  numeric,
        taker_buy_quote_volume numeric,
        is_closed              boolean NOT NULL,
        PRIMARY KEY (series_id, open_time)
    );

    CREATE VIEW market_data AS
    SELECT s.exchange,
           s.symbol,
           s.timeframe,
           timestamptz 'epoch' + k.open_time * interval '1 millisecond'  AS open_time,
           k.open, k.high, k.low, k.close, k.volume,
           timestamptz 'epoch' + k.close_time * interval '1 millisecond' AS close_time,
           k.quote_volume,
           k.trades,
           k.taker_buy_base_volume,
           k.taker_buy_quote_volume,
           k.is_closed
      FROM klines k
      JOIN series s ON s.id = k.series_id;

    CREATE TABLE tasks (
        id           uuid        PRIMARY KEY,
        task_type    text        NOT NULL,
        status       text        NOT NULL
                     CHECK (status IN ('pending', 'running', 'completed', 'failed', 'cancelled')),
        progress     integer     NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 100),
        message      text,
        params       jsonb       NOT NULL DEFAULT '{}',
        result       jsonb,
        error        text,
        -- Series keys ('binance:BTCUSDT:1m') the task collects: active tasks must not share one.
        series       text[]      NOT NULL DEFAULT '{}',
        created_at   timestamptz NOT NULL DEFAULT now(),
        started_at   timestamptz,
        completed_at timestamptz,
        updated_at   timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX tasks_by_created ON tasks (created_at DESC);
    CREATE INDEX tasks_active ON tasks (status) WHERE status IN ('pending', 'running');
    """)


def downgrade() -> None:
    execute_script("""
    DROP TABLE tasks;
    DROP VIEW market_data;
    DROP TABLE klines;
    DROP TABLE series;
    DROP TABLE symbols;
    """)
