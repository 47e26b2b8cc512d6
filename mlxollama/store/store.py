"""Ollama-layout model store: `manifests/<host>/<ns>/<model>/<tag>` + `blobs/sha256-<hex>`.

Everything that changes the tree goes through one lock (thread RLock plus an
advisory `flock` file on POSIX) so gc/delete can never race a writer into
deleting a blob it just stored. Blob bodies are streamed *outside* the lock
(multi-GB uploads must not block listing or other writers); only the final
rename into place is done under it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import re
import shutil
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Iterable, Iterator, Union

from . import media
from .names import InvalidName, ModelName

try:  # POSIX only; elsewhere the inter-process lock is a no-op.
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

CHUNK = 1 << 20
DIR_MODE = 0o755
FILE_MODE = 0o644
# Temp files start with '.', so they can never parse as a model name or blob.
TMP_PREFIX = ".tmp-mlxollama-"
_OWNED_TMP_RE = re.compile(r"\.tmp-mlxollama-(?:work-)?p(\d+)-")


def owned_temp_prefix(prefix: str = TMP_PREFIX) -> str:
    """Temp names carry the writing process's id, so the next start-up can tell the leftovers of a
    killed server (remove now) from files another live process is still writing (leave)."""
    return f"{prefix}p{os.getpid()}-"


def is_orphaned_temp(name: str) -> bool:
    """True for a temp file or folder whose writing process no longer runs."""
    m = _OWNED_TMP_RE.match(name)
    if not m:
        return False
    pid = int(m.group(1))
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OSError):
        return False
    return False


LOCK_NAME = ".mlxollama-store.lock"

_DIGEST_RE = re.compile(r"sha256[:-]([0-9a-fA-F]{64})")
_BLOB_NAME_RE = re.compile(r"sha256-[0-9a-fA-F]{64}")
_DIGEST_SCAN_RE = re.compile(rb"sha256[:-]([0-9a-fA-F]{64})")

BlobSource = Union[bytes, bytearray, memoryview, BinaryIO, Iterable[bytes], os.PathLike]


# ----------------------------------------------------------------------------- errors


class StoreError(Exception):
    pass


class ModelNotFound(StoreError, LookupError):
    """Message follows /api/delete (`model 'NAME' not found`); handlers that
    need another wording (copy, embed) format their own from `.name`."""

    def __init__(self, name: ModelName | str):
        self.name = name
        shown = name.display_shortest() if isinstance(name, ModelName) else str(name)
        super().__init__(f"model '{shown}' not found")


class InvalidDigest(StoreError, ValueError):
    def __init__(self, digest: object = None):
        super().__init__("invalid digest format")
        self.digest = digest


class DigestMismatch(StoreError, ValueError):
    def __init__(self, expected: str, actual: str):
        super().__init__(f'digest mismatch, expected "{expected}", got "{actual}"')
        self.expected = expected
        self.actual = actual


class BlobNotFound(StoreError, LookupError):
    def __init__(self, digest: str):
        super().__init__(f'blob "{digest}" not found')
        self.digest = digest


class InvalidManifest(StoreError, ValueError):
    pass


class InvalidLayerName(StoreError, ValueError):
    def __init__(self, name: object):
        super().__init__(f"invalid layer file name {name!r}")
        self.name = name


# ----------------------------------------------------------------------------- digests


def validate_digest(digest: str) -> str:
    """Return the canonical `sha256:<lowercase hex>`; accepts the `sha256-` file form too."""
    if not isinstance(digest, str):
        raise InvalidDigest(digest)
    m = _DIGEST_RE.fullmatch(digest)
    if m is None:
        raise InvalidDigest(digest)
    return "sha256:" + m.group(1).lower()


def is_valid_digest(digest: str) -> bool:
    try:
        validate_digest(digest)
        return True
    except InvalidDigest:
        return False


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------- manifest model


@dataclass
class Layer:
    media_type: str
    digest: str
    size: int
    name: str | None = None
    from_: str | None = None

    def to_dict(self) -> dict[str, Any]:
        # Key order and omitempty follow Ollama's Go struct.
        d: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.from_:
            d["from"] = self.from_
        if self.name:
            d["name"] = self.name
        return d

    @classmethod
    def from_dict(cls, d: Any) -> "Layer":
        if not isinstance(d, dict):
            raise InvalidManifest("layer is not an object")
        mt, digest, size = d.get("mediaType", ""), d.get("digest", ""), d.get("size", 0)
        if not isinstance(mt, str) or not isinstance(digest, str):
            raise InvalidManifest("layer mediaType/digest must be strings")
        if isinstance(size, bool) or not isinstance(size, int):
            raise InvalidManifest("layer size must be an integer")
        name, from_ = d.get("name"), d.get("from")
        return cls(
            mt,
            digest,
            size,
            name if isinstance(name, str) and name else None,
            from_ if isinstance(from_, str) and from_ else None,
        )


@dataclass
class Manifest:
    config: Layer
    layers: list[Layer]
    schema_version: int = 2
    media_type: str = media.MANIFEST_V2

    def to_dict(self) -> dict[str, Any]:
        return {
            "schemaVersion": self.schema_version,
            "mediaType": self.media_type,
            "config": self.config.to_dict(),
            "layers": [layer.to_dict() for layer in self.layers],
        }

    def to_bytes(self) -> bytes:
        # Compact + newline, like Go's json.Encoder in Ollama's create.
        return (json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False) + "\n").encode()

    @classmethod
    def from_dict(cls, d: Any) -> "Manifest":
        if not isinstance(d, dict) or not isinstance(d.get("config"), dict):
            raise InvalidManifest("manifest has no config object")
        layers = d.get("layers") or []
        if not isinstance(layers, list):
            raise InvalidManifest("manifest layers is not an array")
        sv = d.get("schemaVersion", 2)
        return cls(
            config=Layer.from_dict(d["config"]),
            layers=[Layer.from_dict(x) for x in layers],
            schema_version=sv if isinstance(sv, int) else 2,
            media_type=d.get("mediaType") if isinstance(d.get("mediaType"), str) else "",
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> "Manifest":
        try:
            d = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise InvalidManifest(f"manifest is not valid JSON: {e}") from None
        return cls.from_dict(d)

    def all_layers(self) -> list[Layer]:
        return [*self.layers, self.config]

    def digests(self) -> list[str]:
        return [layer.digest for layer in self.all_layers() if layer.digest]


@dataclass
class StoredManifest:
    name: ModelName  # spelling as stored on disk
    manifest: Manifest
    raw: bytes
    digest_hex: str  # sha256 of the raw manifest bytes: /api/tags `digest`
    modified_at: float  # manifest file mtime
    path: Path
    store: "Store" = field(repr=False, compare=False)

    @property
    def size(self) -> int:
        return sum(layer.size for layer in self.manifest.all_layers())

    @property
    def digest(self) -> str:
        return "sha256:" + self.digest_hex

    def layers_by_type(self, media_type: str) -> list[Layer]:
        return [layer for layer in self.manifest.layers if layer.media_type == media_type]

    def layer_named(self, name: str) -> Layer | None:
        return next((layer for layer in self.manifest.layers if layer.name == name), None)

    def read_blob(self, layer: Layer) -> bytes:
        return self.store.blob_path(layer.digest).read_bytes()

    def read_config(self) -> dict:
        if not self.manifest.config.digest:
            return {}
        data = json.loads(self.read_blob(self.manifest.config))
        return data if isinstance(data, dict) else {}

    def read_layer_text(self, media_type: str) -> str | None:
        layers = self.layers_by_type(media_type)
        return self.read_blob(layers[0]).decode("utf-8") if layers else None

    def read_layer_texts(self, media_type: str) -> list[str]:
        return [self.read_blob(layer).decode("utf-8") for layer in self.layers_by_type(media_type)]

    def read_layer_json(self, media_type: str, default: Any = None) -> Any:
        text = self.read_layer_text(media_type)
        return default if text is None else json.loads(text)

    def read_named_text(self, name: str) -> str | None:
        layer = self.layer_named(name)
        return None if layer is None else self.read_blob(layer).decode("utf-8")


@dataclass
class GCResult:
    blobs: list[str] = field(default_factory=list)  # digests removed
    files: list[Path] = field(default_factory=list)  # temp / partial / junk files removed
    dirs: list[Path] = field(default_factory=list)  # empty manifest dirs removed


# ----------------------------------------------------------------------------- filesystem helpers


def fsync_dir(path: Path) -> None:
    # Makes a rename durable; directories can't be opened this way on Windows.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _chmod(path: Path | str, mode: int) -> None:
    try:
        os.chmod(path, mode)
    except OSError:
        pass


def _makedirs(path: Path) -> None:
    os.makedirs(path, mode=DIR_MODE, exist_ok=True)


def _unlink_quiet(path: Path | str) -> bool:
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via same-dir temp + fsync + os.replace, so readers never see a partial file."""
    path = Path(path)
    _makedirs(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=owned_temp_prefix())
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        _chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        _unlink_quiet(tmp)
        raise
    fsync_dir(path.parent)


