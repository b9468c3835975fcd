"""A backend that preprocesses locally and runs the forward pass on an NVIDIA Triton server.

    embedder (decode, model's own preprocessing, dynamic batching)
        --gRPC ModelInfer, FP32 [N, *dims]-->  Triton (dynamic batching, GPU instances, TensorRT)

Preprocessing stays here, with the same `Preprocessing` spec as the local backend, so vectors
from Triton equal the local backend's up to the runtime's float error, and the GPU node only
runs the network (Python-side preprocessing is the usual Triton bottleneck; the embedder's
decode pool scales on CPU cores instead). The model repository comes from
`vsbench export triton` (services/embedder/triton_export/); its tensor names and dims are read
from Triton's model metadata and checked against the local preprocessing at load.

Fingerprint: the embedder cannot read the files Triton serves, so it hashes what it knows: the
exported model files when `weights` names the exported model folder (its `1/model.onnx`,
`1/model.plan`), the model name and the version Triton serves, Triton's server version, platform
and tensor signature from the model config, and the local preprocessing. A re-export under the
same name and version that changes nothing Triton reports is invisible from here unless the
exported folder is given.

`load_triton_backend` (triton_loader.py) builds one for a registered model.

A batch larger than the Triton model's max_batch_size is split into requests sent concurrently
with `async_infer`, so Triton's scheduler can spread them over its instances. tritonclient is
imported on first use (extra `vsbench[triton]`).
"""

from __future__ import annotations

import importlib
import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from PIL import Image

from services.common.errors import VsbenchError
from services.common.types import ModelInfo
from services.embedder.backends.base import ModelBackend
from services.embedder.backends.errors import MissingExtraError
from services.embedder.backends.provenance import model_fingerprint

log = logging.getLogger(__name__)

Preprocess = Callable[[Image.Image], np.ndarray]


class TritonError(VsbenchError, RuntimeError):
    """Triton is unreachable, the model is not ready or does not match, or a request failed."""


def _import_grpcclient() -> Any:
    try:
        return importlib.import_module("tritonclient.grpc")
    except ImportError as exc:  # tritonclient.grpc raises RuntimeError when grpc support is missing
        raise MissingExtraError(
            f"the triton backend needs tritonclient: pip install 'vsbench[triton]' ({exc})"
        ) from exc
    except RuntimeError as exc:
        raise MissingExtraError(f"the triton backend needs tritonclient's gRPC support: {exc}") from exc


@dataclass(frozen=True)
class TritonTarget:
    """Where the model runs: Triton's gRPC address and the model's name/version there."""

    url: str
    model: str
    version: str = ""  # "" = the version Triton's version policy serves
    timeout_s: float = 30.0  # per inference request
    connect_timeout_s: float = 10.0  # health and metadata calls at load
    ssl: bool = False
    root_certificates: str | None = None  # path of a PEM file for a private CA
    headers: Mapping[str, str] = field(default_factory=dict)  # e.g. a restricted-protocol key


@dataclass(frozen=True)
class _Tensor:
    name: str
    datatype: str
    shape: tuple[int, ...]  # without the batch axis; -1 = variable


