"""One venue's request loop: a limiter slot, a timeout, retries of what is worth retrying, and the
venue's own answers turned into the same few outcomes (data, wait, refused, try again).

Each client gives a `judge` that reads an answer the way its venue writes them: Bybit's envelope
with `retCode`, OKX's `code` "50011", Kraken's `EAPI:Rate limit exceeded` inside an HTTP 200. The
loop does the rest the same way for every venue.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Protocol, TypeVar

import aiohttp
import msgspec
import stamina

from service.cpu_turns import CpuTurns
from service.exchanges.base import (
    ExchangeError,
    InvalidRequestError,
    LimiterState,
    RequestObserver,
    TransientExchangeError,
    WaitCallback,
)

__all__ = ["Answer", "RequestLimiter", "Resend", "VenueRequests", "Verdict", "Wait", "http_verdict"]

T = TypeVar("T")

# Consecutive orders to wait on one request before it is given up as an error.
_MAX_WAITS = 10


class RequestLimiter(Protocol):
    """What the request loop needs of a venue's limiter (WeightLimiter and WindowLimiter)."""

    @property
    def clock(self) -> Callable[[], float]: ...

    @property
    def state(self) -> LimiterState: ...

    def slot(self, cost: int, on_wait: WaitCallback | None = None) -> AbstractAsyncContextManager[None]:
        """Hold one in-flight place with `cost` counted against the venue's limit."""
        ...

    def pause(self, seconds: float, reason: str) -> None:
        """Hold every request for `seconds` (the venue said so)."""
        ...


class Answer(msgspec.Struct, frozen=True):
    """One HTTP answer as the judge sees it."""

    path: str
    status: int
    headers: Mapping[str, str]
    body: bytes
    sent_at: float
    """Epoch seconds (the limiter's clock) just before the request was sent."""


class Wait(msgspec.Struct, frozen=True):
    """The venue ordered a pause (a rate limit or a ban): every request waits, then this one is sent again."""

    seconds: float
    reason: str
    """`rate_limited` or `banned` (shown on /status and in the metrics)."""
    status: str
    """What the venue answered, for the metrics: an HTTP status or the venue's code."""


class Resend(msgspec.Struct, frozen=True):
    """The venue ordered a pause and the judge has set the limiter itself (Binance's 429 also
    states its new limit): send this request again once the limiter lets it."""

    status: str


#: What a judge says of an answer: None for data to parse; a Wait or Resend; or an error to raise
#: (InvalidRequestError is never retried, TransientExchangeError is). The judge runs as soon as the
#: answer is read, before any other request is let through: what it teaches the limiter counts
#: for the very next one.
Verdict = Wait | Resend | ExchangeError | None


class VenueRequests:
    """GETs to one venue through its limiter, judged by its rules."""

    def __init__(
        self,
        name: str,
        session: aiohttp.ClientSession,
        limiter: RequestLimiter,
        *,
        base_url: str,
        timeout: float,
        retry_attempts: int,
        retry_wait_initial: float,
        cpu: CpuTurns,
        judge: Callable[[Answer], Verdict],
        observer: RequestObserver | None = None,
    ) -> None:
        self.name = name
        self._session = session
        self._limiter = limiter
        self._base_url = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._retry_attempts = retry_attempts
        self._retry_wait_initial = retry_wait_initial
        self._cpu = cpu
        self._judge = judge
        self._observer = observer

    async def get(
        self,
        path: str,
        params: Mapping[str, str],
        cost: int,
        on_wait: WaitCallback | None,
        parse: Callable[[bytes, float], T],
        *,
        limiter: RequestLimiter | None = None,
    ) -> T:
        """The parsed answer of GET `path`; `parse` gets the body and when its request was sent, and
        runs inside the retry (a garbled body is retried like a dropped connection). `limiter`: another
        of the venue's limiters for this endpoint (OKX counts each endpoint apart)."""
        use = limiter or self._limiter
        # The first attempt outside the retry machinery: it is the one nearly every request makes.
        try:
            body, sent_at = await self._get_once(path, params, cost, on_wait, use)
            async with self._cpu.turn():
                return parse(body, sent_at)
        except TransientExchangeError:
            if self._retry_attempts <= 1:
                raise
        await asyncio.sleep(self._retry_wait_initial * (1 + random.random()))  # noqa: S311 - jitter, not secrets
        async for attempt in stamina.retry_context(
            on=TransientExchangeError,
            attempts=self._retry_attempts - 1,
            timeout=None,
            wait_initial=self._retry_wait_initial,
            wait_max=30 * self._retry_wait_initial,
            wait_jitter=self._retry_wait_initial,
        ):
            with attempt:
                body, sent_at = await self._get_once(path, params, cost, on_wait, use)
                async with self._cpu.turn():
                    return parse(body, sent_at)
        raise AssertionError("unreachable: stamina re-raises the last error")  # pragma: no cover

    async def _get_once(
        self, path: str, params: Mapping[str, str], cost: int, on_wait: WaitCallback | None, limiter: RequestLimiter
    ) -> tuple[bytes, float]:
        url = self._base_url + path
        waits = 0
        while True:
            async with limiter.slot(cost, on_wait):
                # Taken before sending: the venue produced its answer after this moment.
                sent_at = limiter.clock()
                try:
                    async with self._session.get(url, params=params, timeout=self._timeout) as resp:
                        answer = Answer(path, resp.status, resp.headers, await resp.read(), sent_at)
                except TimeoutError:
                    self._observe(path, "timeout")
                    raise TransientExchangeError(f"{path}: no answer within {self._timeout.total} s") from None
                except aiohttp.ClientError as exc:
                    self._observe(path, "error")
                    raise TransientExchangeError(
                        f"{path}: connection failed ({exc.__class__.__name__}: {exc})"
                    ) from None
                verdict = self._judge(answer)
            if isinstance(verdict, Wait | Resend):
                self._observe(path, verdict.status)
                if isinstance(verdict, Wait):
                    if self._observer is not None:
                        self._observer.paused(self.name, verdict.status, verdict.seconds)
                    limiter.pause(verdict.seconds, verdict.reason)
                waits += 1
                if waits > _MAX_WAITS:
                    raise ExchangeError(f"{path}: told to wait {waits} times in a row")
                continue
            self._observe(path, str(answer.status))
            if verdict is not None:
                raise verdict
            return answer.body, sent_at

    def _observe(self, path: str, status: str) -> None:
        if self._observer is not None:
            self._observer.request_done(self.name, path, status)


def http_verdict(answer: Answer, refused: Callable[[Answer], InvalidRequestError]) -> Verdict:
    """The plain HTTP reading most venues share: 5xx is worth a retry, another 4xx is refused."""
    if answer.status >= 500:
        return TransientExchangeError(f"{answer.path}: HTTP {answer.status} from the exchange")
    if answer.status >= 400:
        return refused(answer)
    return None
