"""ProxyModel: the AsyncEmbedder that serves a commercial API through the common gRPC servicer.

Per call: prepare images (threads), answer from the cache or an identical image already in
flight, split the rest into vendor-sized requests, send them under the rate limits, and check
every answer (one vector per image sent, `dim` values each, finite, a usable norm). Whatever
happens, each item ends with exactly one vector or one error: nothing is silently dropped, merged
or faked. Each call also reports what it alone cost (`embed_billed`, see accounting.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import Mapping, Sequence

import numpy as np

from services.api_proxy.accounting import (
    BatchCharge, CallLedger, Delivery, Outcome, receive_joined, settle_batch,
)
from services.api_proxy.cache import EmbeddingCache
from services.api_proxy.credentials import CredentialsError, Redactor
from services.api_proxy.http import RetryPolicy, UpstreamError, VendorHttp
from services.api_proxy.images import ImageRejected, PreparedImage, prepare
from services.api_proxy.providers.base import MalformedResponse, Provider, ProviderContext
from services.api_proxy.providers.registry import default_model, provider_class
from services.api_proxy.ratelimit import Limits, RateLimiter
from services.api_proxy.settings import ProxySettings
from services.api_proxy.usage import USAGE_DETAILS_KEY, Price, Usage, load_price_table
from services.api_proxy.vectors import MAX_NORM, MIN_NORM, check_vector
from services.common.fingerprint import fingerprint
from services.common.servicer import Overloaded
from services.common.types import CallUsage, Embedding, ErrorCode, ImageItem, InputRole, ItemError, ModelInfo

log = logging.getLogger(__name__)

_INLINE_DECODE_BYTES = 64 * 1024
# (outcome, billed): billed = the image was in a 200 answer, so the vendor charged for it.
Sent = tuple[Outcome, bool]
Batch = list[tuple[PreparedImage, "asyncio.Future[Delivery]"]]


def _unbilled(code: ErrorCode, message: str, count: int) -> list[Sent]:
    return [(ItemError(code, message), False)] * count


def role_key(provider: Provider, role: str | None = None) -> str:
    """The role as sent ("input_type=search_query"), "" when no role field is sent; `role` is a
    request's role (None = the process's)."""
    value = provider.value_for(role)
    return "" if value is None else f"{provider.role_field}={value}"


def fingerprint_parts(provider: Provider) -> dict:
    """Everything that changes the vectors this proxy answers with; never a credential or URL
    (a gateway or region gives the same vectors)."""
    spec = provider.spec
    return {
        "kind": "api_proxy",
        "vendor": provider.name,
        "model": spec.name,
        "api": provider.api_version,
        "dim": provider.dim,
        "input_role": {"role": provider.role, "field": provider.role_field, "value": provider.role_value},
        # Requests name their role (gallery images: document, queries: query): what each is sent as.
        "request_roles": provider.role_mapping(),
        # What the proxy does to the bytes before sending (re-encoding, downscaling) and to the answer.
        "preprocessing": spec.images.describe(),
        "vendor_preprocessing": spec.vendor_preprocessing,
        "output": {"dtype": "float32", "normalised_by_proxy": False, "norm_bounds": [MIN_NORM, MAX_NORM]},
    }


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
        self.cache = cache  # the process's own role; other request roles get siblings (_cache_for)
        self._role_caches: dict[str, EmbeddingCache] = {}
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
        self._price = price
        self._pending = 0
        self._inflight: dict[tuple[str, str], asyncio.Future[Delivery]] = {}
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
            role=settings.input_role,
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
            cache=(EmbeddingCache(cache_dir, provider.name, model, provider.dim, role_key(provider))
                   if cache_dir else None),
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
        preprocessing += f"; {provider.describe_role()}"
        details = {
            "provider": provider.name,
            "vendor_model": spec.name,
            "api": provider.api_version,
            "input_role": provider.role,
            "vendor_role": role_key(provider) or "none sent",
            "request_roles": json.dumps(provider.role_mapping()),
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
            "usage_contract": (
                "each EmbedResponse.usage holds what that call cost; "
                f"details['{USAGE_DETAILS_KEY}'] is this process's running total, for operators only"
            ),
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
            fingerprint=fingerprint(fingerprint_parts(provider)),
        )

    def info(self) -> ModelInfo:
        return self._info

    def usage(self) -> dict:
        return self._usage.snapshot()

    def info_details(self) -> dict[str, str]:
        """Live details merged into every Info answer (the servicer calls this per request): the
        process's running totals for operators. A run's own usage comes from embed_billed."""
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
        results, _ = await self.embed_billed(items)
        return results

    async def embed_billed(
        self, items: Sequence[ImageItem], role: InputRole | None = None
    ) -> tuple[list[Embedding], CallUsage]:
        """One Embedding per item, in order, and what this call alone cost (BilledEmbedder).
        `role`: what the images are (None = this process's --input-role); refused with
        ValueError (INVALID_ARGUMENT) when the vendor does not offer it."""
        role_name = self.provider.resolve_role(None if role is None else role.value)
        if self._pending + len(items) > self._max_pending:
            raise Overloaded(f"{self._pending} images already waiting for {self.name}")
        self._pending += len(items)
        ledger = CallLedger()
        try:
            outcomes = await self._embed(items, ledger, role_name)
        except asyncio.CancelledError:
            ledger.abandoned = True  # its batches' charges go to whoever receives their results
            raise
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
        return results, ledger.usage

    # --- internals -------------------------------------------------------------------------

    def _prepare(self, data: bytes) -> PreparedImage | ItemError:
        try:
            return prepare(data, self.provider.spec.images, self._max_input_pixels)
        except ImageRejected as exc:
            return ItemError(exc.code, str(exc))

    def _cache_for(self, role: str) -> EmbeddingCache | None:
        if self.cache is None or role == self.provider.role:
            return self.cache
        key = role_key(self.provider, role)
        if key not in self._role_caches:
            self._role_caches[key] = self.cache.with_role(key)
        return self._role_caches[key]

    async def _embed(self, items: Sequence[ImageItem], ledger: CallLedger, role: str) -> list[Outcome]:
        prepared = await asyncio.gather(*(asyncio.to_thread(self._prepare, item.data) for item in items))
        loop = asyncio.get_running_loop()
        outcomes: list[Outcome | None] = [None] * len(items)
        sent: dict[int, asyncio.Future[Delivery]] = {}  # this call's own batches: charged at settle
        joined: dict[int, asyncio.Future[Delivery]] = {}  # identical images already on their way
        to_send: Batch = []
        for index, image in enumerate(prepared):
            if isinstance(image, ItemError):
                outcomes[index] = image
                continue
            self._usage.add("images_reencoded", int(image.reencoded))
            self._usage.add("images_downscaled", int(image.downscaled))
            # Identical bytes under another role are other vectors: the role is part of every key.
            key = (role_key(self.provider, role), image.sha256)
            if (future := self._inflight.get(key)) is not None:
                self._usage.add("deduplicated")
                joined[index] = future
                continue
            cache = self._cache_for(role)
            cached = cache.get(image.sha256) if cache else None
            if cached is not None:
                self._usage.add("cache_hits")
                ledger.usage.cached_images += 1
                outcomes[index] = cached
                continue
            self._usage.add("cache_misses")
            future = loop.create_future()
            self._inflight[key] = future
            sent[index] = future
            to_send.append((image, future))
        for start in range(0, len(to_send), self.vendor_batch):
            # Own tasks, not this call's: a cancelled gRPC call still gets (and caches) what it paid for.
            batch = to_send[start:start + self.vendor_batch]
            task = asyncio.create_task(self._send(batch, BatchCharge(owner=ledger), role))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        for index, future in sent.items():
            outcomes[index] = (await asyncio.shield(future)).outcome
        for index, future in joined.items():
            delivery = await asyncio.shield(future)
            receive_joined(ledger.usage, delivery)
            outcomes[index] = delivery.outcome
        return outcomes  # type: ignore[return-value]

    async def _send(self, batch: Batch, charge: BatchCharge, role: str) -> None:
        images = [image for image, _ in batch]
        results: list[Sent] | None = None
        try:
            results = await self._request(images, charge, role)
        except asyncio.CancelledError:
            results = _unbilled(ErrorCode.INTERNAL, "proxy shut down before the vendor answered", len(images))
            raise
        except Exception as exc:  # noqa: BLE001 - becomes a per-item error, never a lost item
            message = self.redactor(f"{type(exc).__name__}: {exc}")
            log.error("vendor call failed: %s", message)
            results = _unbilled(ErrorCode.INTERNAL, message, len(images))
        finally:
            self._settle(batch, results or _unbilled(ErrorCode.INTERNAL, "interrupted", len(images)), charge, role)

    def _settle(self, batch: Batch, results: list[Sent], charge: BatchCharge, role: str) -> None:
        deliveries = settle_batch(charge, results, self._price)
        cache = self._cache_for(role)
        rkey = role_key(self.provider, role)
        for (image, future), delivery in zip(batch, deliveries, strict=True):
            # Only checked vectors get here (vectors.py): a refused one is an error, never cached.
            if cache is not None and isinstance(delivery.outcome, np.ndarray):
                try:
                    cache.put(image.sha256, delivery.outcome)
                except OSError as exc:
                    log.warning("cache write failed: %s", exc)
            self._inflight.pop((rkey, image.sha256), None)
            if not future.done():
                future.set_result(delivery)

    async def _request(self, images: list[PreparedImage], charge: BatchCharge, role: str) -> list[Sent]:
        count = len(images)
        try:
            response = await self._http.send(self.provider.build(images, role), count, charge)
        except CredentialsError as exc:  # e.g. a token refresh refused: the vendor was never asked
            log.warning("%s: credentials failed: %s", self.name, self.redactor(str(exc)))
            return _unbilled(ErrorCode.UPSTREAM_ERROR, self.redactor(f"{self.provider.name}: {exc}"), count)
        except UpstreamError as exc:
            if exc.splittable and count > 1:
                # One bad image can fail a whole batch: halve it to find which.
                half = count // 2
                first, second = await asyncio.gather(
                    self._request(images[:half], charge, role), self._request(images[half:], charge, role))
                return first + second
            log.warning("%s: %d image(s) failed: %s", self.name, count, exc.message)
            return _unbilled(ErrorCode.UPSTREAM_ERROR, f"{self.provider.name}: {exc.message}", count)

        # Large answers (96 x 1536 floats is ~2 MB of JSON) are decoded off the event loop so
        # admissions and sends of other requests are not held up behind them.
        if len(response.content) > _INLINE_DECODE_BYTES:
            outcomes, billed = await asyncio.to_thread(self._decode, response.content, count)
        else:
            outcomes, billed = self._decode(response.content, count)
        # A 200 answer is billed by the vendor whatever we make of it.
        charge.add_billed(count, billed)
        self._usage.add_billed(billed)
        self._usage.add("images_embedded", sum(isinstance(o, np.ndarray) for o in outcomes))
        return [(outcome, True) for outcome in outcomes]

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
        checked = [check_vector(vector, self.provider.dim, self.provider.name) for vector in parsed.vectors]
        return checked, parsed.billed
