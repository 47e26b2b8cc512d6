"""The prompt cache's disk tier: KV caches that outlive the process, so the second turn of a long
conversation after a restart does not prefill its history again.

Each entry is one mlx-lm prompt-cache file (`save_prompt_cache`, a safetensors file) holding the
cache of a token sequence; the tokens themselves ride in the file's metadata, so a file is whole
or it is nothing. Files live in one folder per model (its store digest, plus what changes the
cache's layout: backend and KV type), named by a hash of their tokens.

Threads: lookups and loads run on the model's engine thread (the one that owns its MLX state);
writes run on a small writer thread this object owns, so a finished request does not wait for
the disk. The engine thread evaluates what is to be written before handing it over, so the writer
only serialises arrays that already exist. Nothing here runs on the event loop.

Crash safety: a file is written under a pid-named temporary name in the same folder, fsynced, and
renamed into place (os.replace), so a reader sees the old state or the new, never a torn file;
temporaries left by a dead process, and any file whose header or size does not add up, are
deleted when found. The folder is bounded in bytes: the least recently used files (by mtime,
touched on every hit) go first.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import struct
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from ..store.store import fsync_dir

log = logging.getLogger("mlxollama.engine")

SUFFIX = ".safetensors"
TEMP_PREFIX = ".tmp-"
FORMAT = "1"
# save_prompt_cache stores its metadata dict as the first of three flattened trees: our keys
# come back from the safetensors header as "0.<key>".
_META_PREFIX = "0."
_TEMP_RE = re.compile(r"^\.tmp-(\d+)-")
# Writes waiting for the writer thread; beyond this the oldest waiting one is dropped (the
# newest entries are the ones a next turn wants).
MAX_PENDING = 4
_MLX_CACHE_MODULE = "mlx_lm.models.cache"


def tokens_name(tokens: list[int]) -> str:
    """The file name for a token sequence: a hash, so names are short and fixed in shape."""
    digest = hashlib.sha256(",".join(map(str, tokens)).encode()).hexdigest()[:40]
    return digest + SUFFIX


def encode_tokens(tokens: list[int]) -> str:
    return ",".join(map(str, tokens))


def decode_tokens(text: str) -> list[int]:
    return [int(t) for t in text.split(",")] if text else []


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def read_header(path: Path) -> dict[str, str] | None:
    """The metadata of a safetensors file, or None when the file is torn or not one: its header
    must parse and its size must be exactly header plus the tensors the header describes."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                return None
            (n,) = struct.unpack("<Q", head)
            if n > size - 8 or n > 64 << 20:
                return None
            header = json.loads(f.read(n))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(header, dict):
        return None
    end = 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        try:
            end = max(end, int(entry["data_offsets"][1]))
        except (KeyError, TypeError, ValueError, IndexError):
            return None
    if 8 + n + end != size:
        return None
    meta = header.get("__metadata__") or {}
    return meta if isinstance(meta, dict) else None


def entry_tokens(meta: dict[str, str], model_key: str) -> list[int] | None:
    """The tokens a file's metadata says it caches, if it is one of ours for this model."""
    if meta.get(_META_PREFIX + "format") != FORMAT or meta.get(_META_PREFIX + "model") != model_key:
        return None
    try:
        return decode_tokens(meta.get(_META_PREFIX + "tokens", ""))
    except ValueError:
        return None


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def oldest_over_budget(files: list[tuple[float, int, str]], max_bytes: int) -> list[str]:
    """Names to delete, oldest first, until the rest fit in max_bytes: files are (mtime, size, name)."""
    total = sum(size for _, size, _ in files)
    gone = []
    for _, size, name in sorted(files):
        if total <= max_bytes:
            break
        gone.append(name)
        total -= size
    return gone


@dataclass
class DiskCacheSettings:
    """Where a model's disk tier lives and how large it may grow (from Config; see open())."""

    root: Path
    max_bytes: int
    digest: str  # the model's manifest digest in the store: the same model under any name or path

    @classmethod
    def from_config(cls, config, digest: str) -> "DiskCacheSettings | None":
        if config.prompt_cache_disk <= 0 or config.prompt_cache_entries <= 0 or not digest:
            return None
        root = config.prompt_cache_dir or config.models_dir / "cache" / "prompts"
        return cls(Path(root), config.prompt_cache_disk, digest)

    def open(self, variant: str) -> "DiskPromptCache | None":
        """This model's tier; `variant` names what else shapes its caches (backend, KV type), so a
        cache is only ever loaded where it was made. None (and a warning) if the folder is unusable."""
        key = f"{self.digest}-{variant}" if variant else self.digest
        try:
            return DiskPromptCache(self.root / key, key, self.max_bytes)
        except OSError as e:
            log.warning("prompt cache: disk tier off, its folder is unusable (%s)", e.strerror or e)
            return None


