"""A loopback Docker-Registry-v2 server speaking the subset Ollama's registry uses (§13):
manifests by tag, blobs by digest (with Range, a redirect to "object storage" on another host
name, and optional mid-body connection cuts), bearer-token challenges, and uploads for push."""

from __future__ import annotations

import hashlib
import json
import re
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG = "application/vnd.docker.container.image.v1+json"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Logged:
    method: str
    path: str
    headers: dict
    status: int = 0


@dataclass
class FakeRegistry:
    require_token: bool = False
    token: str = "fake-token"
    redirect_blobs: bool = False  # 307 to http://localhost:PORT/storage/... (a different host than 127.0.0.1)
    blobs: dict[str, bytes] = field(default_factory=dict)
    manifests: dict[tuple[str, str], bytes] = field(default_factory=dict)  # (repo, tag) -> raw
    cuts: dict[str, int] = field(default_factory=dict)  # digest -> how many GETs to cut mid-body
    corrupt: set[str] = field(default_factory=set)  # digests served with one byte flipped
    log: list[Logged] = field(default_factory=list)
    uploads: dict[str, bytearray] = field(default_factory=dict)
    blob_delay: float = 0.0  # seconds per 64 KiB sent, to keep downloads in flight

    def __post_init__(self):
        self._lock = threading.Lock()
        handler = _make_handler(self)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- content ---------------------------------------------------------------------------

    def add_blob(self, data: bytes) -> str:
        d = digest_of(data)
        self.blobs[d] = data
        return d

    def add_model(self, repo: str, tag: str, layers: list[tuple[str, bytes]], config: dict) -> bytes:
        """layers: (mediaType, bytes) in manifest order; returns the raw manifest."""
        cfg = json.dumps(config).encode()
        cd = self.add_blob(cfg)
        manifest = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_V2,
            "config": {"mediaType": CONFIG, "digest": cd, "size": len(cfg)},
            "layers": [{"mediaType": mt, "digest": self.add_blob(data), "size": len(data)} for mt, data in layers],
        }
        raw = json.dumps(manifest, indent=2).encode()  # not our compact form: stored bytes must not matter
        self.manifests[(repo, tag)] = raw
        return raw

    def requests(self, method: str | None = None, contains: str = "") -> list[Logged]:
        with self._lock:
            return [r for r in self.log if (method is None or r.method == method) and contains in r.path]


