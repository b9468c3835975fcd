"""A loopback HTTP server answering the collection calls of Qdrant's REST API, recording each
create_collection body as qdrant-client sent it.

Why: qdrant-client's local mode keeps no shards or replicas (its get_collection reports None for
shard_number / replication_factor / write_consistency_factor), and no Qdrant server binary can be
installed here, so the request on the wire is the narrowest real seam for the distribution
parameters. A collection reads back with what its create body asked for, and Qdrant's documented
defaults (config/config.yaml, storage.collection) for what it left out; the real default
shard_number is the peer count, 1 for this one-peer stand-in.

Answers: GET / (the version, qdrant-client's own, so its compatibility check passes),
GET /collections/{name}/exists, PUT /collections/{name} (409 when it exists, as Qdrant),
GET /collections/{name} (404 when missing), PUT /collections/{name}/index, DELETE /collections/{name}.
Anything else answers 501, so a test notices a call it did not expect.
"""

from __future__ import annotations

import json
import re
from importlib.metadata import version
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_COLLECTION = re.compile(r"^/collections/([^/?]+)(/exists|/index)?(?:\?.*)?$")


class RecordingQdrant:
    def __init__(self) -> None:
        self.created: dict[str, dict[str, Any]] = {}  # name -> the create_collection body
        self.unexpected: list[str] = []
        # qdrant-client asks for the version from a thread of its own: a test waits for it before
        # closing the server, or the late request fails and the client warns.
        self.version_asked = threading.Event()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, status: int, result: Any = None, error: str | None = None) -> None:
                payload = {"result": result, "status": "ok", "time": 0.0} if error is None else {
                    "status": {"error": error}, "time": 0.0}
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _version(self) -> None:
                # Qdrant answers its root with the bare VersionInfo, not the {"result": ...} envelope.
                info = {"title": "qdrant - vector search engine", "version": version("qdrant-client")}
                body = json.dumps(info).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                recorder.version_asked.set()

            def _route(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"null") if length else None
                if method == "GET" and self.path == "/":
                    return self._version()
                match = _COLLECTION.match(self.path)
                if match is None:
                    recorder.unexpected.append(f"{method} {self.path}")
                    return self._answer(501, error=f"not served by RecordingQdrant: {method} {self.path}")
                name, tail = match.group(1), match.group(2)
                exists = name in recorder.created
                if method == "GET" and tail == "/exists":
                    return self._answer(200, {"exists": exists})
                if method == "PUT" and tail is None:
                    if exists:
                        return self._answer(409, error=f"Wrong input: Collection `{name}` already exists!")
                    recorder.created[name] = body or {}
                    return self._answer(200, True)
                if method == "GET" and tail is None:
                    if not exists:
                        return self._answer(404, error=f"Not found: Collection `{name}` doesn't exist!")
                    return self._answer(200, _collection_info(recorder.created[name]))
                if method == "PUT" and tail == "/index" and exists:
                    return self._answer(200, {"operation_id": 0, "status": "completed"})
                if method == "DELETE" and tail is None:
                    recorder.created.pop(name, None)
                    return self._answer(200, exists)
                recorder.unexpected.append(f"{method} {self.path}")
                return self._answer(501, error=f"not served by RecordingQdrant: {method} {self.path}")

            def do_GET(self) -> None:
                self._route("GET")

            def do_PUT(self) -> None:
                self._route("PUT")

            def do_DELETE(self) -> None:
                self._route("DELETE")

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> "RecordingQdrant":
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


def _collection_info(body: dict[str, Any]) -> dict[str, Any]:
    params = {
        "vectors": body["vectors"],
        "shard_number": body.get("shard_number") or 1,
        "replication_factor": body.get("replication_factor") or 1,
        "write_consistency_factor": body.get("write_consistency_factor") or 1,
        "on_disk_payload": True,
    }
    hnsw = {"m": 16, "ef_construct": 100, "full_scan_threshold": 10000, **(body.get("hnsw_config") or {})}
    return {
        "status": "green",
        "optimizer_status": "ok",
        "segments_count": 0,
        "points_count": 0,
        "payload_schema": {},
        "config": {
            "params": params,
            "hnsw_config": hnsw,
            "optimizer_config": {"default_segment_number": 0, "flush_interval_sec": 5},
            "metadata": body.get("metadata"),
        },
    }
