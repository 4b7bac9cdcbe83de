"""Pages of candles: which of them are final, as the venue said."""

from __future__ import annotations

from service.records import Kline, KlinePage


def candle(t: int) -> Kline:
    return Kline(t, "1", "1", "1", "1", "1", t + 59_999)


def test_a_page_kept_in_part_keeps_the_venues_word_on_which_candles_are_final() -> None:
    """OKX marks its newest candle unconfirmed: once a refused candle is dropped from the page, the
    unconfirmed one is still not final, whatever its close time says."""
    page = KlinePage(klines=[candle(0), candle(60_000), candle(120_000)], as_of_ms=10**9, closed=2)
    kept = page.keeping([page.klines[0], page.klines[2]])
    assert kept.closed_count() == 1
    assert kept.last_is_open()
    assert KlinePage(klines=page.klines, as_of_ms=10**9).keeping([page.klines[0]]).closed is None
