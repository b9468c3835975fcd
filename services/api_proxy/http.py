"""One pooled httpx.AsyncClient per proxy and the retry policy around every vendor call.

Retried (tenacity, exponential backoff with full jitter, bounded attempts): 429, the provider's
retryable 5xx codes, timeouts and connection errors. A Retry-After header (seconds or HTTP date)
is honoured as a lower bound on the wait; one longer than `max_retry_after_s` ends the call.
Any other 4xx is final and becomes a per-item error carrying the vendor's message, redacted.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from dataclasses import dataclass
from typing import Callable

import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, wait_random_exponential

from services.api_proxy.accounting import BatchCharge
from services.api_proxy.credentials import Auth, HttpCall, Redactor
from services.api_proxy.ratelimit import RateLimiter
from services.api_proxy.usage import Usage
from services.common import metrics

log = logging.getLogger(__name__)

# A 4xx for the whole batch may come from one bad image: these are worth splitting the batch for.
SPLITTABLE_STATUSES = frozenset({400, 413, 422})
_MESSAGE_LIMIT = 500


class UpstreamError(Exception):
    """A vendor call that failed; `message` is already redacted."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
        reason: str = "error",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after
        self.reason = reason

    @property
    def splittable(self) -> bool:
        return self.status in SPLITTABLE_STATUSES


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 6
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0
    max_retry_after_s: float = 300.0
    timeout_s: float = 60.0


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After value: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class VendorHttp:
    def __init__(
        self,
        *,
        policy: RetryPolicy,
        limiter: RateLimiter,
        auth: Auth,
        usage: Usage,
        redactor: Redactor,
        label: str,
        error_message: Callable[[httpx.Response], str],
        retry_after_hint: Callable[[httpx.Response], float | None],
        retry_statuses: frozenset[int],
    ) -> None:
        self.policy = policy
        self._limiter = limiter
        self._auth = auth
        self._usage = usage
        self._redact = redactor
        self._label = label
        self._error_message = error_message
        self._retry_after_hint = retry_after_hint
        self._retry_statuses = retry_statuses
        self._client: httpx.AsyncClient | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            concurrency = self._limiter.limits.concurrency or 100
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.policy.timeout_s),
                limits=httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4),
                follow_redirects=False,
            )
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _wait(self, state: RetryCallState) -> float:
        backoff = wait_random_exponential(
            multiplier=self.policy.backoff_initial_s, max=self.policy.backoff_max_s
        )(state)
        error = state.outcome.exception() if state.outcome else None
        hint = getattr(error, "retry_after", None)
        return max(backoff, hint) if hint is not None else backoff

    def _before_sleep(self, state: RetryCallState, charge: BatchCharge) -> None:
        error = state.outcome.exception() if state.outcome else None
        reason = getattr(error, "reason", "error")
        self._usage.add("retries")
        charge.retries += 1
        metrics.UPSTREAM_RETRIES.labels(self._label, reason).inc()

    async def send(self, call: HttpCall, images: int, charge: BatchCharge) -> httpx.Response:
        """The vendor's 200 answer, or UpstreamError once retries are spent or the error is final.
        Every attempt, retry and 429 is counted on `charge` (the batch's own usage) too."""
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.policy.max_attempts),
            wait=self._wait,
            retry=retry_if_exception(lambda exc: isinstance(exc, UpstreamError) and exc.retryable),
            before_sleep=lambda state: self._before_sleep(state, charge),
            reraise=True,
        )
        attempts = 0
        try:
            async for attempt in retrying:
                with attempt:
                    attempts += 1
                    return await self._attempt(call, images, charge)
        except UpstreamError as exc:
            if exc.retryable:
                exc.message = f"{exc.message} (gave up after {attempts} attempts)"
                exc.args = (exc.message,)
            raise
        raise AssertionError("unreachable: tenacity either returns or raises")

    async def _attempt(self, call: HttpCall, images: int, charge: BatchCharge) -> httpx.Response:
        async with self._limiter.slot(images) as slot:
            signed = await self._auth.apply(call, self.client)
            self._usage.add("requests")
            charge.requests += 1
            self._usage.add("images_sent", images)
            request = self.client.build_request(signed.method, signed.url, headers=signed.headers,
                                                content=signed.body)
            try:
                async with asyncio.timeout(self.policy.timeout_s):
                    response = await self.client.send(request)
            except (TimeoutError, httpx.TimeoutException):
                self._usage.add("timeouts")
                raise UpstreamError(
                    f"no answer within {self.policy.timeout_s:g}s", retryable=True, reason="timeout"
                ) from None
            except httpx.TransportError as exc:
                slot.refund_images()
                self._usage.add("connection_errors")
                raise UpstreamError(
                    f"connection failed: {type(exc).__name__}", retryable=True, reason="connection"
                ) from None
            if response.status_code == 200:
                self._usage.add("requests_ok")
                return response
            # The vendor did not embed these images: their tokens go back to the bucket.
            slot.refund_images()
            if response.status_code == 429:
                charge.rate_limited += 1
            raise self._error_for(response)

    def _error_for(self, response: httpx.Response) -> UpstreamError:
        status = response.status_code
        try:
            detail = self._error_message(response)
        except Exception:  # noqa: BLE001 - an unreadable error body still yields a status
            detail = ""
        detail = self._redact(detail)[:_MESSAGE_LIMIT]
        message = f"HTTP {status}" + (f": {detail}" if detail else "")
        if status == 429:
            self._usage.add("http_429")
            metrics.UPSTREAM_429.labels(self._label).inc()
        if status == 429 or status in self._retry_statuses:
            retry_after = parse_retry_after(response.headers.get("retry-after"))
            if retry_after is None:
                retry_after = self._retry_after_hint(response)
            if retry_after is not None and retry_after > self.policy.max_retry_after_s:
                return UpstreamError(
                    f"{message} (vendor asked to retry after {retry_after:.0f}s, over the "
                    f"{self.policy.max_retry_after_s:g}s limit)", status=status, reason="retry_after_too_long",
                )
            return UpstreamError(
                message, status=status, retryable=True, retry_after=retry_after,
                reason="429" if status == 429 else "5xx",
            )
        return UpstreamError(message, status=status, reason=f"http_{status}")
