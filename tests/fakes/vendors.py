"""Fake commercial embedding APIs: real HTTP servers on 127.0.0.1 speaking each vendor's wire format.

Each `Vendor` checks a request exactly as its vendor documents it (path, auth header, body shape,
image format and size limits, input role values) and answers in the vendor's shape, with vectors
derived from the sha256 of the image bytes it received and from the role (a query-role request
gets other vectors, as a vendor's query adapter would), so a test can tell which image and role
each vector belongs to. `FakeVendorServer` adds scripted faults (429 with/without Retry-After,
5xx, slow answers, broken JSON, wrong counts, wrong sizes, NaN, vectors scaled to absurd norms,
zero vectors, dropped connections), random 429s, and records every request (with its role) on
the server's own clock so tests can check the client's rate limits from the receiving end.

Run standalone (for bench/proxy.py): python -m tests.fakes.vendors --vendor cohere --port 0
"""

from __future__ import annotations

import argparse
import base64
import binascii
import email.utils
import hashlib
import hmac
import io
import json
import random
import re
import socket
import threading
import time
import urllib.parse
import uuid
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Mapping

import numpy as np


class Reject(Exception):
    """Answer with this status and vendor error message instead of embedding."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Request:
    method: str
    path: str
    query: str
    headers: Mapping[str, str]  # lower-case names
    body: bytes
    role: str | None = None  # the vendor role value the request carried, set by Vendor.check

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            raise Reject(400, "invalid JSON body") from None


@dataclass(frozen=True)
class Fault:
    """One scripted answer. kinds: 429, status, slow, malformed, count, dims, nan, null, drop,
    scale (every value of the first vector set to `value`), zero (first vector all zeros)."""

    kind: str
    status: int = 0
    retry_after: str | None = None
    seconds: float = 0.0
    message: str = ""
    value: float = 0.0


@dataclass
class Received:
    at: float  # time.monotonic() on arrival, before any processing
    path: str
    images: int
    status: int = 0
    fault: str = ""
    role: str | None = None


def expected_vector(image: bytes, dim: int, role: str = "") -> np.ndarray:
    """The vector the fake returns for these exact bytes: unit-length, seeded by their sha256;
    role "query" for a request in the vendor's query role, "" for any other."""
    digest = hashlib.sha256(image + role.encode()).digest() if role else hashlib.sha256(image).digest()
    seed = int.from_bytes(digest[:8], "little")
    vector = np.random.default_rng(seed).standard_normal(dim)
    return (vector / np.linalg.norm(vector)).astype(np.float32)


def _decode_image(data: bytes, formats: Mapping[str, str], max_bytes: int,
                  max_pixels: int | None = None, max_side: int | None = None, declared_mime: str | None = None):
    """Check an image as the vendor would; returns (format, width, height)."""
    from PIL import Image

    if len(data) > max_bytes:
        raise Reject(400, f"image is {len(data)} bytes, larger than {max_bytes}")
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception:  # noqa: BLE001
        raise Reject(400, "invalid image: could not decode") from None
    fmt = {"MPO": "JPEG"}.get(image.format, image.format or "")
    mime = formats.get(fmt)
    if mime is None:
        raise Reject(400, f"unsupported image format {fmt}")
    if declared_mime is not None and declared_mime != mime:
        raise Reject(400, f"image declared {declared_mime} but is {mime}")
    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
        raise Reject(400, f"image has {width * height} pixels, more than {max_pixels}")
    if max_side is not None and max(width, height) > max_side:
        raise Reject(400, f"image is {width}x{height}, larger than {max_side}x{max_side}")
    return fmt, width, height