def _iter_chunks(data: BlobSource) -> Iterator[bytes]:
    if isinstance(data, (bytes, bytearray, memoryview)):
        yield bytes(data) if not isinstance(data, bytes) else data
    elif isinstance(data, (str,)):
        raise TypeError("write_blob takes bytes, a binary file, an iterator of bytes or a Path, not str")
    elif isinstance(data, os.PathLike):
        with open(data, "rb") as f:
            yield from _iter_chunks(f)
    elif hasattr(data, "read"):
        while True:
            chunk = data.read(CHUNK)
            if not chunk:
                break
            if not isinstance(chunk, (bytes, bytearray, memoryview)):
                raise TypeError("file-like blob source must be opened in binary mode")
            yield chunk
    else:
        for chunk in data:
            if not isinstance(chunk, (bytes, bytearray, memoryview)):
                raise TypeError(f"blob chunks must be bytes, got {type(chunk).__name__}")
            yield chunk


def _hash_file(path: Path) -> tuple[str, int]:
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return "sha256:" + h.hexdigest(), size


def _safe_relpath(name: str) -> str:
    """Layer `name` -> relative POSIX path, refusing anything that could escape the run dir."""
    if not isinstance(name, str) or not name or "\\" in name or "\x00" in name:
        raise InvalidLayerName(name)
    if PurePosixPath(name).is_absolute() or re.match(r"[A-Za-z]:", name):
        raise InvalidLayerName(name)
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise InvalidLayerName(name)
    return name