@dataclass
class _Entry:
    tokens: list[int]
    size: int


class DiskPromptCache:
    """One model's files in the prompt-cache folder (see the module docstring)."""

    def __init__(self, folder: Path, model_key: str, max_bytes: int):
        self.folder = Path(folder)
        self.model_key = model_key
        self.max_bytes = max_bytes
        self._index: dict[str, _Entry] = {}
        self._lock = threading.Lock()  # guards _index and the folder's contents
        self._pending: deque = deque()
        self._wake = threading.Condition()
        self._busy = False
        self._closed = False
        self.folder.mkdir(parents=True, exist_ok=True)
        self._scan()
        self._thread = threading.Thread(target=self._writer, name=f"prompt cache writer {model_key[:12]}", daemon=True)
        self._thread.start()

    # -- the engine thread ---------------------------------------------------------------------

    def fetch(self, tokens: list[int], better_than: int = 0):
        """The stored cache sharing the longest prefix with `tokens`, as (cache, tokens it covers),
        when that prefix is longer than `better_than`; else None. At least one token of `tokens`
        is always left to evaluate. A file that cannot be read is deleted and the next best tried."""
        from mlx_lm.models.cache import can_trim_prompt_cache, load_prompt_cache, trim_prompt_cache

        limit = len(tokens) - 1
        if better_than >= limit:  # e.g. the memory tier already holds the whole prompt: no scan
            return None
        while True:
            with self._lock:
                best_name, best_len, best_entry = None, better_than, None
                for name, entry in self._index.items():
                    n = min(common_prefix(entry.tokens, tokens), limit)
                    if n > best_len:
                        best_name, best_len, best_entry = name, n, entry
            if best_name is None:
                return None
            path = self.folder / best_name
            try:
                cache, meta = load_prompt_cache(str(path), return_metadata=True)
                if decode_tokens(meta.get("tokens", "")) != best_entry.tokens:
                    raise ValueError("metadata does not match the index")
            except Exception:  # noqa: BLE001 - a bad file is dropped, never fatal
                log.warning("prompt cache: dropping unreadable file %s", best_name, exc_info=True)
                self._forget(best_name)
                continue
            if best_len < len(best_entry.tokens):
                if not can_trim_prompt_cache(cache):
                    # Only an exact prefix serves an untrimmable cache (e.g. a full rotating one).
                    return self._fetch_exact(tokens, better_than, {best_name})
                trim_prompt_cache(cache, len(best_entry.tokens) - best_len)
            self._touch(path)
            return cache, best_len

    def _fetch_exact(self, tokens: list[int], better_than: int, skip: set[str]):
        """The longest stored entry that is a proper prefix of `tokens` (untrimmable caches)."""
        from mlx_lm.models.cache import load_prompt_cache

        with self._lock:
            candidates = sorted(
                (
                    (len(e.tokens), name)
                    for name, e in self._index.items()
                    if name not in skip
                    and better_than < len(e.tokens) < len(tokens)
                    and e.tokens == tokens[: len(e.tokens)]
                ),
                reverse=True,
            )
        for n, name in candidates:
            try:
                cache = load_prompt_cache(str(self.folder / name))
            except Exception:  # noqa: BLE001
                self._forget(name)
                continue
            self._touch(self.folder / name)
            return cache, n
        return None

    def save(self, tokens: list[int], cache: list) -> None:
        """Queue a cache for writing. Called on the engine thread: it evaluates the arrays there
        (the writer thread only serialises them). Caches mlx-lm cannot save are skipped."""
        import mlx.core as mx
        from mlx.utils import tree_flatten

        if self.max_bytes <= 0 or not tokens or self._closed:
            return
        name = tokens_name(tokens)
        with self._lock:
            if name in self._index:
                self._touch(self.folder / name)
                return
        if any(type(c).__module__ != _MLX_CACHE_MODULE for c in cache):
            return  # load_prompt_cache rebuilds only mlx-lm's own cache classes
        try:
            # Fresh cache objects over the same (never again mutated) arrays, evaluated here.
            snapshot = [type(c).from_state(c.state) for c in cache]
            mx.eval([v for c in snapshot for _, v in tree_flatten(c.state) if isinstance(v, mx.array)])
            size = sum(c.nbytes for c in snapshot)
        except Exception:  # noqa: BLE001 - e.g. a cache type without a serialisable state
            log.debug("prompt cache: %s cannot be saved", type(cache[0]).__name__ if cache else "cache", exc_info=True)
            return
        if size > self.max_bytes:
            return
        with self._wake:
            if len(self._pending) >= MAX_PENDING:
                self._pending.popleft()
            self._pending.append((list(tokens), snapshot))
            self._wake.notify()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued write is on disk; False if the timeout came first."""
        with self._wake:
            return self._wake.wait_for(lambda: not self._pending and not self._busy, timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Finish the queued writes (up to `timeout`), then stop the writer thread."""
        self.flush(timeout)
        with self._wake:
            self._closed = True
            self._pending.clear()
            self._wake.notify_all()

    # -- the writer thread ---------------------------------------------------------------------

    def _writer(self) -> None:
        while True:
            with self._wake:
                self._wake.wait_for(lambda: self._pending or self._closed)
                if self._closed:
                    return
                tokens, snapshot = self._pending.popleft()
                self._busy = True
            try:
                self._write(tokens, snapshot)
            except Exception:  # noqa: BLE001 - a full disk or an odd cache fails this entry only
                log.warning("prompt cache: writing an entry failed", exc_info=True)
            finally:
                del snapshot
                with self._wake:
                    self._busy = False
                    self._wake.notify_all()

    def _write(self, tokens: list[int], snapshot: list) -> None:
        from mlx_lm.models.cache import can_trim_prompt_cache, save_prompt_cache

        name = tokens_name(tokens)
        temp = self.folder / f"{TEMP_PREFIX}{os.getpid()}-{threading.get_ident()}-{name}"
        meta = {"format": FORMAT, "model": self.model_key, "tokens": encode_tokens(tokens)}
        try:
            save_prompt_cache(str(temp), snapshot, meta)
            with open(temp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(temp, self.folder / name)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        fsync_dir(self.folder)
        size = (self.folder / name).stat().st_size
        trimmable = can_trim_prompt_cache(snapshot)
        with self._lock:
            self._index[name] = _Entry(tokens, size)
            # A trimmable cache serves every prefix of its tokens: shorter entries are redundant.
            if trimmable:
                for other, e in list(self._index.items()):
                    if other != name and len(e.tokens) < len(tokens) and tokens[: len(e.tokens)] == e.tokens:
                        self._forget_locked(other)
            self._evict_locked()

    # -- the folder ----------------------------------------------------------------------------

    def _scan(self) -> None:
        """Index the folder's files; delete dead processes' temporaries and torn or foreign files."""
        for path in self.folder.iterdir():
            if not path.is_file():
                continue
            if path.name.startswith(TEMP_PREFIX):
                m = _TEMP_RE.match(path.name)
                if not m or not pid_alive(int(m.group(1))) or int(m.group(1)) == os.getpid():
                    path.unlink(missing_ok=True)
                continue
            if not path.name.endswith(SUFFIX):
                continue
            meta = read_header(path)
            tokens = entry_tokens(meta, self.model_key) if meta is not None else None
            if tokens is None or tokens_name(tokens) != path.name:
                log.info("prompt cache: deleting unreadable file %s", path.name)
                path.unlink(missing_ok=True)
                continue
            self._index[path.name] = _Entry(tokens, path.stat().st_size)
        with self._lock:
            self._evict_locked()
        if self._index:
            log.info("prompt cache: %d entries on disk for this model", len(self._index))

    def _evict_locked(self) -> None:
        files = []
        for name, e in self._index.items():
            try:
                files.append((os.stat(self.folder / name).st_mtime, e.size, name))
            except OSError:
                files.append((0.0, 0, name))
        for name in oldest_over_budget(files, self.max_bytes):
            self._forget_locked(name)

    def _forget(self, name: str) -> None:
        with self._lock:
            self._forget_locked(name)

    def _forget_locked(self, name: str) -> None:
        self._index.pop(name, None)
        (self.folder / name).unlink(missing_ok=True)

    @staticmethod
    def _touch(path: Path) -> None:
        try:
            os.utime(path)
        except OSError:
            pass

    def disk_bytes(self) -> int:
        with self._lock:
            return sum(e.size for e in self._index.values())