def _b64(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise Reject(400, f"{what} must be a base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise Reject(400, f"{what} is not valid base64") from None


_DATA_URI = re.compile(r"data:(image/[a-z]+);base64,(.*)", re.S)


def _data_uri(text: Any, what: str) -> tuple[str, bytes]:
    match = _DATA_URI.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise Reject(400, f"{what} must be a data:image/...;base64, URI")
    return match.group(1), _b64(match.group(2), what)


def _keys(obj: Any, required: set[str], optional: set[str] = frozenset(), what: str = "body") -> dict:
    if not isinstance(obj, dict):
        raise Reject(400, f"{what} must be an object")
    missing = required - obj.keys()
    unknown = obj.keys() - required - optional
    if missing or unknown:
        raise Reject(400, f"{what}: missing {sorted(missing)}, unknown {sorted(unknown)}")
    return obj


def _bearer(request: Request, accepted: Callable[[str], bool]) -> None:
    header = request.headers.get("authorization", "")
    if not header.startswith("Bearer "):
        raise Reject(401, "no api key supplied")
    supplied = header[len("Bearer "):]
    if not accepted(supplied):
        # Real vendors echo (part of) a wrong key; the proxy must redact it.
        raise Reject(401, f"invalid api token: {supplied}")


# --- vendors ---------------------------------------------------------------------------------


class Vendor:
    """One vendor's wire format. `check` returns the image bytes in request order."""

    name = ""
    throttle_message = "rate limit exceeded"
    # Role values whose vectors differ (a query adapter); every other accepted value embeds as usual.
    query_values: frozenset[str] = frozenset()

    def __init__(self, dim: int, key: str = "test-key") -> None:
        self.dim = dim
        self.key = key

    def check(self, request: Request) -> list[bytes]:
        raise NotImplementedError

    def answer(self, vectors: list[list[float]], images: list[bytes]) -> Any:
        raise NotImplementedError

    def error(self, status: int, message: str) -> tuple[Any, dict[str, str]]:
        return {"message": message}, {}

    def extra_route(self, server: "FakeVendorServer", request: Request) -> tuple[int, Any] | None:
        """Non-embedding endpoints (token servers); None when the path is not one."""
        return None


class CohereVendor(Vendor):
    name = "cohere"
    throttle_message = "You are using a Trial key, which is limited to 5 API calls / minute."
    formats = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif"}
    # docs.cohere.com/docs/embeddings: "image" on embed-v4.0 falls back to search_document.
    input_types = ("search_document", "search_query", "classification", "clustering", "image")
    query_values = frozenset({"search_query"})

    def check(self, request: Request) -> list[bytes]:
        if request.path != "/v2/embed":
            raise Reject(404, f"no route {request.path}")
        _bearer(request, lambda key: key == self.key)
        if not request.headers.get("content-type", "").startswith("application/json"):
            raise Reject(400, "content-type must be application/json")
        body = _keys(request.json(), {"model", "input_type", "embedding_types", "output_dimension", "inputs"})
        if body["model"] != "embed-v4.0" or body["embedding_types"] != ["float"]:
            raise Reject(400, "model must be embed-v4.0, embedding_types [float]")
        if body["input_type"] not in self.input_types:
            raise Reject(400, f"invalid input_type {body['input_type']!r}: one of {', '.join(self.input_types)}")
        request.role = body["input_type"]
        if body["output_dimension"] not in (256, 512, 1024, 1536) or body["output_dimension"] != self.dim:
            raise Reject(400, f"invalid output_dimension {body['output_dimension']}")
        inputs = body["inputs"]
        if not isinstance(inputs, list) or not 1 <= len(inputs) <= 96:
            raise Reject(400, "inputs must hold 1 to 96 items")
        images = []
        for entry in inputs:
            content = _keys(entry, {"content"}, what="input")["content"]
            if not isinstance(content, list) or len(content) != 1:
                raise Reject(400, "each input must hold exactly one content part here")
            part = _keys(content[0], {"type", "image_url"}, what="content part")
            if part["type"] != "image_url":
                raise Reject(400, "content part type must be image_url")
            mime, data = _data_uri(_keys(part["image_url"], {"url"}, what="image_url")["url"], "image_url.url")
            _decode_image(data, self.formats, 5_000_000, declared_mime=mime)
            images.append(data)
        return images

    def answer(self, vectors, images):
        return {
            "id": str(uuid.uuid4()),
            "embeddings": {"float": vectors},
            "texts": [],
            "images": [{"width": 0, "height": 0, "format": "jpeg", "bit_depth": 8} for _ in images],
            "meta": {"api_version": {"version": "2"}, "billed_units": {"images": len(images)}},
        }

    def error(self, status, message):
        return {"id": str(uuid.uuid4()), "message": message}, {}


class _GoogleErrors(Vendor):
    def error(self, status, message):
        code = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE"}.get(status, "UNKNOWN")
        return {"error": {"code": status, "message": message, "status": code}}, {}


class VertexVendor(_GoogleErrors):
    name = "vertex"
    throttle_message = (
        "Quota exceeded for aiplatform.googleapis.com/online_prediction_requests_per_base_model "
        "with base model: multimodalembedding."
    )
    formats = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif", "BMP": "image/bmp"}

    def __init__(self, dim: int, key: str = "ya29.test-token", project: str = "test-project",
                 location: str = "us-central1") -> None:
        super().__init__(dim, key)
        self.project = project
        self.location = location
        self.valid_tokens = {key}
        self.refresh_grants: list[dict] = []

    @property
    def predict_path(self) -> str:
        return (f"/v1/projects/{self.project}/locations/{self.location}/publishers/google/models/"
                "multimodalembedding@001:predict")

    def check(self, request: Request) -> list[bytes]:
        if request.path != self.predict_path:
            raise Reject(404, f"no route {request.path}")
        _bearer(request, lambda token: token in self.valid_tokens)
        body = _keys(request.json(), {"instances", "parameters"})
        instances = body["instances"]
        if not isinstance(instances, list) or len(instances) != 1:
            raise Reject(400, "multimodalembedding takes exactly one instance per request")
        image = _keys(_keys(instances[0], {"image"}, what="instance")["image"], {"bytesBase64Encoded"},
                      what="image")
        dimension = _keys(body["parameters"], {"dimension"}, what="parameters")["dimension"]
        if dimension not in (128, 256, 512, 1408) or dimension != self.dim:
            raise Reject(400, f"invalid dimension {dimension}")
        data = _b64(image["bytesBase64Encoded"], "bytesBase64Encoded")
        _decode_image(data, self.formats, 20_000_000)
        return [data]

    def answer(self, vectors, images):
        return {"predictions": [{"imageEmbedding": vector} for vector in vectors], "deployedModelId": "42"}

    def extra_route(self, server, request):
        issued = "ya29." + uuid.uuid4().hex
        if request.path == "/token" and request.method == "POST":
            form = dict(urllib.parse.parse_qsl(request.body.decode()))
            self.refresh_grants.append(form)
            if form.get("grant_type") != "refresh_token" or form.get("refresh_token") != "test-refresh-token":
                return 400, {"error": "invalid_grant"}
        elif request.path == "/computeMetadata/v1/instance/service-accounts/default/token":
            if request.headers.get("metadata-flavor") != "Google":
                return 403, {"error": "missing Metadata-Flavor"}
        else:
            return None
        self.valid_tokens.add(issued)
        return 200, {"access_token": issued, "expires_in": 3599, "token_type": "Bearer"}


class GeminiVendor(_GoogleErrors):
    name = "gemini"
    throttle_message = "Resource has been exhausted (e.g. check quota)."
    formats = {"JPEG": "image/jpeg", "PNG": "image/png"}
    task_types = ("RETRIEVAL_QUERY", "RETRIEVAL_DOCUMENT", "SEMANTIC_SIMILARITY", "CLASSIFICATION", "CLUSTERING",
                  "CODE_RETRIEVAL_QUERY", "QUESTION_ANSWERING", "FACT_VERIFICATION")
    query_values = frozenset({"RETRIEVAL_QUERY"})

    def check(self, request: Request) -> list[bytes]:
        if request.path != "/v1beta/models/gemini-embedding-2:batchEmbedContents":
            raise Reject(404, f"no route {request.path}")
        if "authorization" in request.headers or "key" in urllib.parse.parse_qs(request.query):
            raise Reject(400, "send the key in x-goog-api-key only")
        supplied = request.headers.get("x-goog-api-key")
        if supplied != self.key:
            raise Reject(400, f"API key not valid. Please pass a valid API key. ({supplied})")
        requests = _keys(request.json(), {"requests"})["requests"]
        if not isinstance(requests, list) or not 1 <= len(requests) <= 6:
            raise Reject(400, "requests must hold 1 to 6 entries")
        images = []
        roles = {entry.get("taskType") if isinstance(entry, dict) else None for entry in requests}
        if len(roles) != 1:
            raise Reject(400, "this fake expects one taskType per batch")
        request.role = roles.pop()
        if request.role is not None and request.role not in self.task_types:
            raise Reject(400, f"Invalid value at 'requests[0].task_type' ({request.role})")
        for entry in requests:
            entry = _keys(entry, {"model", "content", "outputDimensionality"}, {"taskType", "title"}, what="request")
            if entry["model"] != "models/gemini-embedding-2":
                raise Reject(400, f"model mismatch {entry['model']}")
            if not isinstance(entry["outputDimensionality"], int) or not 128 <= entry["outputDimensionality"] <= 3072:
                raise Reject(400, "outputDimensionality must be 128..3072")
            if entry["outputDimensionality"] != self.dim:
                raise Reject(400, "unexpected outputDimensionality")
            parts = _keys(entry["content"], {"parts"}, {"role"}, what="content")["parts"]
            if not isinstance(parts, list) or not parts:
                raise Reject(400, "content needs parts")
            # Several parts are embedded into ONE vector, like the real API: a client that packs
            # images into one content gets fewer vectors back than it sent images.
            blobs = []
            for part in parts:
                inline = _keys(_keys(part, {"inline_data"}, what="part")["inline_data"], {"mime_type", "data"},
                               what="inline_data")
                data = _b64(inline["data"], "inline_data.data")
                _decode_image(data, self.formats, 20_000_000, declared_mime=inline["mime_type"])
                blobs.append(data)
            images.append(b"".join(blobs))
        return images

    def answer(self, vectors, images):
        return {"embeddings": [{"values": vector} for vector in vectors]}


class VoyageVendor(Vendor):
    name = "voyage"
    throttle_message = "You have exceeded your rate limit."
    formats = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif"}
    query_values = frozenset({"query"})

    def __init__(self, dim: int, key: str = "pa-test-key", model: str = "voyage-multimodal-3.5",
                 shuffle: bool = False) -> None:
        super().__init__(dim, key)
        self.model = model
        self.shuffle = shuffle
        self._pixels = 0

    def check(self, request: Request) -> list[bytes]:
        if request.path != "/v1/multimodalembeddings":
            raise Reject(404, f"no route {request.path}")
        _bearer(request, lambda key: key == self.key)
        body = _keys(request.json(), {"model", "inputs"},
                     {"input_type", "truncation", "output_dimension", "output_encoding"})
        if body["model"] != self.model:
            raise Reject(400, f"model mismatch {body['model']}")
        if body.get("input_type") not in (None, "query", "document"):
            raise Reject(400, "input_type must be query, document or null")
        request.role = body.get("input_type")
        if self.model == "voyage-multimodal-3" and "output_dimension" in body:
            raise Reject(400, "voyage-multimodal-3 has no output_dimension")
        if body.get("output_dimension", 1024) not in (256, 512, 1024, 2048) or body.get("output_dimension", 1024) != self.dim:
            raise Reject(400, "invalid output_dimension")
        inputs = body["inputs"]
        if not isinstance(inputs, list) or not 1 <= len(inputs) <= 1000:
            raise Reject(400, "inputs must hold 1 to 1000 items")
        images, self._pixels = [], 0
        for entry in inputs:
            content = _keys(entry, {"content"}, what="input")["content"]
            if not isinstance(content, list) or len(content) != 1:
                raise Reject(400, "one image per input here")
            part = _keys(content[0], {"type", "image_base64"}, what="content")
            if part["type"] != "image_base64":
                raise Reject(400, "type must be image_base64")
            mime, data = _data_uri(part["image_base64"], "image_base64")
            _, width, height = _decode_image(data, self.formats, 20_000_000, max_pixels=16_000_000,
                                             declared_mime=mime)
            self._pixels += width * height
            images.append(data)
        return images

    def answer(self, vectors, images):
        data = [{"object": "embedding", "embedding": v, "index": i} for i, v in enumerate(vectors)]
        if self.shuffle:
            data.reverse()
        return {"object": "list", "data": data, "model": self.model,
                "usage": {"text_tokens": 0, "image_pixels": self._pixels, "total_tokens": self._pixels // 560}}

    def error(self, status, message):
        return {"detail": message}, {}


class JinaVendor(Vendor):
    name = "jina"
    formats = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}
    tasks = ("retrieval.query", "retrieval.passage", "text-matching", "code.query", "code.passage")
    query_values = frozenset({"retrieval.query"})

    def check(self, request: Request) -> list[bytes]:
        if request.path != "/v1/embeddings":
            raise Reject(404, f"no route {request.path}")
        _bearer(request, lambda key: key == self.key)
        body = _keys(request.json(), {"model", "task", "dimensions", "embedding_type", "input"},
                     {"normalized", "truncate", "late_chunking"})
        if body["model"] != "jina-embeddings-v4" or body["task"] not in self.tasks:
            raise Reject(422, "model must be jina-embeddings-v4 and task one of " + ", ".join(self.tasks))
        request.role = body["task"]
        if body["dimensions"] not in (128, 256, 512, 1024, 2048) or body["dimensions"] != self.dim:
            raise Reject(422, "invalid dimensions")
        if body["embedding_type"] != "float":
            raise Reject(422, "embedding_type must be float here")
        inputs = body["input"]
        if not isinstance(inputs, list) or not inputs:
            raise Reject(422, "input must be a non-empty list")
        images = []
        for entry in inputs:
            data = _b64(_keys(entry, {"image"}, what="input")["image"], "image")
            _decode_image(data, self.formats, 10_000_000)
            images.append(data)
        return images

    def answer(self, vectors, images):
        tokens = 1000 * len(images)
        return {"model": "jina-embeddings-v4", "object": "list",
                "usage": {"total_tokens": tokens, "prompt_tokens": tokens},
                "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]}

    def error(self, status, message):
        return {"detail": message}, {}


class TitanVendor(Vendor):
    """Bedrock InvokeModel; verifies the SigV4 signature with its own implementation."""

    name = "titan"
    throttle_message = "Too many requests, please wait before trying again."
    formats = {"JPEG": "image/jpeg", "PNG": "image/png"}

    def __init__(self, dim: int, key: str = "AKIDEXAMPLE", secret: str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
                 region: str = "us-east-1", session_token: str | None = None) -> None:
        super().__init__(dim, key)
        self.secret = secret
        self.region = region
        self.session_token = session_token

    def check(self, request: Request) -> list[bytes]:
        if request.path != "/model/amazon.titan-embed-image-v1/invoke":
            raise Reject(404, f"no route {request.path}")
        problem = verify_sigv4(request, self.key, self.secret, self.region, "bedrock")
        if problem:
            raise Reject(403, problem)
        if self.session_token and request.headers.get("x-amz-security-token") != self.session_token:
            raise Reject(403, "The security token included in the request is invalid.")
        body = _keys(request.json(), {"inputImage", "embeddingConfig"}, {"inputText"})
        length = _keys(body["embeddingConfig"], {"outputEmbeddingLength"}, what="embeddingConfig")
        if length["outputEmbeddingLength"] not in (256, 384, 1024) or length["outputEmbeddingLength"] != self.dim:
            raise Reject(400, "Malformed input request: outputEmbeddingLength")
        data = _b64(body["inputImage"], "inputImage")
        _decode_image(data, self.formats, 25_000_000, max_side=2048)
        return [data]

    def answer(self, vectors, images):
        if len(vectors) != 1:
            return {"embedding": None, "inputTextTokenCount": 0}
        return {"embedding": vectors[0], "inputTextTokenCount": 0}

    def error(self, status, message):
        kind = {400: "ValidationException", 403: "AccessDeniedException", 429: "ThrottlingException",
                500: "InternalServerException", 503: "ServiceUnavailableException"}.get(status, "Exception")
        return {"message": message}, {"x-amzn-ErrorType": f"{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/"}


def verify_sigv4(request: Request, access_key: str, secret: str, region: str, service: str) -> str | None:
    """None when the AWS SigV4 signature is valid for these credentials, else the reason."""
    header = request.headers.get("authorization", "")
    match = re.fullmatch(
        r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, "
        r"SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})", header)
    if match is None:
        return "Authorization header is not AWS4-HMAC-SHA256"
    key_id, day, signed_region, signed_service, signed_headers, signature = match.groups()
    if key_id != access_key:
        return "The security token included in the request is invalid."
    if (signed_region, signed_service) != (region, service):
        return f"credential scope {signed_region}/{signed_service} is not {region}/{service}"
    amz_date = request.headers.get("x-amz-date", "")
    try:
        stamp = time.mktime(time.strptime(amz_date, "%Y%m%dT%H%M%SZ")) - time.timezone
    except ValueError:
        return "missing or bad X-Amz-Date"
    if abs(stamp - time.time()) > 300 or not amz_date.startswith(day):
        return "Signature expired or date mismatch"
    names = signed_headers.split(";")
    if "host" not in names:
        return "host must be signed"
    canonical_headers = "".join(f"{name}:{' '.join(request.headers.get(name, '').split())}\n" for name in names)
    canonical = "\n".join([
        request.method,
        urllib.parse.quote(request.path, safe="/~"),
        "&".join(sorted(request.query.split("&"))) if request.query else "",
        canonical_headers,
        signed_headers,
        hashlib.sha256(request.body).hexdigest(),
    ])
    scope = f"{day}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = ("AWS4" + secret).encode()
    for part in (day, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    expected = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, signature):
        return "The request signature we calculated does not match the signature you provided."
    return None


VENDORS: dict[str, type[Vendor]] = {
    cls.name: cls for cls in (CohereVendor, VertexVendor, GeminiVendor, VoyageVendor, JinaVendor, TitanVendor)
}


# --- the server ------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass

    def _handle(self) -> None:
        at = time.monotonic()
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path, _, query = self.path.partition("?")
        request = Request(self.command, path, query, {k.lower(): v for k, v in self.headers.items()}, body)
        self.server.fake.dispatch(self, request, at)

    do_POST = _handle
    do_GET = _handle

    def send(self, status: int, payload: Any = None, headers: Mapping[str, str] | None = None,
             raw: bytes | None = None) -> None:
        data = raw if raw is not None else json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client timed out and left


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256
    fake: "FakeVendorServer"


class FakeVendorServer:
    """A vendor fake on 127.0.0.1 with faults; use as a context manager."""

    def __init__(
        self,
        vendor: Vendor,
        *,
        faults: list[Fault] | None = None,
        random_429: float = 0.0,
        random_retry_after: str | None = None,
        latency_s: float = 0.0,
        seed: int = 0,
        poison: set[bytes] | None = None,
        hold: threading.Event | None = None,
    ) -> None:
        self.vendor = vendor
        # While set to an unset Event, every checked request waits for it before being answered:
        # a test can hold requests in flight for exactly as long as it needs.
        self.hold = hold
        # Images the vendor refuses with a 400 for the whole request, like a real one-bad-image batch.
        self.poison = poison or set()
        self.faults: deque[Fault] = deque(faults or [])
        self.random_429 = random_429
        self.random_retry_after = random_retry_after
        self.latency_s = latency_s
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.received: list[Received] = []
        self.rejections: list[str] = []
        self.headers_seen: list[Mapping[str, str]] = []
        self.images_embedded: list[bytes] = []
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fake = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True, name=f"fake-{vendor.name}"
        )

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "FakeVendorServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "FakeVendorServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def add_faults(self, *faults: Fault) -> None:
        with self._lock:
            self.faults.extend(faults)

    def _next_fault(self) -> Fault | None:
        with self._lock:
            if self.faults:
                return self.faults.popleft()
            if self.random_429 and self._rng.random() < self.random_429:
                return Fault("429", retry_after=self.random_retry_after)
        return None

    def dispatch(self, handler: _Handler, request: Request, at: float) -> None:
        extra = self.vendor.extra_route(self, request)
        if extra is not None:
            handler.send(*extra)
            return
        record = Received(at=at, path=request.path, images=0)
        with self._lock:
            self.received.append(record)
            self.headers_seen.append(request.headers)
        try:
            images = self.vendor.check(request)
            record.images = len(images)
            record.role = request.role
            if any(image in self.poison for image in images):
                raise Reject(400, "invalid image: the model could not process one of the inputs")
        except Reject as reject:
            record.status = reject.status
            with self._lock:
                self.rejections.append(f"{reject.status}: {reject.message}")
            body, headers = self.vendor.error(reject.status, reject.message)
            handler.send(reject.status, body, headers)
            return
        record.images = len(images)
        fault = self._next_fault()
        record.fault = fault.kind if fault else ""
        if self.hold is not None:
            self.hold.wait(timeout=60)
        if self.latency_s:
            time.sleep(self.latency_s)
        if fault is not None and self._apply_fault(handler, fault, images, record):
            return
        role = "query" if request.role in self.vendor.query_values else ""
        vectors = [expected_vector(image, self.vendor.dim, role).tolist() for image in images]
        if fault is not None:
            vectors = _corrupt(fault, vectors)
        record.status = 200
        if fault is None:
            with self._lock:
                self.images_embedded.extend(images)
        handler.send(200, self.vendor.answer(vectors, images))

    def _apply_fault(self, handler: _Handler, fault: Fault, images: list[bytes], record: Received) -> bool:
        """Send the fault's answer; False when the fault only corrupts a 200 answer."""
        if fault.kind in ("429", "status"):
            status = 429 if fault.kind == "429" else fault.status
            record.status = status
            message = fault.message or (self.vendor.throttle_message if status == 429 else "internal error")
            body, headers = self.vendor.error(status, message)
            if fault.retry_after is not None:
                headers = {**headers, "Retry-After": fault.retry_after}
            handler.send(status, body, headers)
            return True
        if fault.kind == "slow":
            time.sleep(fault.seconds)
            record.status = -1
            handler.send(200, self.vendor.answer(
                [expected_vector(i, self.vendor.dim).tolist() for i in images], images))
            return True
        if fault.kind == "malformed":
            record.status = 200
            handler.send(200, raw=b'{"embeddings": {"float": [[0.1, 0.2')
            return True
        if fault.kind == "drop":
            record.status = -2
            handler.close_connection = True
            try:
                handler.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return True
        return False

    # --- checks on the server's own clock ----------------------------------------------------

    def arrivals(self, *, images: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(times, units): every request, or images of requests answered 200 without a fault."""
        with self._lock:
            rows = [(r.at, r.images if images else 1) for r in self.received
                    if not images or (r.status == 200 and not r.fault)]
        rows.sort()
        return np.array([t for t, _ in rows], dtype=float), np.array([u for _, u in rows], dtype=float)

    def rate_violations(self, per_minute: float, burst_seconds: float = 1.0, *, images: bool = False,
                        slack_s: float = 0.25) -> list[str]:
        """Windows where more arrived than the configured limit allows.

        The limit is read as its vendor would: never more than `per_minute` in any 60 s window, and
        in any shorter window of T seconds no more than one burst (per_minute * burst_seconds / 60)
        plus per_minute * T / 60. `slack_s` absorbs loopback scheduling jitter between send and arrival.
        """
        times, units = self.arrivals(images=images)
        burst = max(1.0, per_minute * burst_seconds / 60)
        rate = per_minute / 60
        cumulative = np.concatenate([[0.0], np.cumsum(units)])
        problems = []
        for i in range(len(times)):
            spans = times[i:] - times[i]
            counts = cumulative[i + 1:] - cumulative[i]
            allowed = np.minimum(burst + rate * (spans + slack_s), np.where(spans < 60, per_minute, np.inf))
            over = np.nonzero(counts > allowed + 1e-9)[0]
            if over.size:
                j = over[0]
                problems.append(f"{counts[j]:g} units in {spans[j]:.3f}s from t={times[i]:.3f} (allowed {allowed[j]:.2f})")
        return problems


def _corrupt(fault: Fault, vectors: list[list[float]]) -> list[list[float]]:
    kind = fault.kind
    if kind == "scale":
        return [[fault.value] * len(vectors[0])] + vectors[1:]
    if kind == "zero":
        return [[0.0] * len(vectors[0])] + vectors[1:]
    if kind == "count":
        return vectors[:-1] if len(vectors) > 1 else vectors + vectors
    if kind == "dims":
        return [vectors[0][:-1]] + vectors[1:]
    if kind == "nan":
        return [[float("nan")] + vectors[0][1:]] + vectors[1:]
    if kind == "null":
        return [[None] + vectors[0][1:]] + vectors[1:]
    raise ValueError(f"unknown fault kind {kind}")


def http_date(seconds_from_now: float) -> str:
    return email.utils.formatdate(time.time() + seconds_from_now, usegmt=True)


def main(argv: list[str] | None = None) -> None:
    """Serve one fake until stdin closes; prints `READY <port>`, then a JSON line of stats per 'stats' line read."""
    import sys

    parser = argparse.ArgumentParser()
    parser.add_argument("--vendor", default="cohere", choices=sorted(VENDORS))
    parser.add_argument("--dim", type=int, default=1536)
    parser.add_argument("--key", default="test-key")
    parser.add_argument("--random-429", type=float, default=0.0)
    parser.add_argument("--retry-after", default=None)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    server = FakeVendorServer(VENDORS[args.vendor](args.dim, args.key), random_429=args.random_429,
                              random_retry_after=args.retry_after, latency_s=args.latency, seed=args.seed)
    with server:
        print(f"READY {server.port}", flush=True)
        for line in sys.stdin:
            if line.strip() == "stats":
                times, _ = server.arrivals()
                print(json.dumps({
                    "requests": len(server.received),
                    "rejections": server.rejections[:5],
                    "images_embedded": len(server.images_embedded),
                    "faults": sum(1 for r in server.received if r.fault),
                    "span_s": float(times[-1] - times[0]) if len(times) > 1 else 0.0,
                }), flush=True)
            elif line.strip() == "timeline":
                times, units = server.arrivals(images=True)
                print(json.dumps({"times": times.tolist(), "units": units.tolist()}), flush=True)
            elif line.strip().startswith("violations"):
                _, per_minute, burst, slack = line.split()
                problems = server.rate_violations(float(per_minute), float(burst), images=True, slack_s=float(slack))
                print(json.dumps({"violations": len(problems), "first": problems[:3]}), flush=True)


if __name__ == "__main__":
    main()