def _as_name(name: ModelName | str) -> ModelName:
    return ModelName.parse(name) if isinstance(name, str) else name


def _link_or_copy(src: Path, dest: Path) -> None:
    try:
        os.symlink(src, dest)
        return
    except (OSError, NotImplementedError):
        pass  # e.g. Windows without the symlink privilege
    try:
        os.link(src, dest)
        return
    except OSError:
        pass
    shutil.copyfile(src, dest)


# ----------------------------------------------------------------------------- lock


class StoreLock:
    """Re-entrant in-process lock plus an advisory `flock` between processes.

    The file lock is best effort: where it cannot be taken (no fcntl, read-only
    root, a filesystem without locks) the thread lock alone still applies.
    """

    def __init__(self, path: Path):
        self._path = path
        self._rlock = threading.RLock()
        self._depth = 0
        self._fd: int | None = None

    def acquire(self) -> None:
        self._rlock.acquire()
        if self._depth == 0 and fcntl is not None:
            try:
                self._path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self._path, os.O_RDWR | os.O_CREAT, FILE_MODE)
            except OSError:
                fd = None
            if fd is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                    self._fd = fd
                except OSError:
                    os.close(fd)
                except BaseException:
                    os.close(fd)
                    self._rlock.release()
                    raise
        self._depth += 1

    def release(self) -> None:
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
        self._rlock.release()

    def __enter__(self) -> "StoreLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# ----------------------------------------------------------------------------- blob writer


