"""A loopback Hugging Face Hub speaking what `huggingface_hub.snapshot_download` (2.x) needs:
repo info with siblings (`GET /api/models/{repo}/revision/{rev}`), the recursive tree listing,
and `HEAD`/`GET /{repo}/resolve/{rev}/{file}` with X-Repo-Commit, ETag, Content-Length and Range.
Point huggingface_hub at it with HF_ENDPOINT."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class FakeHub:
    repos: dict[str, dict[str, bytes]] = field(default_factory=dict)  # repo -> {path: bytes}
    lfs_sha_override: dict[tuple[str, str], str] = field(default_factory=dict)  # advertise a wrong sha256
    log: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def add_repo(self, repo: str, files: dict[str, bytes]) -> None:
        self.repos[repo] = dict(files)

    def add_folder(self, repo: str, folder: Path, extra: dict[str, bytes] | None = None) -> None:
        files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
        files.update(extra or {})
        self.add_repo(repo, files)

    def _is_lfs(self, path: str) -> bool:
        return path.endswith((".safetensors", ".gguf", ".bin"))

    def _sibling(self, repo: str, path: str, data: bytes) -> dict:
        out = {"rfilename": path, "size": len(data), "blobId": hashlib.sha1(data).hexdigest()}
        if self._is_lfs(path):
            sha = self.lfs_sha_override.get((repo, path)) or hashlib.sha256(data).hexdigest()
            out["lfs"] = {"size": len(data), "sha256": sha, "pointerSize": 134}
        return out

    def _tree_entry(self, repo: str, path: str, data: bytes) -> dict:
        out = {"type": "file", "path": path, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
        if self._is_lfs(path):
            sha = self.lfs_sha_override.get((repo, path)) or hashlib.sha256(data).hexdigest()
            out["lfs"] = {"oid": sha, "size": len(data), "pointerSize": 134}
        return out


def _make_handler(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False):
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head and body and self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, obj) -> None:
            self._send(200, json.dumps(obj).encode(), {"Content-Type": "application/json"})

        def _not_found(self, code: str = "RepoNotFound") -> None:
            self._send(
                404,
                json.dumps({"error": "Repository not found"}).encode(),
                {"Content-Type": "application/json", "X-Error-Code": code, "X-Error-Message": "Repository not found"},
            )

        def do_GET(self):
            self._handle(head=False)

        def do_HEAD(self):
            self._handle(head=True)

        def _handle(self, head: bool) -> None:
            url = urlsplit(self.path)
            path = unquote(url.path)
            hub.log.append((self.command, self.path))
            m = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", path)
            if m:
                files = hub.repos.get(m.group(1))
                if files is None:
                    return self._not_found()
                return self._json(
                    {
                        "id": m.group(1),
                        "modelId": m.group(1),
                        "sha": COMMIT,
                        "private": False,
                        "siblings": [hub._sibling(m.group(1), p, d) for p, d in sorted(files.items())],
                    }
                )
            m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(/.*)?", path)
            if m:
                files = hub.repos.get(m.group(1))
                if files is None:
                    return self._not_found()
                return self._json([hub._tree_entry(m.group(1), p, d) for p, d in sorted(files.items())])
            m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
            if m:
                files = hub.repos.get(m.group(1))
                if files is None:
                    return self._not_found()
                data = files.get(m.group(3))
                if data is None:
                    return self._not_found("EntryNotFound")
                etag = hashlib.sha256(data).hexdigest() if hub._is_lfs(m.group(3)) else hashlib.sha1(data).hexdigest()
                headers = {
                    "X-Repo-Commit": COMMIT,
                    "ETag": f'"{etag}"',
                    "Accept-Ranges": "bytes",
                    "Content-Type": "application/octet-stream",
                }
                start = 0
                rng = self.headers.get("Range")
                if rng and not head:
                    mm = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
                    start = int(mm.group(1)) if mm else 0
                    headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                    return self._send(206, data[start:], headers)
                return self._send(200, data, headers, head=head)
            self._send(404, b"not found")

    return Handler
