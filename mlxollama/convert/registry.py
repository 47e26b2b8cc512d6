"""Ollama-compatible registries (Docker Registry v2 subset, reference §13): pull and push.

Pull downloads into `blobs/sha256-<hex>-partial` and resumes with HTTP Range (after a dropped
connection within a pull, and across pulls); a blob only appears under its real name after its
sha256 matched. One asyncio lock per blob makes concurrent pulls share, not corrupt, a download.
A GGUF model layer is converted to MLX layers and then deleted; the config we write records the
GGUF digest, so re-pulling an unchanged model (or another tag of the same weights) converts
nothing and downloads nothing. A manifest made of our own MLX layers (what `push` uploads) is
stored byte for byte. Ollama's own MLX format (`-mlx` tags: tensor layers) is assembled into MLX
layers by convert/ollama_mlx.py, with the same reuse.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import platform
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx

from .. import __version__
from ..config import DEFAULT_REPORTED_VERSION, registry_override
from ..store import DEFAULT_HOST, DigestMismatch, Layer, Manifest, ModelName, Store, media
from .create import (
    SOURCE_KEY,
    TEXT_LAYER_TYPES,
    Emit,
    ManageError,
    check_gguf_architecture,
    find_converted,
    import_ollama_model,
    prune_unreferenced,
)

MAX_RETRIES = 5
RETRY_BASE_DELAY = 0.25  # seconds; doubles per retry
STALL_TIMEOUT = 30.0  # Ollama treats 30 s without bytes as a stall
PROGRESS_INTERVAL = 0.06
CHUNK = 1 << 20

# One download (or conversion) per blob at a time; an entry lives only while someone holds or
# waits for it, so a long-running server does not keep a lock per blob it ever pulled.
log = logging.getLogger("mlxollama.registry")

_blob_locks: dict[str, tuple[asyncio.Lock, int]] = {}


@contextlib.asynccontextmanager
async def _blob_lock(store: Store, key: str):
    key = f"{store.root}|{key}"
    lock, users = _blob_locks.get(key, (None, 0))
    lock = lock or asyncio.Lock()
    _blob_locks[key] = (lock, users + 1)
    try:
        async with lock:
            yield
    finally:
        lock, users = _blob_locks[key]
        if users <= 1:
            del _blob_locks[key]
        else:
            _blob_locks[key] = (lock, users - 1)


def _write_and_close(f, data: bytes) -> None:
    try:
        if data:
            f.write(data)
    finally:
        f.close()


def network_failure(e: httpx.HTTPError) -> str:
    """A transport error as Go's net/http words it, without Python's errno text."""
    url = str(e.request.url) if getattr(e, "_request", None) is not None else ""
    where = f'Get "{url}": ' if url else ""
    text = str(e).lower()
    if isinstance(e, httpx.TimeoutException):
        return where + "i/o timeout"
    if "name or service not known" in text or "nodename nor servname" in text or "no address" in text:
        host = e.request.url.host if url else ""
        return where + f"dial tcp: lookup {host}: no such host"
    if "refused" in text:
        return where + "dial tcp: connect: connection refused"
    return where + "connection failed"


def _user_agent() -> str:
    return (
        f"ollama/{DEFAULT_REPORTED_VERSION} (mlxollama {__version__}; {platform.machine()} {platform.system().lower()})"
    )


def registry_base(name: ModelName, insecure: bool) -> str:
    """`scheme://host` for a name: the default host can be redirected with MLXOLLAMA_REGISTRY."""
    host = name.host
    scheme = "http" if insecure or name.insecure else "https"
    if host.lower() == DEFAULT_HOST:
        configured = registry_override()
        if "://" in configured:
            return configured
        host = configured or DEFAULT_HOST
        scheme = "http" if insecure else "https"
    return f"{scheme}://{host}"


def _short(digest: str) -> str:
    return digest.split(":", 1)[-1][:12]


def _progress(digest: str, total: int, completed: int) -> dict:
    out: dict[str, Any] = {"status": f"pulling {_short(digest)}", "digest": digest, "total": total}
    if completed:
        out["completed"] = completed
    return out


_CHALLENGE_RE = re.compile(r'(\w+)="([^"]*)"')


class Registry:
    def __init__(self, name: ModelName, insecure: bool):
        self.name = name
        self.base = registry_base(name, insecure)
        self.repo = f"{name.namespace}/{name.model}"
        self.token: str | None = None
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(STALL_TIMEOUT, connect=30.0),
            follow_redirects=True,  # httpx drops Authorization on a redirect to another host
            headers={"User-Agent": _user_agent()},
        )

    async def __aenter__(self) -> "Registry":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.client.aclose()

    def url(self, *parts: str) -> str:
        return f"{self.base}/v2/{self.repo}/" + "/".join(parts)

    def _headers(self, extra: dict | None = None) -> dict:
        h = dict(extra or {})
        if self.token:
            h["Authorization"] = f"Bearer {self.token}"
        return h

    async def _authenticate(self, response: httpx.Response) -> bool:
        """Docker bearer-token challenge: ask the realm for an (anonymous) token."""
        challenge = response.headers.get("www-authenticate", "")
        if not challenge.lower().startswith("bearer"):
            return False
        params = dict(_CHALLENGE_RE.findall(challenge))
        realm = params.pop("realm", "")
        if not realm:
            return False
        query = {k: v for k, v in params.items() if k in ("service", "scope")}
        query["ts"] = str(int(time.time()))
        r = await self.client.get(realm, params=query)
        if r.status_code != 200:
            raise ManageError(
                f"{r.status_code}: {r.text.strip() or 'unauthorized'}", 401 if r.status_code == 401 else 500
            )
        try:
            body = r.json()
        except ValueError as e:
            raise ManageError(f"token response is not JSON: {e}") from e
        self.token = body.get("token") or body.get("access_token")
        return bool(self.token)

    async def send(
        self, method: str, url: str, *, headers: dict | None = None, content: Any = None, stream: bool = False
    ) -> httpx.Response:
        for attempt in range(2):
            req = self.client.build_request(method, url, headers=self._headers(headers), content=content)
            resp = await self.client.send(req, stream=stream)
            if resp.status_code == 401 and attempt == 0 and content is None:
                await resp.aclose()
                if await self._authenticate(resp):
                    continue
            return resp
        return resp

    async def get_manifest(self) -> bytes:
        try:
            r = await self.send("GET", self.url("manifests", self.name.tag), headers={"Accept": media.MANIFEST_V2})
        except httpx.HTTPError as e:
            log.info("pull model manifest %s: %r", self.name.display_shortest(), e)
            raise ManageError(f"pull model manifest: {network_failure(e)}") from e
        if r.status_code == 404:
            raise ManageError("pull model manifest: file does not exist")
        if r.status_code >= 400:
            raise ManageError(f"pull model manifest: {r.status_code}: {r.text.strip()}")
        return r.content

    # -- download -------------------------------------------------------------------------

    async def fetch_blob(self, store: Store, layer: Layer, emit: Emit | None) -> None:
        """Make the blob present in the store: cached, resumed, or downloaded, then verified."""
        digest, total = layer.digest, layer.size
        async with _blob_lock(store, digest):
            if store.has_blob(digest):
                if emit:
                    emit(_progress(digest, total, total))
                return
            store.blobs_dir.mkdir(parents=True, exist_ok=True)
            partial = store.blobs_dir / (store.blob_path(digest).name + "-partial")
            store._active_tmp.add(partial)  # keep a concurrent gc in this process off it
            try:
                await self._download(digest, total, partial, emit)
                try:
                    await asyncio.to_thread(store.add_blob_from_path, partial, move=True, expected_digest=digest)
                except DigestMismatch as e:
                    partial.unlink(missing_ok=True)
                    raise ManageError(
                        f"digest mismatch, file must be downloaded again: want {e.expected}, got {e.actual}"
                    ) from e
            finally:
                store._active_tmp.discard(partial)

    async def _download(self, digest: str, total: int, partial: Path, emit: Emit | None) -> None:
        url = self.url("blobs", digest)
        last_error: Exception | None = None
        retries = 0
        last_emit = 0.0
        if emit:
            done = partial.stat().st_size if partial.exists() else 0
            emit(_progress(digest, total, min(done, total)))
        while True:
            offset = partial.stat().st_size if partial.exists() else 0
            if total and offset > total:
                os.truncate(partial, 0)
                offset = 0
            if total and offset == total:
                return
            headers = {"Accept-Encoding": "identity"}
            if offset:
                headers["Range"] = f"bytes={offset}-"
            try:
                r = await self.send("GET", url, headers=headers, stream=True)
                try:
                    if r.status_code == 416 and offset:
                        os.truncate(partial, 0)  # the server cannot resume here: start over
                        continue
                    if r.status_code not in (200, 206):
                        body = (await r.aread()).decode("utf-8", "replace").strip()
                        if r.status_code == 404:
                            raise ManageError(f"blob {digest}: file does not exist")
                        raise ManageError(f"{r.status_code}: {body}")
                    mode = "ab" if r.status_code == 206 and offset else "wb"
                    done = offset if mode == "ab" else 0
                    # File writes run on a worker thread, never on the event loop; what arrived is
                    # written out even when the connection is cut, so a resume starts after it.
                    f = await asyncio.to_thread(open, partial, mode)
                    pending: list[bytes] = []
                    pending_size = 0
                    try:
                        async for chunk in r.aiter_raw():
                            pending.append(chunk)
                            pending_size += len(chunk)
                            done += len(chunk)
                            if pending_size >= CHUNK:
                                data, pending, pending_size = b"".join(pending), [], 0
                                await asyncio.to_thread(f.write, data)
                            now = time.monotonic()
                            if emit and now - last_emit >= PROGRESS_INTERVAL:
                                last_emit = now
                                emit(_progress(digest, total, min(done, total) if total else done))
                    finally:
                        await asyncio.to_thread(_write_and_close, f, b"".join(pending))
                    if not total or done >= total:
                        if emit:
                            emit(_progress(digest, total or done, total or done))
                        return
                    raise httpx.RemoteProtocolError(f"connection closed after {done} of {total} bytes")
                finally:
                    await r.aclose()
            except (httpx.TransportError, httpx.DecodingError) as e:
                last_error = e
                retries += 1
                if retries > MAX_RETRIES:
                    raise ManageError(f"max retries exceeded: {last_error}") from e
                await asyncio.sleep(RETRY_BASE_DELAY * 2 ** (retries - 1))

    # -- upload ---------------------------------------------------------------------------

    async def push_blob(self, store: Store, layer: Layer, emit: Emit) -> None:
        digest, total = layer.digest, layer.size
        status = f"pushing {_short(digest)}"
        r = await self.send("HEAD", self.url("blobs", digest))
        if r.status_code == 200:
            emit({"status": status, "digest": digest, "total": total, "completed": total})
            return
        r = await self.send("POST", self.url("blobs", "uploads") + "/")
        if r.status_code not in (201, 202):
            raise ManageError(f"{r.status_code}: {r.text.strip()}")
        if r.status_code == 201:  # mounted from another repository
            emit({"status": status, "digest": digest, "total": total, "completed": total})
            return
        location = r.headers.get("docker-upload-location") or r.headers.get("location")
        if not location:
            raise ManageError("registry did not return an upload location")
        location = urljoin(self.base + "/", location)
        sep = "&" if urlsplit(location).query else "?"
        emit({"status": status, "digest": digest, "total": total})
        path = store.blob_path(digest)

        async def body():
            sent = 0
            f = await asyncio.to_thread(open, path, "rb")
            try:
                while chunk := await asyncio.to_thread(f.read, CHUNK):  # reads off the event loop
                    sent += len(chunk)
                    yield chunk
                    emit({"status": status, "digest": digest, "total": total, "completed": sent})
            finally:
                f.close()

        r = await self.send(
            "PUT",
            f"{location}{sep}digest={digest}",
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(total)},
            content=body(),
        )
        if r.status_code == 401 and await self._authenticate(r):
            r = await self.send(
                "PUT",
                f"{location}{sep}digest={digest}",
                headers={"Content-Type": "application/octet-stream", "Content-Length": str(total)},
                content=body(),
            )
        if r.status_code not in (200, 201, 204):
            raise ManageError(f"{r.status_code}: {r.text.strip()}")

    async def put_manifest(self, raw: bytes) -> None:
        r = await self.send(
            "PUT", self.url("manifests", self.name.tag), headers={"Content-Type": media.MANIFEST_V2}, content=raw
        )
        if r.status_code == 401 and await self._authenticate(r):
            r = await self.send(
                "PUT", self.url("manifests", self.name.tag), headers={"Content-Type": media.MANIFEST_V2}, content=raw
            )
        if r.status_code not in (200, 201, 202):
            raise ManageError(f"{r.status_code}: {r.text.strip()}")


# ----------------------------------------------------------------------------------- pull


def _kind(manifest: Manifest) -> str:
    types = {l.media_type for l in manifest.layers}
    if media.OLLAMA_TENSOR in types:
        return "ollama-mlx"
    if types & media.MLX_TYPES:
        return "mlx"
    if media.MODEL in types:
        return "gguf"
    return "unknown"


async def pull_registry(store: Store, name: ModelName, *, insecure: bool, emit: Emit, noprune: bool = False) -> None:
    if name.insecure and not insecure:
        raise ManageError("insecure protocol http")
    emit({"status": "pulling manifest"})
    async with Registry(name, insecure) as reg:
        raw = await reg.get_manifest()
        try:
            manifest = Manifest.from_bytes(raw)
        except ValueError as e:
            raise ManageError(f"pull model manifest: {e}") from e
        kind = _kind(manifest)
        if kind == "mlx":
            await _pull_verbatim(reg, store, name, manifest, raw, emit, noprune)
        elif kind == "gguf":
            await _pull_gguf(reg, store, name, manifest, emit, noprune)
        elif kind == "ollama-mlx":
            await _pull_ollama_mlx(reg, store, name, manifest, emit, noprune)
        else:
            raise ManageError("pull model manifest: manifest has no model layer")


async def _pull_verbatim(
    reg: Registry, store: Store, name: ModelName, manifest: Manifest, raw: bytes, emit: Emit, noprune: bool
) -> None:
    for layer in [*manifest.layers, manifest.config]:
        await reg.fetch_blob(store, layer, emit)
    emit({"status": "verifying sha256 digest"})
    emit({"status": "writing manifest"})

    def write() -> list[str]:
        with store.lock:
            old = store.get_manifest(name)
            store.write_manifest(name, raw)
        return [] if old is None or noprune else prune_unreferenced(store, set(old.manifest.digests()))

    if await asyncio.to_thread(write):
        emit({"status": "removing unused layers"})


async def _pull_gguf(
    reg: Registry, store: Store, name: ModelName, manifest: Manifest, emit: Emit, noprune: bool
) -> None:
    models = [l for l in manifest.layers if l.media_type == media.MODEL]
    if len(models) != 1:
        raise ManageError(f"pull model: expected one model layer, found {len(models)}", 400)
    if any(l.media_type == media.ADAPTER for l in manifest.layers):
        raise ManageError("pull model: models with a LoRA adapter layer cannot be converted to MLX", 400)
    model = models[0]
    # (imported here: the GGUF importer brings MLX, which a pull of another kind does not need)
    from .gguf_vision import source_key_for, vision_refusal

    projectors = [l for l in manifest.layers if l.media_type == media.PROJECTOR]
    if len(projectors) > 1:
        raise ManageError(f"pull model: expected at most one projector layer, found {len(projectors)}", 400)
    projector = projectors[0] if projectors else None

    async with _blob_lock(store, model.digest + "#convert"):
        reuse = await asyncio.to_thread(_find_gguf_conversion, store, model.digest, projector)
        original_config: dict = {}
        if reuse is None:
            # The config is tiny and names the architecture: refuse before the large download.
            await reg.fetch_blob(store, manifest.config, None)
            try:
                original_config = json.loads(store.blob_path(manifest.config.digest).read_bytes())
            except ValueError:
                pass
            if not isinstance(original_config, dict):
                original_config = {}
            fmt = original_config.get("model_format", "gguf")
            try:
                if fmt not in ("", "gguf"):
                    raise ManageError(f'unsupported model format "{fmt}"', 400)
                family = str(original_config.get("model_family") or "")
                refusal = vision_refusal(family, projector is not None)
                if refusal:  # before the large download, like an unknown architecture
                    raise ManageError(f"pull model: {refusal}", 400)
                check_gguf_architecture(family)
            except ManageError:
                await asyncio.to_thread(prune_unreferenced, store, {manifest.config.digest})
                raise
        for layer in manifest.layers:
            if layer is model and reuse is not None:
                emit(_progress(layer.digest, layer.size, layer.size))
            elif layer is projector and reuse is not None:
                emit(_progress(layer.digest, layer.size, layer.size))
            else:
                await reg.fetch_blob(store, layer, emit)
        emit(_progress(manifest.config.digest, manifest.config.size, manifest.config.size))
        emit({"status": "verifying sha256 digest"})
        text_layers = [l for l in manifest.layers if l.media_type in TEXT_LAYER_TYPES]
        gguf = store.blob_path(model.digest) if reuse is None else None
        projector_path = store.blob_path(projector.digest) if projector is not None and reuse is None else None
        if reuse is not None:
            source_key = reuse.read_config().get(SOURCE_KEY) or model.digest
        else:
            source_key = await asyncio.to_thread(
                source_key_for, gguf, model.digest, projector.digest if projector else None
            )
        await asyncio.to_thread(
            import_ollama_model,
            store,
            name,
            gguf_path=gguf,
            gguf_digest=model.digest,
            text_layers=text_layers,
            original_config=original_config,
            emit=emit,
            noprune=noprune,
            projector_path=projector_path,
            source_key=source_key,
        )
        # The GGUFs and Ollama's config are not part of what we store: drop them unless referenced.
        dropped = {model.digest, manifest.config.digest, *([projector.digest] if projector else [])}
        await asyncio.to_thread(prune_unreferenced, store, dropped)


def _find_gguf_conversion(store: Store, model_digest: str, projector: Layer | None):
    """An earlier conversion of this pull's GGUF (and projector). One made from the GGUF alone is not
    reused for a family whose vision tower is converted: it predates that, and left the tower out."""
    from .gguf_vision import VISION_FAMILIES, vision_source_key

    reuse = find_converted(store, vision_source_key(model_digest, projector.digest if projector else None))
    if reuse is not None or projector is not None:
        return reuse
    plain = find_converted(store, model_digest)
    if plain is not None and plain.read_config().get("model_family") in VISION_FAMILIES:
        return None
    return plain


async def _pull_ollama_mlx(
    reg: Registry, store: Store, name: ModelName, manifest: Manifest, emit: Emit, noprune: bool
) -> None:
    """Ollama's own MLX format (`-mlx` tags): config.json first, refused by architecture before the
    tensor layers download; then every layer to the store, then one MLX folder assembled from them."""
    from . import ollama_mlx

    jsons = ollama_mlx.json_layers(manifest.layers)
    fetched = {manifest.config.digest, *(l.digest for l in manifest.layers)}
    async with _blob_lock(store, ollama_mlx.source_digest(manifest.layers) + "#convert"):
        reuse = await asyncio.to_thread(ollama_mlx.find_import, store, manifest.layers)
        original_config: dict = {}
        if reuse is None:
            small = [manifest.config, *jsons.values()]
            for layer in small:
                await reg.fetch_blob(store, layer, None)
            try:
                original_config = json.loads(store.blob_path(manifest.config.digest).read_bytes())
            except ValueError:
                pass
            if not isinstance(original_config, dict):
                original_config = {}
            try:
                if "config.json" not in jsons:
                    raise ManageError("pull model: the model has no config.json layer", 400)
                try:
                    hf_config = json.loads(store.blob_path(jsons["config.json"].digest).read_bytes())
                except ValueError as e:
                    raise ManageError("pull model: config.json is not valid JSON", 400) from e
                if not isinstance(hf_config, dict):
                    raise ManageError("pull model: config.json is not a JSON object", 400)
                ollama_mlx.check_architecture(hf_config)
            except ManageError:
                await asyncio.to_thread(prune_unreferenced, store, {l.digest for l in small})
                raise
        if any(ollama_mlx.is_draft(l) for l in manifest.layers):
            emit({"status": "skipping the draft model: speculative decoding is not used"})
        for layer in manifest.layers:
            if ollama_mlx.is_draft(layer):
                continue
            if reuse is not None and layer.media_type in (media.OLLAMA_TENSOR, media.OLLAMA_JSON):
                emit(_progress(layer.digest, layer.size, layer.size))
            else:
                await reg.fetch_blob(store, layer, emit)
        emit(_progress(manifest.config.digest, manifest.config.size, manifest.config.size))
        emit({"status": "verifying sha256 digest"})
        try:
            await asyncio.to_thread(
                ollama_mlx.import_pulled,
                store,
                name,
                manifest_layers=manifest.layers,
                original_config=original_config,
                reuse=reuse,
                emit=emit,
                noprune=noprune,
            )
        finally:
            # Ollama's tensor and config layers are not what we store: drop them unless referenced.
            await asyncio.to_thread(prune_unreferenced, store, fetched)


# ----------------------------------------------------------------------------------- push


async def push_registry(store: Store, name: ModelName, *, insecure: bool, emit: Emit) -> None:
    emit({"status": "retrieving manifest"})
    if name.insecure and not insecure:
        raise ManageError("insecure protocol http")
    stored = store.get_manifest(name)
    if stored is None:
        emit({"status": "couldn't retrieve manifest"})
        raise ManageError(f"open {store.manifests_dir.joinpath(*name.manifest_parts())}: no such file or directory")
    async with Registry(stored.name, insecure) as reg:
        for layer in [*stored.manifest.layers, stored.manifest.config]:
            await reg.push_blob(store, layer, emit)
        emit({"status": "pushing manifest"})
        await reg.put_manifest(stored.raw)