class BlobWriter:
    """Incremental blob write (e.g. an HTTP body arriving in chunks).

    Use as a context manager; leaving it without `commit()` deletes the temp file.
    """

    def __init__(self, store: "Store", expected_digest: str | None = None):
        self._store = store
        self.expected = validate_digest(expected_digest) if expected_digest is not None else None
        _makedirs(store.blobs_dir)
        # Registered before it exists, so a concurrent gc can never see it unprotected.
        self.tmp_path = store.blobs_dir / f"{owned_temp_prefix()}{uuid.uuid4().hex}"
        store._active_tmp.add(self.tmp_path)
        try:
            fd = os.open(self.tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), FILE_MODE)
        except BaseException:
            store._active_tmp.discard(self.tmp_path)
            raise
        self._f = os.fdopen(fd, "wb")
        self._hash = hashlib.sha256()
        self.size = 0
        self._done = False

    def write(self, chunk: bytes) -> None:
        self._f.write(chunk)
        self._hash.update(chunk)
        self.size += memoryview(chunk).nbytes

    def commit(self) -> tuple[str, int]:
        if self._done:
            raise StoreError("blob writer already finished")
        try:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
            digest = "sha256:" + self._hash.hexdigest()
            if self.expected is not None and digest != self.expected:
                raise DigestMismatch(self.expected, digest)
            _chmod(self.tmp_path, FILE_MODE)
            self._store._install(self.tmp_path, digest, self.size)
        except BaseException:
            self.abort()
            raise
        self._done = True
        self._store._active_tmp.discard(self.tmp_path)
        return digest, self.size

    def abort(self) -> None:
        self._done = True
        try:
            self._f.close()
        except OSError:
            pass
        _unlink_quiet(self.tmp_path)
        self._store._active_tmp.discard(self.tmp_path)

    def __enter__(self) -> "BlobWriter":
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if not self._done:
            self.abort()


# ----------------------------------------------------------------------------- store


