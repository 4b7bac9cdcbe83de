"""The benchmark behind the speed claims: `uv run python -m tests.bench [--quick] [--scenario N ...] [--json FILE]`.

It starts everything it measures, each in its own process, and stops it all at the end:

- an embedded PostgreSQL in a temporary directory, migrated once into a template database that each
  run clones (so every run writes into the same, freshly migrated schema);
- the fake Binance (`python -m tests.fakes.binance`) with its candles built before any timing starts;
  its own CPU time is read from its `GET /__stats` and reported beside the service's;
- the service itself, `python -m service serve`, one process per run, driven over HTTP.

Scenarios (numbers as in the issue; `--quick` shrinks every size so the whole command takes seconds):

1. reference workload: 50 symbols x 6 timeframes x 100 candles at 20 ms exchange latency;
2. bulk ingest of >= 1,000,000 candles, against a server-side COPY of the same rows into the same table;
3. responsiveness during scenario 2: open-loop GETs of /health and /status, and the event loop's lag;
4. pacing against a 1200/min weight limit learnt from exchangeInfo, at 50 ms latency;
5. peak RSS during scenario 2, and again with the backfill doubled;
6. start-up: process start to the first `/health` 200 on an existing database;
7. readers during a backfill: 40 closed-loop clients of /health, /status and /klines (100 and 1000
   candles of a stored series) while the other bulk symbols are backfilled; latency and 5xx per route;
8. the console in headless Chromium: first paint, data on screen and bytes per page;
9. every venue at once (Binance spot, Bybit, OKX, Coinbase, Kraken; not Binance USD-M, which the fake
   Binance does not serve): each venue's own fake with its real limit and 50 ms latency, one /start
   per venue of 10 symbols x 3 timeframes; per venue the limit errors its fake answered (target 0) and
   the share of its limit used while collecting (target >= 80% where the run is limit-bound).
"""
