"""ProxyModel: the AsyncEmbedder that serves a commercial API through the common gRPC servicer.

Per call: prepare images (threads), answer from the cache or an identical image already in
flight, split the rest into vendor-sized requests, send them under the rate limits, and check
every answer (one vector per image sent, `dim` values each, all finite). Whatever happens, each
item ends with exactly one vector or one error: nothing is silently dropped, merged or faked.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import Mapping, Sequence

import numpy as np

from services.api_proxy.cache import EmbeddingCache
from services.api_proxy.credentials import CredentialsError, Redactor
from services.api_proxy.http import RetryPolicy, UpstreamError, VendorHttp
from services.api_proxy.images import ImageRejected, PreparedImage, prepare
from services.api_proxy.providers.base import MalformedResponse, Provider, ProviderContext
from services.api_proxy.providers.registry import default_model, provider_class
from services.api_proxy.ratelimit import Limits, RateLimiter
from services.api_proxy.settings import ProxySettings
from services.api_proxy.usage import USAGE_DETAILS_KEY, Price, Usage, load_price_table
from services.common.servicer import Overloaded
from services.common.types import Embedding, ErrorCode, ImageItem, ItemError, ModelInfo

log = logging.getLogger(__name__)

Outcome = np.ndarray | ItemError
_INLINE_DECODE_BYTES = 64 * 1024


def _limit(setting: float | None, default: float | None) -> float | None:
    """None keeps the provider's default; 0 lifts the limit."""
    if setting is None:
        return default
    return setting or None