class Store:
    def __init__(self, root: Path | str, *, fresh_blob_grace: float = 3600.0):
        """`fresh_blob_grace`: seconds during which a blob this process just wrote
        is protected from gc/delete even though no manifest references it yet
        (the gap between POST /api/blobs and /api/create)."""
        self.root = Path(root).expanduser().absolute()
        self.manifests_dir = self.root / "manifests"
        self.blobs_dir = self.root / "blobs"
        self.lock = StoreLock(self.root / LOCK_NAME)
        self.fresh_blob_grace = fresh_blob_grace
        self._fresh: dict[str, float] = {}  # digest -> monotonic time written
        self._active_tmp: set[Path] = set()  # temp files being written right now

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    def _ensure_dirs(self) -> None:
        _makedirs(self.manifests_dir)
        _makedirs(self.blobs_dir)

    # -- blobs ---------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        return self.blobs_dir / validate_digest(digest).replace(":", "-")

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def blob_size(self, digest: str) -> int | None:
        try:
            return self.blob_path(digest).stat().st_size
        except FileNotFoundError:
            return None

    def blob_writer(self, expected_digest: str | None = None) -> BlobWriter:
        return BlobWriter(self, expected_digest)

    def write_blob(self, data: BlobSource, expected_digest: str | None = None) -> tuple[str, int]:
        """Stream `data` into the store; returns (digest, size). Raises DigestMismatch
        (leaving nothing behind) when `expected_digest` is given and differs."""
        with self.blob_writer(expected_digest) as w:
            for chunk in _iter_chunks(data):
                w.write(chunk)
            return w.commit()

    def add_blob_from_path(
        self, path: Path | str, *, link_ok: bool = False, expected_digest: str | None = None, move: bool = False
    ) -> tuple[str, int]:
        """Add a local file. `link_ok` hardlinks instead of copying when on the same
        filesystem (the source must then never be modified in place). `move` renames
        the file into the store (for a finished download); falls back to copy."""
        expected = validate_digest(expected_digest) if expected_digest is not None else None
        src = Path(path).resolve()  # os.link on a symlink would link the symlink itself on Linux
        if not src.is_file():
            raise FileNotFoundError(str(path))
        if move or link_ok:
            self._ensure_dirs()
            tmp = self.blobs_dir / f"{owned_temp_prefix()}{uuid.uuid4().hex}"
            self._active_tmp.add(tmp)
            try:
                try:
                    if move:
                        os.rename(src, tmp)
                    else:
                        os.link(src, tmp)
                    placed = True
                except OSError:
                    placed = False  # other filesystem / no hardlinks: copy below
                if placed:
                    # Hash the store's own name for the inode, after linking, so the
                    # digest describes exactly what got installed.
                    digest, size = _hash_file(tmp)
                    if expected is not None and digest != expected:
                        if move:
                            os.rename(tmp, src)  # give the caller its file back
                        else:
                            _unlink_quiet(tmp)
                        raise DigestMismatch(expected, digest)
                    if move:
                        _chmod(tmp, FILE_MODE)
                    self._install(tmp, digest, size)
                    return digest, size
            finally:
                self._active_tmp.discard(tmp)
        digest, size = self.write_blob(src, expected)
        if move:
            _unlink_quiet(src)
        return digest, size

    def add_layer(
        self, data: BlobSource, media_type: str, *, name: str | None = None, from_: str | None = None
    ) -> Layer:
        digest, size = self.write_blob(data)
        return Layer(media_type, digest, size, name=name, from_=from_)

    def add_config(self, config: dict) -> Layer:
        data = json.dumps(config, separators=(",", ":"), ensure_ascii=False).encode()
        return self.add_layer(data, media.CONFIG)

    def _install(self, tmp: Path, digest: str, size: int) -> None:
        final = self.blob_path(digest)
        with self.lock:
            try:
                existing = final.stat().st_size
            except FileNotFoundError:
                existing = None
            if existing == size:
                _unlink_quiet(tmp)  # identical content already there (concurrent writer won)
            else:
                try:
                    os.replace(tmp, final)
                except FileNotFoundError:
                    raise StoreError("temporary blob file vanished (removed by another process's gc?)") from None
                fsync_dir(self.blobs_dir)
            self._fresh[digest] = time.monotonic()

    def _is_fresh(self, digest: str) -> bool:
        t = self._fresh.get(digest)
        if t is None:
            return False
        if time.monotonic() - t < self.fresh_blob_grace:
            return True
        self._fresh.pop(digest, None)
        return False

    # -- names ---------------------------------------------------------------

    def _manifest_path(self, name: ModelName) -> Path:
        return self.manifests_dir.joinpath(*name.manifest_parts())

    @staticmethod
    def _candidates(directory: Path, part: str, want_dir: bool) -> list[str]:
        """Entries of `directory` equal to `part` ignoring case; exact spelling first."""
        try:
            entries = os.listdir(directory)
        except (FileNotFoundError, NotADirectoryError):
            return []
        low = part.lower()
        exact = [part] if part in entries else []
        folded = sorted(e for e in entries if e != part and e.lower() == low)
        out = []
        for e in exact + folded:
            p = directory / e
            if p.is_dir() if want_dir else p.is_file():
                out.append(e)
        return out

    def resolve(self, name: ModelName | str) -> ModelName | None:
        """The stored spelling of `name` (each part matched case-insensitively), or None."""
        name = _as_name(name)
        parts = name.manifest_parts()

        def walk(directory: Path, i: int, found: list[str]) -> list[str] | None:
            for e in self._candidates(directory, parts[i], want_dir=i < 3):
                if i == 3:
                    return found + [e]
                hit = walk(directory / e, i + 1, found + [e])
                if hit:
                    return hit
            return None

        hit = walk(self.manifests_dir, 0, [])
        return name.with_parts(*hit) if hit else None

    def _spelling_for_write(self, name: ModelName | str) -> ModelName:
        """Where `name` should be written: an existing manifest's spelling, else the
        spelling of each directory level that already exists (§2.2)."""
        name = _as_name(name)
        if not name.is_valid():
            raise InvalidName(str(name))
        existing = self.resolve(name)
        if existing is not None:
            return existing
        out: list[str] = []
        directory: Path | None = self.manifests_dir
        for i, part in enumerate(name.manifest_parts()):
            cands = self._candidates(directory, part, want_dir=i < 3) if directory is not None else []
            if cands:
                out.append(cands[0])
                directory = directory / cands[0]
            else:
                out.append(part)
                directory = None  # nothing deeper can exist
        return name.with_parts(*out)

    # -- manifests -----------------------------------------------------------

    def _load(self, name: ModelName, path: Path) -> StoredManifest:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            raw = f.read()
        return StoredManifest(
            name=name,
            manifest=Manifest.from_bytes(raw),
            raw=raw,
            digest_hex=hashlib.sha256(raw).hexdigest(),
            modified_at=st.st_mtime,
            path=path,
            store=self,
        )

    def get_manifest(self, name: ModelName | str) -> StoredManifest | None:
        """Raises InvalidManifest if the stored file is not a manifest."""
        stored = self.resolve(name)
        if stored is None:
            return None
        try:
            return self._load(stored, self._manifest_path(stored))
        except (FileNotFoundError, NotADirectoryError):
            return None  # deleted between resolve and read

    def write_manifest(self, name: ModelName | str, manifest: Manifest | bytes) -> ModelName:
        """Write (or overwrite) a manifest; bytes are stored verbatim. Returns the
        spelling actually used on disk."""
        if isinstance(manifest, (bytes, bytearray, memoryview)):
            raw = bytes(manifest)
            parsed = Manifest.from_bytes(raw)
        elif isinstance(manifest, Manifest):
            parsed, raw = manifest, manifest.to_bytes()
        else:
            raise TypeError("manifest must be a Manifest or bytes")
        if not parsed.config.digest:
            raise InvalidManifest("manifest has no config digest")
        digests = [validate_digest(layer.digest) for layer in parsed.all_layers()]
        with self.lock:
            for d in digests:
                if not self.has_blob(d):
                    raise BlobNotFound(d)
            target = self._spelling_for_write(name)
            atomic_write_bytes(self._manifest_path(target), raw)
            for d in digests:
                self._fresh.pop(d, None)  # referenced now; gc reachability protects it
        return target

    def _iter_manifest_files(self) -> Iterator[tuple[tuple[str, str, str, str], Path]]:
        """Every regular file exactly four levels below manifests/ (Ollama's glob)."""

        def subdirs(p: Path) -> list[os.DirEntry]:
            try:
                with os.scandir(p) as it:
                    return [e for e in it if e.is_dir()]
            except OSError:
                return []

        for h in subdirs(self.manifests_dir):
            for n in subdirs(Path(h.path)):
                for m in subdirs(Path(n.path)):
                    try:
                        with os.scandir(m.path) as it:
                            tags = [e for e in it if e.is_file()]
                    except OSError:
                        continue
                    for t in tags:
                        yield (h.name, n.name, m.name, t.name), Path(t.path)

    def list_models(self) -> list[StoredManifest]:
        """All readable manifests, newest first; junk names/contents are skipped."""
        out = []
        for parts, path in self._iter_manifest_files():
            name = ModelName(*parts)
            if not name.is_valid():
                continue
            try:
                out.append(self._load(name, path))
            except (OSError, InvalidManifest):
                continue
        out.sort(key=lambda s: (-s.modified_at, s.name.display_full()))
        return out

    def copy(self, src: ModelName | str, dst: ModelName | str) -> ModelName:
        """Copy the manifest bytes to `dst` (blobs are shared). Returns dst's stored spelling."""
        with self.lock:
            s = self.resolve(src)
            if s is None:
                raise ModelNotFound(src)
            try:
                raw = self._manifest_path(s).read_bytes()
            except FileNotFoundError:
                raise ModelNotFound(src) from None
            target = self._spelling_for_write(dst)
            if target.manifest_parts() == s.manifest_parts():
                return target  # onto itself: no-op
            atomic_write_bytes(self._manifest_path(target), raw)
            return target

    def delete(self, name: ModelName | str) -> list[str]:
        """Remove a manifest, prune empty dirs, and delete *its* blobs that no other
        manifest references. Returns the removed blob digests.

        Unlike gc this leaves unrelated orphan blobs alone: they may be uploads
        waiting for a /api/create from another client (Ollama does the same).
        """
        with self.lock:
            s = self.resolve(name)
            if s is None:
                raise ModelNotFound(name)
            path = self._manifest_path(s)
            try:
                raw = path.read_bytes()
                path.unlink()
            except FileNotFoundError:
                raise ModelNotFound(name) from None
            fsync_dir(path.parent)
            self._prune_upwards(path.parent)
            candidates = {"sha256:" + h.decode().lower() for h in _DIGEST_SCAN_RE.findall(raw)}
            referenced = self._referenced_digests()
            removed = []
            for d in sorted(candidates - referenced):
                if self._is_fresh(d):
                    continue
                if _unlink_quiet(self.blob_path(d)):
                    removed.append(d)
            return removed

    def _referenced_digests(self) -> set[str]:
        # Regex over raw bytes rather than JSON parsing: a manifest we cannot
        # parse (or whose name we cannot list) still keeps its blobs alive.
        refs: set[str] = set()
        for _, path in self._iter_manifest_files():
            try:
                raw = path.read_bytes()
            except OSError:
                continue
            refs.update("sha256:" + h.decode().lower() for h in _DIGEST_SCAN_RE.findall(raw))
        return refs

    def _prune_upwards(self, directory: Path) -> list[Path]:
        removed = []
        root = self.manifests_dir
        while directory != root and root in directory.parents:
            try:
                os.rmdir(directory)
            except OSError:
                break
            removed.append(directory)
            directory = directory.parent
        return removed

    def _prune_empty_dirs(self) -> list[Path]:
        removed = []
        if not self.manifests_dir.is_dir():
            return removed
        for dirpath, _dirnames, _files in os.walk(self.manifests_dir, topdown=False):
            p = Path(dirpath)
            if p == self.manifests_dir:
                continue
            try:
                os.rmdir(p)
                removed.append(p)
            except OSError:
                pass
        return removed

    def gc(self, min_age_seconds: float = 0) -> GCResult:
        """Delete unreferenced blobs and stale temp/partial files older than
        `min_age_seconds`, and prune empty manifest dirs. Never touches temp files
        this process is writing, nor blobs within their fresh_blob_grace."""
        result = GCResult()
        with self.lock:
            refs = self._referenced_digests()
            now = time.time()

            def old_enough(st: os.stat_result) -> bool:
                # ctime moves on link/rename, so a hardlinked old file that just
                # entered the store still counts as young.
                return now - max(st.st_mtime, st.st_ctime) >= min_age_seconds

            try:
                entries = list(os.scandir(self.blobs_dir))
            except OSError:
                entries = []
            for e in entries:
                try:
                    if not e.is_file(follow_symlinks=False) and not e.is_symlink():
                        continue
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                p = Path(e.path)
                if _BLOB_NAME_RE.fullmatch(e.name):
                    digest = "sha256:" + e.name[7:].lower()
                    if digest in refs or self._is_fresh(digest) or not old_enough(st):
                        continue
                    if _unlink_quiet(p):
                        result.blobs.append(digest)
                else:
                    # temp files, `-partial` downloads, other junk; a killed writer's temp files at once
                    if p in self._active_tmp or not (old_enough(st) or is_orphaned_temp(e.name)):
                        continue
                    if _unlink_quiet(p):
                        result.files.append(p)

            # our own manifest temp files left behind by a crash
            for dirpath, _dirs, files in os.walk(self.manifests_dir):
                for f in files:
                    if not f.startswith(TMP_PREFIX):
                        continue
                    p = Path(dirpath) / f
                    try:
                        st = p.stat()
                    except OSError:
                        continue
                    if (old_enough(st) or is_orphaned_temp(f)) and _unlink_quiet(p):
                        result.files.append(p)

            result.dirs = self._prune_empty_dirs()
        return result

    # -- run folders ---------------------------------------------------------

    def _materialize_plan(self, stored: StoredManifest) -> list[tuple[str, Path]]:
        plan: list[tuple[str, Path]] = []
        seen: set[str] = set()
        for layer in stored.manifest.layers:
            # Ollama's tensor layers name tensors, not files.
            if not layer.name or layer.media_type == media.OLLAMA_TENSOR:
                continue
            rel = _safe_relpath(layer.name)
            key = rel.lower()  # macOS file systems would merge case variants
            if key in seen:
                raise InvalidManifest(f"duplicate layer file name {rel!r}")
            seen.add(key)
            blob = self.blob_path(layer.digest)
            if not blob.is_file():
                raise BlobNotFound(validate_digest(layer.digest))
            plan.append((rel, blob))
        return plan

    @staticmethod
    def _materialized_ok(target: Path, plan: list[tuple[str, Path]]) -> bool:
        if not target.is_dir():
            return False
        try:
            for rel, blob in plan:
                p = target / rel
                if not p.is_file():  # follows the link: a dangling one fails here
                    return False
                if not os.path.samefile(p, blob) and (p.is_symlink() or p.stat().st_size != blob.stat().st_size):
                    return False
        except OSError:
            return False
        return True

    def materialize(self, stored: StoredManifest, run_dir: Path | str) -> Path:
        """A plain folder of the model's named files (links to blobs) for loaders.

        `run_dir/<manifest digest>/` is content-addressed, so it is reused as is;
        it is built under a temp name and renamed in, so racing callers each end
        up with a complete folder.
        """
        run_dir = Path(run_dir).absolute()
        plan = self._materialize_plan(stored)
        target = run_dir / stored.digest_hex
        if self._materialized_ok(target, plan):
            return target
        _makedirs(run_dir)
        tmp = Path(tempfile.mkdtemp(dir=run_dir, prefix=TMP_PREFIX))
        try:
            _chmod(tmp, DIR_MODE)
            for rel, blob in plan:
                dest = tmp.joinpath(*rel.split("/"))
                _makedirs(dest.parent)
                _link_or_copy(blob, dest)
            for attempt in range(3):
                try:
                    os.rename(tmp, target)
                    return target
                except OSError:
                    if self._materialized_ok(target, plan):
                        return target  # another caller finished first
                    # A stale/broken folder: move it aside, then retry.
                    trash = run_dir / f"{TMP_PREFIX}old-{uuid.uuid4().hex}"
                    try:
                        os.rename(target, trash)
                    except FileNotFoundError:
                        pass
                    else:
                        shutil.rmtree(trash, ignore_errors=True)
            raise StoreError(f"could not create {target}")
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------- config blob