def _make_handler(reg: FakeRegistry):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        def _record(self, status: int) -> None:
            with reg._lock:
                reg.log.append(Logged(self.command, self.path, dict(self.headers), status))

        def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False) -> None:
            self._record(status)
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head and body and self.command != "HEAD":
                self.wfile.write(body)

        def _error(self, status: int, code: str, message: str) -> None:
            body = json.dumps({"errors": [{"code": code, "message": message}]}).encode()
            self._send(status, body, {"Content-Type": "application/json"})

        def _body(self) -> bytes:
            n = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(n) if n else b""

        def do_GET(self):
            self._get(head=False)

        def do_HEAD(self):
            self._get(head=True)

        def _get(self, head: bool) -> None:
            url = urlsplit(self.path)
            if url.path == "/token":
                q = parse_qs(url.query)
                if q.get("service") != ["fake-registry"]:
                    return self._error(400, "DENIED", "bad service")
                return self._send(200, json.dumps({"token": reg.token}).encode(), {"Content-Type": "application/json"})
            if url.path.startswith("/storage/"):
                return self._blob(url.path.split("/")[-1], head)
            m = re.fullmatch(r"/v2/(.+)/manifests/([^/]+)", url.path)
            if m:
                if reg.require_token and not self._authorized_or_challenge():
                    return
                raw = reg.manifests.get((m.group(1), m.group(2)))
                if raw is None:
                    return self._error(404, "MANIFEST_UNKNOWN", "manifest unknown")
                return self._send(200, raw, {"Content-Type": MANIFEST_V2}, head)
            m = re.fullmatch(r"/v2/(.+)/blobs/(sha256:[0-9a-f]{64})", url.path)
            if m:
                if reg.require_token and not self._authorized_or_challenge():
                    return
                if reg.redirect_blobs and not head:
                    return self._send(307, b"", {"Location": f"http://localhost:{reg.port}/storage/{m.group(2)}"})
                return self._blob(m.group(2), head)
            self._error(404, "NOT_FOUND", "not found")

        def _authorized_or_challenge(self) -> bool:
            if self.headers.get("Authorization") == f"Bearer {reg.token}":
                return True
            m = re.match(r"/v2/(.+?)/(manifests|blobs)/", self.path)
            repo = m.group(1) if m else ""
            body = json.dumps({"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}).encode()
            self._send(
                401,
                body,
                {
                    "Content-Type": "application/json",
                    "WWW-Authenticate": f'Bearer realm="{reg.url}/token",service="fake-registry",'
                    f'scope="repository:{repo}:pull"',
                },
            )
            return False

        def _blob(self, digest: str, head: bool) -> None:
            if digest.startswith("sha256:") is False:
                digest = "sha256:" + digest.split("sha256:")[-1]
            data = reg.blobs.get(digest)
            if data is None:
                return self._error(404, "BLOB_UNKNOWN", "blob unknown")
            if digest in reg.corrupt:
                data = bytes([data[0] ^ 0xFF]) + data[1:]
            start = 0
            rng = self.headers.get("Range")
            if rng:
                m = re.fullmatch(r"bytes=(\d+)-", rng.strip())
                start = int(m.group(1)) if m else 0
                if start >= len(data):
                    return self._send(416, b"")
            body = data[start:]
            status = 206 if rng else 200
            headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
            if rng:
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            if head:
                return self._send(200, data, headers, head=True)
            with reg._lock:
                cut = reg.cuts.get(digest, 0) > 0
                if cut:
                    reg.cuts[digest] -= 1
            self._record(status)
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if cut:
                # Half the bytes, then drop the connection.
                self.wfile.write(body[: max(1, len(body) // 2)])
                self.wfile.flush()
                self.close_connection = True
                try:
                    self.connection.shutdown(2)
                except OSError:
                    pass
                return
            step = 1 << 16
            for i in range(0, len(body), step):
                self.wfile.write(body[i : i + step])
                if reg.blob_delay:
                    import time

                    time.sleep(reg.blob_delay)

        def do_POST(self):
            url = urlsplit(self.path)
            m = re.fullmatch(r"/v2/(.+)/blobs/uploads/?", url.path)
            if not m:
                return self._error(404, "NOT_FOUND", "not found")
            if reg.require_token and not self._authorized_or_challenge():
                return
            self._body()
            uid = uuid.uuid4().hex
            reg.uploads[uid] = bytearray()
            self._send(
                202, b"", {"Location": f"/v2/{m.group(1)}/blobs/uploads/{uid}?state=x", "Docker-Upload-UUID": uid}
            )

        def do_PUT(self):
            url = urlsplit(self.path)
            if reg.require_token and not self._authorized_or_challenge():
                self._body()
                return
            m = re.fullmatch(r"/v2/(.+)/blobs/uploads/([0-9a-f]+)", url.path)
            if m:
                q = parse_qs(url.query)
                data = bytes(reg.uploads.pop(m.group(2), bytearray())) + self._body()
                want = (q.get("digest") or [""])[0]
                if digest_of(data) != want:
                    return self._error(400, "DIGEST_INVALID", f"got {digest_of(data)}")
                reg.blobs[want] = data
                return self._send(
                    201, b"", {"Location": f"/v2/{m.group(1)}/blobs/{want}", "Docker-Content-Digest": want}
                )
            m = re.fullmatch(r"/v2/(.+)/manifests/([^/]+)", url.path)
            if m:
                raw = self._body()
                manifest = json.loads(raw)
                for layer in [*manifest["layers"], manifest["config"]]:
                    if layer["digest"] not in reg.blobs:
                        return self._error(400, "BLOB_UNKNOWN", layer["digest"])
                reg.manifests[(m.group(1), m.group(2))] = raw
                return self._send(201, b"", {"Docker-Content-Digest": digest_of(raw)})
            self._error(404, "NOT_FOUND", "not found")

    return Handler