class ProxyModel:
    def __init__(
        self,
        provider: Provider,
        *,
        limits: Limits,
        policy: RetryPolicy,
        cache: EmbeddingCache | None = None,
        price: Price | None = None,
        redactor: Redactor | None = None,
        max_batch: int | None = None,
        max_request_items: int = 256,
        max_pending_images: int = 4096,
        max_input_pixels: int = 64_000_000,
    ) -> None:
        self.provider = provider
        self.name = f"{provider.name}/{provider.spec.name}"
        self.limits = limits
        self.cache = cache
        self.redactor = redactor or Redactor()
        self.redactor.add_source(provider.auth)
        self._usage = Usage(provider.name, provider.spec.name, price)
        self._limiter = RateLimiter(limits)
        self._http = VendorHttp(
            policy=policy, limiter=self._limiter, auth=provider.auth, usage=self._usage,
            redactor=self.redactor, label=self.name, error_message=provider.error_message,
            retry_after_hint=provider.retry_after_hint, retry_statuses=provider.retry_statuses,
        )
        caps = [provider.max_batch(), max_batch, self._limiter.max_images_per_request()]
        self.vendor_batch = max(1, min(c for c in caps if c is not None))
        self._max_request_items = max_request_items
        self._max_pending = max_pending_images
        self._max_input_pixels = max_input_pixels
        self._pending = 0
        self._inflight: dict[str, asyncio.Future] = {}
        self._tasks: set[asyncio.Task] = set()
        self._info = self._build_info(policy)

    @classmethod
    def from_settings(cls, settings: ProxySettings, environ: Mapping[str, str] | None = None) -> "ProxyModel":
        environ = dict(os.environ) if environ is None else environ
        provider_cls = provider_class(settings.provider)
        model = settings.model or default_model(settings.provider)
        provider = provider_cls.create(ProviderContext(
            model=model,
            dimension=settings.dimension,
            base_url=settings.resolved_base_url(environ),
            environ=environ,
            secret_file=settings.api_key_file,
            options={"project": settings.project, "location": settings.location, "region": settings.region},
        ))
        defaults = provider.spec.limits
        limits = Limits(
            requests_per_minute=_limit(settings.rpm, defaults.requests_per_minute),
            images_per_minute=_limit(settings.ipm, defaults.images_per_minute),
            concurrency=int(_limit(settings.concurrency, defaults.concurrency) or 0),
            burst_seconds=settings.burst_seconds,
            jitter_s=settings.jitter_s,
        )
        price = provider.spec.price
        if settings.price_table is not None:
            price = load_price_table(settings.price_table).get(f"{provider.name}/{model}", price)
        cache_dir = settings.resolved_cache_dir(environ)
        redactor = Redactor()
        redactor.add(settings.resolved_auth_token())
        return cls(
            provider,
            limits=limits,
            policy=RetryPolicy(
                max_attempts=settings.max_attempts, backoff_initial_s=settings.backoff_initial_s,
                backoff_max_s=settings.backoff_max_s, max_retry_after_s=settings.max_retry_after_s,
                timeout_s=settings.timeout_s,
            ),
            cache=EmbeddingCache(cache_dir, provider.name, model, provider.dim) if cache_dir else None,
            price=price,
            redactor=redactor,
            max_batch=settings.max_batch,
            max_request_items=settings.max_request_items,
            max_pending_images=settings.max_pending_images,
            max_input_pixels=settings.max_input_pixels,
        )

    # --- AsyncEmbedder ---------------------------------------------------------------------

    def _build_info(self, policy: RetryPolicy) -> ModelInfo:
        spec, provider = self.provider.spec, self.provider
        preprocessing = spec.images.describe()
        if spec.vendor_preprocessing:
            preprocessing += f"; vendor side: {spec.vendor_preprocessing}"
        details = {
            "provider": provider.name,
            "vendor_model": spec.name,
            "endpoint": provider.endpoint(),
            "credentials": provider.auth.describe(),
            "vendor_batch": str(self.vendor_batch),
            "limits": json.dumps(self.limits.as_dict()),
            "retry": json.dumps({
                "max_attempts": policy.max_attempts, "backoff_initial_s": policy.backoff_initial_s,
                "backoff_max_s": policy.backoff_max_s, "timeout_s": policy.timeout_s,
            }),
            "cache": str(self.cache.directory) if self.cache else "off",
            "price": json.dumps(self._usage.price.as_dict() if self._usage.price else None),
            "usage_contract": f"details['{USAGE_DETAILS_KEY}'] holds a JSON usage snapshot taken at each Info call",
        }
        return ModelInfo(
            name=self.name,
            dim=provider.dim,
            preprocessing=preprocessing,
            normalized=provider.normalized,
            revision=spec.name,
            max_batch=self._max_request_items,
            backend=provider.name,
            details={key: self.redactor(value) for key, value in details.items()},
        )

    def info(self) -> ModelInfo:
        return self._info

    def usage(self) -> dict:
        return self._usage.snapshot()

    def info_details(self) -> dict[str, str]:
        """Live details merged into every Info answer (the servicer calls this per request)."""
        return {USAGE_DETAILS_KEY: self.redactor(json.dumps(self.usage(), sort_keys=True))}

    async def start(self) -> None:
        _ = self._http.client

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._http.close()

    async def __aenter__(self) -> "ProxyModel":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def embed(self, items: Sequence[ImageItem]) -> list[Embedding]:
        if self._pending + len(items) > self._max_pending:
            raise Overloaded(f"{self._pending} images already waiting for {self.name}")
        self._pending += len(items)
        try:
            outcomes = await self._embed(items)
        finally:
            self._pending -= len(items)
        results = []
        for item, outcome in zip(items, outcomes):
            if isinstance(outcome, ItemError):
                self._usage.add("items_failed")
                self._usage.add_error(outcome.code.name)
                results.append(Embedding(id=item.id, error=outcome))
            else:
                results.append(Embedding(id=item.id, vector=outcome))
        return results

    # --- internals -------------------------------------------------------------------------

    def _prepare(self, data: bytes) -> PreparedImage | ItemError:
        try:
            return prepare(data, self.provider.spec.images, self._max_input_pixels)
        except ImageRejected as exc:
            return ItemError(exc.code, str(exc))

    async def _embed(self, items: Sequence[ImageItem]) -> list[Outcome]:
        prepared = await asyncio.gather(*(asyncio.to_thread(self._prepare, item.data) for item in items))
        loop = asyncio.get_running_loop()
        outcomes: list[Outcome | None] = [None] * len(items)
        waiting: dict[int, asyncio.Future] = {}
        to_send: list[tuple[PreparedImage, asyncio.Future]] = []
        for index, image in enumerate(prepared):
            if isinstance(image, ItemError):
                outcomes[index] = image
                continue
            self._usage.add("images_reencoded", int(image.reencoded))
            self._usage.add("images_downscaled", int(image.downscaled))
            if (future := self._inflight.get(image.sha256)) is not None:
                self._usage.add("deduplicated")
                waiting[index] = future
                continue
            cached = self.cache.get(image.sha256) if self.cache else None
            if cached is not None:
                self._usage.add("cache_hits")
                outcomes[index] = cached
                continue
            self._usage.add("cache_misses")
            future = loop.create_future()
            self._inflight[image.sha256] = future
            waiting[index] = future
            to_send.append((image, future))
        for start in range(0, len(to_send), self.vendor_batch):
            # Own tasks, not this call's: a cancelled gRPC call still gets (and caches) what it paid for.
            task = asyncio.create_task(self._send(to_send[start:start + self.vendor_batch]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        for index, future in waiting.items():
            outcomes[index] = await asyncio.shield(future)
        return outcomes  # type: ignore[return-value]

    async def _send(self, batch: list[tuple[PreparedImage, asyncio.Future]]) -> None:
        images = [image for image, _ in batch]
        results: list[Outcome] | None = None
        try:
            results = await self._request(images)
        except asyncio.CancelledError:
            results = [ItemError(ErrorCode.INTERNAL, "proxy shut down before the vendor answered")] * len(images)
            raise
        except Exception as exc:  # noqa: BLE001 - becomes a per-item error, never a lost item
            message = self.redactor(f"{type(exc).__name__}: {exc}")
            log.error("vendor call failed: %s", message)
            results = [ItemError(ErrorCode.INTERNAL, message)] * len(images)
        finally:
            self._settle(batch, results or [ItemError(ErrorCode.INTERNAL, "interrupted")] * len(images))

    def _settle(self, batch: list[tuple[PreparedImage, asyncio.Future]], results: list[Outcome]) -> None:
        for (image, future), result in zip(batch, results, strict=True):
            if self.cache is not None and isinstance(result, np.ndarray):
                try:
                    self.cache.put(image.sha256, result)
                except OSError as exc:
                    log.warning("cache write failed: %s", exc)
            self._inflight.pop(image.sha256, None)
            if not future.done():
                future.set_result(result)

    async def _request(self, images: list[PreparedImage]) -> list[Outcome]:
        count = len(images)
        try:
            response = await self._http.send(self.provider.build(images), count)
        except CredentialsError as exc:  # e.g. a token refresh refused: the vendor was never asked
            log.warning("%s: credentials failed: %s", self.name, self.redactor(str(exc)))
            return [ItemError(ErrorCode.UPSTREAM_ERROR, self.redactor(f"{self.provider.name}: {exc}"))] * count
        except UpstreamError as exc:
            if exc.splittable and count > 1:
                # One bad image can fail a whole batch: halve it to find which.
                half = count // 2
                first, second = await asyncio.gather(self._request(images[:half]), self._request(images[half:]))
                return first + second
            log.warning("%s: %d image(s) failed: %s", self.name, count, exc.message)
            return [ItemError(ErrorCode.UPSTREAM_ERROR, f"{self.provider.name}: {exc.message}")] * count

        # Large answers (96 x 1536 floats is ~2 MB of JSON) are decoded off the event loop so
        # admissions and sends of other requests are not held up behind them.
        if len(response.content) > _INLINE_DECODE_BYTES:
            outcomes, billed = await asyncio.to_thread(self._decode, response.content, count)
        else:
            outcomes, billed = self._decode(response.content, count)
        self._usage.add_billed(billed)
        self._usage.add("images_embedded", sum(isinstance(o, np.ndarray) for o in outcomes))
        return outcomes

    def _decode(self, content: bytes, count: int) -> tuple[list[Outcome], Mapping[str, float]]:
        def invalid(message: str) -> list[Outcome]:
            return [ItemError(ErrorCode.INVALID_OUTPUT, f"{self.provider.name}: {message}")] * count

        try:
            payload = json.loads(content)
        except ValueError:
            return invalid("answered 200 with a body that is not JSON"), {}
        try:
            parsed = self.provider.parse(payload, count)
        except MalformedResponse as exc:
            return invalid(f"unexpected answer shape: {exc}"), {}
        if len(parsed.vectors) != count:
            return invalid(f"returned {len(parsed.vectors)} vectors for {count} images"), parsed.billed
        return [self._check(vector) for vector in parsed.vectors], parsed.billed

    def _check(self, values) -> Outcome:
        try:
            vector = np.asarray(values)
        except (TypeError, ValueError):  # ragged nesting
            vector = np.empty(0, dtype=object)
        # A null or string in the list gives an object array; numpy would turn None into NaN silently.
        if vector.dtype.kind not in "iuf":
            return ItemError(ErrorCode.INVALID_OUTPUT, f"{self.provider.name}: vector holds non-numbers")
        if vector.ndim != 1 or vector.shape[0] != self.provider.dim:
            return ItemError(
                ErrorCode.INVALID_OUTPUT,
                f"{self.provider.name}: vector of shape {vector.shape}, expected ({self.provider.dim},)",
            )
        vector = vector.astype(np.float32)
        if not np.isfinite(vector).all():
            return ItemError(ErrorCode.INVALID_OUTPUT, f"{self.provider.name}: vector holds NaN or infinity")
        return vector
