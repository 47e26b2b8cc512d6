"""The prompt cache's disk tier (engine/diskcache.py) on small hand-made KV caches: no model, no server."""

from __future__ import annotations

import os
import subprocess
import sys

import mlx.core as mx
import pytest
from mlx_lm.models.cache import KVCache

from mlxollama.config import Config
from mlxollama.engine import diskcache as dc
from mlxollama.engine.diskcache import DiskCacheSettings, DiskPromptCache

LAYERS, HEADS, DIM = 2, 2, 8


def kv_cache(tokens: list[int]) -> list[KVCache]:
    """A cache whose keys encode the token ids, so a loaded cache shows which tokens it holds."""
    layers = []
    for layer in range(LAYERS):
        c = KVCache()
        ids = mx.array(tokens, dtype=mx.float32).reshape(1, 1, -1, 1)
        keys = mx.broadcast_to(ids + layer, (1, HEADS, len(tokens), DIM))
        c.update_and_fetch(keys, -keys)
        layers.append(c)
    mx.eval([c.state[:2] for c in layers])
    return layers


def held_tokens(cache: list[KVCache]) -> list[int]:
    keys, _ = cache[0].keys_and_values() if hasattr(cache[0], "keys_and_values") else cache[0].state[:2]
    return [int(v) for v in keys[0, 0, :, 0].tolist()]


def written(disk: DiskPromptCache, tokens: list[int]) -> None:
    disk.save(tokens, kv_cache(tokens))
    assert disk.flush(30)


