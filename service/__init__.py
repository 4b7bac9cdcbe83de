"""kline-collector: crypto exchange candles into PostgreSQL, steered through a REST API."""

__version__ = "0.1.0"