class TritonBackend(ModelBackend):
    def __init__(
        self,
        name: str,
        target: TritonTarget,
        preprocess: Preprocess,
        preprocessing: str,
        *,
        input_name: str | None = None,
        output_name: str | None = None,
        max_batch: int = 64,
        normalized: bool = False,
        details: Mapping[str, str] | None = None,
        preprocessing_record: Any = None,
        pooling: str = "",
        exported_files: Mapping[str, str] | None = None,
    ) -> None:
        self._grpc = _import_grpcclient()
        self._target = target
        self._preprocess = preprocess
        self._headers = dict(target.headers) or None
        self._client = self._grpc.InferenceServerClient(
            url=target.url, ssl=target.ssl, root_certificates=target.root_certificates
        )
        try:
            server_version, config, inputs, outputs, served_versions = self._inspect()
            self._input = _pick(inputs, input_name, "input", target)
            self._output = _pick(outputs, output_name, "output", target)
            self._request_batch = int(config.get("max_batch_size", 0))
            if self._request_batch < 1:
                raise TritonError(
                    f"{_where(target)} has max_batch_size {self._request_batch}: the embedder sends batches, "
                    f"export the model with a batch axis (vsbench export triton)"
                )
            if self._input.datatype != "FP32":
                raise TritonError(
                    f"{_where(target)} input {self._input.name!r} is {self._input.datatype}; "
                    f"this backend sends FP32 (export with vsbench export triton)"
                )
            probe = np.asarray(self._preprocess(Image.new("RGB", (64, 48), (127, 127, 127))))
            expected = self._input.shape
            if probe.ndim != len(expected) or any(
                e > 0 and e != p for e, p in zip(expected, probe.shape, strict=True)
            ):
                raise TritonError(
                    f"local preprocessing makes {list(probe.shape)} but {_where(target)} input "
                    f"{self._input.name!r} takes {list(self._input.shape)} (per item): wrong model or spec"
                )
            declared = self._output.shape[-1] if self._output.shape else -1
            dim = declared if declared > 0 else int(self._infer(probe[None].astype(np.float32)).shape[1])
        except BaseException:
            self._client.close()
            raise
        self._info = ModelInfo(
            name=name,
            dim=int(dim),
            preprocessing=preprocessing,
            normalized=normalized,
            revision=f"triton:{target.model}/{target.version or 'latest'}",
            max_batch=max_batch,
            backend="triton",
            details={
                "preprocessing_location": "embedder (client side); Triton receives FP32 tensors",
                "triton_url": target.url,
                "triton_model": target.model,
                "triton_model_version": target.version or "(version policy)",
                "triton_server_version": server_version,
                "triton_platform": str(config.get("platform") or config.get("backend") or ""),
                "triton_max_batch_size": str(self._request_batch),
                "input": f"{self._input.name} {self._input.datatype} {list(self._input.shape)}",
                "output": f"{self._output.name} {self._output.datatype} {list(self._output.shape)}",
                **(details or {}),
            },
            fingerprint=model_fingerprint(
                backend="triton",
                weights=dict(exported_files or {}),
                preprocessing=preprocessing_record if preprocessing_record is not None else preprocessing,
                pooling=pooling,
                triton_model=target.model,
                triton_versions=served_versions,
                triton_server_version=server_version,
                triton_platform=str(config.get("platform") or config.get("backend") or ""),
                input=[self._input.name, self._input.datatype, list(self._input.shape)],
                output=[self._output.name, self._output.datatype, list(self._output.shape)],
                libraries=("pillow",),
            ),
        )

    # --- load-time checks ---------------------------------------------------------------------

    def _inspect(self) -> tuple[str, dict[str, Any], list[_Tensor], list[_Tensor], list[str]]:
        target, timeout = self._target, self._target.connect_timeout_s
        error_type = self._grpc.InferenceServerException
        try:
            live = self._client.is_server_live(headers=self._headers, client_timeout=timeout)
        except error_type as exc:
            raise TritonError(f"Triton at {target.url} is not reachable: {_message(exc)}") from None
        if not live:
            raise TritonError(f"Triton at {target.url} answers but is not live")
        try:
            ready = self._client.is_model_ready(
                target.model, target.version, headers=self._headers, client_timeout=timeout
            )
            if not ready:
                raise TritonError(f"{_where(target)} is not ready; {self._repository_summary()}")
            server = self._client.get_server_metadata(
                headers=self._headers, as_json=True, client_timeout=timeout
            )
            metadata = self._client.get_model_metadata(
                target.model, target.version, headers=self._headers, as_json=True, client_timeout=timeout
            )
            config = self._client.get_model_config(
                target.model, target.version, headers=self._headers, as_json=True, client_timeout=timeout
            ).get("config", {})
        except error_type as exc:
            raise TritonError(f"{_where(target)}: {_message(exc)}") from None
        batched = int(config.get("max_batch_size", 0)) > 0

        def tensors(entries: Sequence[Mapping[str, Any]]) -> list[_Tensor]:
            # Metadata shapes include the batch axis (-1) when the model batches.
            return [
                _Tensor(
                    e["name"], e["datatype"], tuple(int(d) for d in e.get("shape", []))[1 if batched else 0 :]
                )
                for e in entries
            ]

        return (
            str(server.get("version", "")),
            config,
            tensors(metadata.get("inputs", [])),
            tensors(metadata.get("outputs", [])),
            sorted(str(v) for v in metadata.get("versions", [])) if not target.version else [target.version],
        )

    def _repository_summary(self) -> str:
        try:
            index = self._client.get_model_repository_index(
                headers=self._headers, as_json=True, client_timeout=self._target.connect_timeout_s
            )
        except self._grpc.InferenceServerException as exc:
            return f"repository index unavailable: {_message(exc)}"
        models = [
            f"{m.get('name')} v{m.get('version', '?')} {m.get('state', '?')}"
            + (f" ({m['reason']})" if m.get("reason") else "")
            for m in index.get("models", [])
        ]
        return "models on that server: " + (", ".join(models) if models else "none")

    # --- ModelBackend ---------------------------------------------------------------------------

    def info(self) -> ModelInfo:
        return self._info

    def preprocess(self, image: Image.Image) -> np.ndarray:
        return self._preprocess(image)

    def forward(self, inputs: Sequence[Any]) -> np.ndarray:
        if not inputs:
            return np.zeros((0, self._info.dim), dtype=np.float32)
        batch = np.ascontiguousarray(np.stack(inputs), dtype=np.float32)
        size = self._request_batch
        if len(batch) <= size:
            return self._infer(batch)
        return self._infer_concurrently([batch[i : i + size] for i in range(0, len(batch), size)])

    def close(self) -> None:
        self._client.close()

    # --- requests -------------------------------------------------------------------------------

    def _request(self, batch: np.ndarray) -> tuple[list[Any], list[Any]]:
        tensor = self._grpc.InferInput(self._input.name, list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch)
        return [tensor], [self._grpc.InferRequestedOutput(self._output.name)]

    def _vectors(self, result: Any, rows: int) -> np.ndarray:
        output = result.as_numpy(self._output.name)
        if output is None:
            raise TritonError(f"{_where(self._target)} returned no output {self._output.name!r}")
        return np.asarray(output, dtype=np.float32).reshape(rows, -1)

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        inputs, outputs = self._request(batch)
        try:
            result = self._client.infer(
                self._target.model,
                inputs,
                model_version=self._target.version,
                outputs=outputs,
                headers=self._headers,
                client_timeout=self._target.timeout_s,
            )
        except self._grpc.InferenceServerException as exc:
            raise TritonError(f"{_where(self._target)} inference failed: {_message(exc)}") from None
        return self._vectors(result, len(batch))

    def _infer_concurrently(self, chunks: list[np.ndarray]) -> np.ndarray:
        results: list[Any] = [None] * len(chunks)
        errors: list[Any] = [None] * len(chunks)
        remaining = [len(chunks)]
        lock, done = threading.Lock(), threading.Event()

        def callback(position: int) -> Callable[..., None]:
            def finished(result: Any, error: Any) -> None:
                results[position], errors[position] = result, error
                with lock:
                    remaining[0] -= 1
                    if remaining[0] == 0:
                        done.set()

            return finished

        calls = []
        for position, chunk in enumerate(chunks):
            inputs, outputs = self._request(chunk)
            calls.append(
                self._client.async_infer(
                    self._target.model,
                    inputs,
                    callback(position),
                    model_version=self._target.version,
                    outputs=outputs,
                    headers=self._headers,
                    client_timeout=self._target.timeout_s,
                )
            )
        # client_timeout bounds each call; the margin covers callbacks still queued behind it.
        if not done.wait(self._target.timeout_s + 5):
            for call in calls:
                call.cancel()
            raise TritonError(f"{_where(self._target)}: no answer in {self._target.timeout_s}s")
        failed = [e for e in errors if e is not None]
        if failed:
            raise TritonError(f"{_where(self._target)} inference failed: {_message(failed[0])}")
        return np.concatenate([self._vectors(r, len(c)) for r, c in zip(results, chunks, strict=True)])


def _where(target: TritonTarget) -> str:
    version = f" version {target.version}" if target.version else ""
    return f"Triton model {target.model!r}{version} at {target.url}"


def _message(exc: Any) -> str:
    status = exc.status() if hasattr(exc, "status") else None
    text = exc.message() if hasattr(exc, "message") else str(exc)
    return f"{status}: {text}" if status else str(text)


def _pick(tensors: list[_Tensor], wanted: str | None, role: str, target: TritonTarget) -> _Tensor:
    names = [t.name for t in tensors]
    if wanted is not None:
        for tensor in tensors:
            if tensor.name == wanted:
                return tensor
        raise TritonError(f"{_where(target)} has no {role} {wanted!r}; its {role}s: {names}")
    if len(tensors) != 1:
        raise TritonError(f"{_where(target)} has {role}s {names}: name the one to use")
    return tensors[0]