def files(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --- pure parts -------------------------------------------------------------------------------


def test_token_helpers():
    assert dc.decode_tokens(dc.encode_tokens([1, 22, 333])) == [1, 22, 333]
    assert dc.decode_tokens("") == []
    assert dc.common_prefix([1, 2, 3], [1, 2, 4, 5]) == 2
    assert dc.common_prefix([], [1]) == 0
    assert dc.tokens_name([1, 2]) == dc.tokens_name([1, 2]) != dc.tokens_name([1, 2, 3])
    assert dc.tokens_name([12, 3]) != dc.tokens_name([1, 23])


def test_oldest_files_go_first_until_the_rest_fit():
    files_ = [(3.0, 40, "c"), (1.0, 40, "a"), (2.0, 40, "b")]
    assert dc.oldest_over_budget(files_, 120) == []
    assert dc.oldest_over_budget(files_, 100) == ["a"]
    assert dc.oldest_over_budget(files_, 40) == ["a", "b"]
    assert dc.oldest_over_budget(files_, 0) == ["a", "b", "c"]


def test_a_torn_or_foreign_file_has_no_header(tmp_path):
    good = tmp_path / "good.safetensors"
    mx.save_safetensors(str(good), {"x": mx.arange(100)}, {"k": "v"})
    assert dc.read_header(good) == {"k": "v"}
    torn = tmp_path / "torn.safetensors"
    torn.write_bytes(good.read_bytes()[:-7])
    assert dc.read_header(torn) is None
    (tmp_path / "junk.safetensors").write_bytes(b"\xff" * 50)
    assert dc.read_header(tmp_path / "junk.safetensors") is None
    (tmp_path / "short.safetensors").write_bytes(b"\x01")
    assert dc.read_header(tmp_path / "short.safetensors") is None


def test_settings_from_the_config(tmp_path):
    c = Config.from_env({"MLXOLLAMA_MODELS": str(tmp_path / "m")})
    s = DiskCacheSettings.from_config(c, "ab" * 32)
    assert s.root == tmp_path / "m" / "cache" / "prompts" and s.max_bytes == 4 << 30
    c = Config.from_env({"MLXOLLAMA_PROMPT_CACHE_DIR": str(tmp_path / "pc"), "MLXOLLAMA_PROMPT_CACHE_DISK": "1000"})
    s = DiskCacheSettings.from_config(c, "ab" * 32)
    assert (s.root, s.max_bytes) == (tmp_path / "pc", 1000)
    assert DiskCacheSettings.from_config(Config.from_env({"MLXOLLAMA_PROMPT_CACHE_DISK": "0"}), "ab" * 32) is None
    assert DiskCacheSettings.from_config(Config.from_env({"MLXOLLAMA_PROMPT_CACHE_ENTRIES": "0"}), "ab") is None
    disk = s.open("cpu-f16")
    try:
        assert disk.folder == tmp_path / "pc" / ("ab" * 32 + "-cpu-f16")
    finally:
        disk.close()


# --- the tier -----------------------------------------------------------------------------------


@pytest.fixture
def folder(tmp_path):
    return tmp_path / "model"


def test_an_entry_survives_a_restart_and_serves_the_longest_shared_prefix(folder):
    disk = DiskPromptCache(folder, "m", 1 << 30)
    written(disk, [5, 6, 7, 8])
    written(disk, [1, 2, 3, 4, 5, 6])
    disk.close()

    again = DiskPromptCache(folder, "m", 1 << 30)  # a new process: only the folder is left
    try:
        # the stored sequence is a prefix of the prompt: all of it is used
        cache, n = again.fetch([1, 2, 3, 4, 5, 6, 9, 9])
        assert n == 6 and held_tokens(cache) == [1, 2, 3, 4, 5, 6]
        # the prompt departs inside it: trimmed to what they share
        cache, n = again.fetch([1, 2, 3, 7])
        assert n == 3 and held_tokens(cache) == [1, 2, 3]
        # a whole hit still leaves the last token to evaluate
        cache, n = again.fetch([5, 6, 7, 8])
        assert n == 3 and held_tokens(cache) == [5, 6, 7]
        assert again.fetch([9, 9, 9]) is None
        assert again.fetch([1, 2, 3, 7], better_than=3) is None  # the RAM tier already has as much
    finally:
        again.close()


def test_a_longer_entry_replaces_its_prefixes(folder):
    disk = DiskPromptCache(folder, "m", 1 << 30)
    try:
        written(disk, [1, 2, 3])
        written(disk, [1, 2, 3, 4, 5])
        assert files(folder) == [dc.tokens_name([1, 2, 3, 4, 5])]
    finally:
        disk.close()


def test_torn_unreadable_and_stale_files_are_deleted_not_served(folder):
    disk = DiskPromptCache(folder, "m", 1 << 30)
    written(disk, [1, 2, 3, 4])
    disk.close()
    name = dc.tokens_name([1, 2, 3, 4])
    good = (folder / name).read_bytes()
    (folder / name).write_bytes(good[: len(good) // 2])  # torn mid-write by a crash (or a bad disk)
    (folder / "junk.safetensors").write_bytes(b"not a cache")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (folder / f"{dc.TEMP_PREFIX}{dead.stdout.strip()}-1-{name}").write_bytes(good)  # a dead writer's temporary
    live_temp = folder / f"{dc.TEMP_PREFIX}1-1-{name}"  # pid 1 is alive: another process is writing it
    live_temp.write_bytes(good)
    (folder / "other.txt").write_text("left alone")

    again = DiskPromptCache(folder, "m", 1 << 30)
    try:
        assert again.fetch([1, 2, 3, 4, 5]) is None
        assert files(folder) == sorted([live_temp.name, "other.txt"])
    finally:
        again.close()


def test_a_file_that_breaks_after_the_scan_is_dropped_and_the_next_best_served(folder):
    disk = DiskPromptCache(folder, "m", 1 << 30)
    try:
        written(disk, [1, 2, 3, 4])
        written(disk, [1, 2, 9, 9])
        (folder / dc.tokens_name([1, 2, 3, 4])).write_bytes(b"\x00" * 10)
        cache, n = disk.fetch([1, 2, 3, 4, 5])
        assert n == 2 and held_tokens(cache) == [1, 2]
        assert files(folder) == [dc.tokens_name([1, 2, 9, 9])]
    finally:
        disk.close()


def test_another_models_file_is_not_loaded(folder):
    disk = DiskPromptCache(folder, "model-a", 1 << 30)
    written(disk, [1, 2, 3, 4])
    disk.close()
    other = DiskPromptCache(folder, "model-b", 1 << 30)
    try:
        assert other.fetch([1, 2, 3, 4, 5]) is None
    finally:
        other.close()


def test_the_byte_bound_holds_and_the_least_recently_used_go_first(folder):
    one = sum(c.nbytes for c in kv_cache(list(range(10))))
    disk = DiskPromptCache(folder, "m", int(2.5 * one))
    try:
        written(disk, list(range(100, 110)))
        written(disk, list(range(200, 210)))
        os.utime(folder / dc.tokens_name(list(range(100, 110))), (1, 1))  # made long ago
        assert disk.fetch(list(range(200, 210)) + [1]) is not None  # a hit makes it recent
        written(disk, list(range(300, 310)))
        assert disk.fetch(list(range(100, 111))) is None
        assert disk.fetch(list(range(200, 211)))[1] == 10
        assert disk.fetch(list(range(300, 311)))[1] == 10
        assert sum(p.stat().st_size for p in folder.iterdir()) <= int(2.5 * one)
        # a cache larger than the whole bound is never written
        disk.save(list(range(1000)), kv_cache(list(range(1000))))
        assert disk.flush(30) and dc.tokens_name(list(range(1000))) not in files(folder)
    finally:
        disk.close()


def test_off_and_unsaveable_caches_write_nothing(folder):
    off = DiskPromptCache(folder, "m", 0)
    try:
        written(off, [1, 2, 3])
        assert files(folder) == []
    finally:
        off.close()

    class ForeignCache(KVCache):  # not mlx-lm's own class: load_prompt_cache could not rebuild it
        pass

    disk = DiskPromptCache(folder, "m", 1 << 30)
    try:
        foreign = [ForeignCache.from_state(c.state) for c in kv_cache([1, 2, 3])]
        disk.save([1, 2, 3], foreign)
        assert disk.flush(30) and files(folder) == []
    finally:
        disk.close()