def _go_arch() -> str:
    m = platform.machine().lower()
    return {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(m, m)


def _go_os() -> str:
    return {"win32": "windows", "cygwin": "windows"}.get(
        sys.platform, sys.platform.rstrip("0123456789") or sys.platform
    )


def build_config_blob(
    *,
    model_format: str = "mlx",
    model_family: str = "",
    model_families: list[str] | None = None,
    model_type: str = "",
    file_type: str = "",
    capabilities: list[str] | None = None,
    context_length: int = 0,
    embedding_length: int = 0,
    renderer: str = "",
    parser: str = "",
    requires: str = "",
    base_name: str = "",
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Ollama's ConfigV2, in its field order; omitempty fields left out when empty."""
    cfg: dict[str, Any] = {
        "model_format": model_format,
        "model_family": model_family,
        "model_families": list(model_families) if model_families else None,  # Go nil slice -> null
        "model_type": model_type,
        "file_type": file_type,
    }
    for key, value in (("renderer", renderer), ("parser", parser), ("requires", requires)):
        if value:
            cfg[key] = value
    if capabilities:
        cfg["capabilities"] = list(capabilities)
    if context_length:
        cfg["context_length"] = int(context_length)
    if embedding_length:
        cfg["embedding_length"] = int(embedding_length)
    if base_name:
        cfg["base_name"] = base_name
    if extra:
        cfg.update(extra)
    cfg["architecture"] = _go_arch()
    cfg["os"] = _go_os()
    return cfg


def format_parameter_size(n: int) -> str:
    """Ollama's format.HumanNumber: `8B`, `3.2B`, `567.70M`, `137M`, `22K`, `999`."""
    if n < 0:
        raise ValueError("parameter count must be >= 0")
    if n >= 1_000_000_000:
        x = float(n) / 1e9
        return f"{x:.0f}B" if x == math.floor(x) else f"{x:.1f}B"
    if n >= 1_000_000:
        x = float(n) / 1e6
        return f"{x:.0f}M" if x == math.floor(x) else f"{x:.2f}M"
    if n >= 1_000:
        return f"{float(n) / 1e3:.0f}K"
    return str(n)
