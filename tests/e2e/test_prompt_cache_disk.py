"""The prompt cache's disk tier (engine/diskcache.py) through real servers: a conversation's cache
survives `serve` restarting, so its second turn does not prefill the history again.

Ollama counts cached tokens in prompt_eval_count and names them in prompt_eval_cached_count;
the tokens evaluated are the difference."""

from __future__ import annotations

import httpx
import pytest

from ..support.liveserver import LiveServer

TINY = "tiny:latest"
OPTIONS = {"temperature": 0, "num_predict": 6}
HISTORY = [
    {"role": "system", "content": "You answer questions about a long report. " * 12},
    {"role": "user", "content": "Here is the report: " + "the quarterly figures rose and fell again. " * 20},
    {"role": "assistant", "content": "I have read the report."},
    {"role": "user", "content": "What happened to the figures?"},
]


def chat(url: str, messages: list[dict]) -> dict:
    r = httpx.post(
        url + "/api/chat", json={"model": TINY, "messages": messages, "stream": False, "options": OPTIONS}, timeout=300
    )
    assert r.status_code == 200, r.text
    return r.json()


def second_turn(first: dict) -> list[dict]:
    return HISTORY + [first["message"], {"role": "user", "content": "And after that?"}]


def cache_files(folder) -> list:
    return sorted(p for p in folder.rglob("*.safetensors") if not p.name.startswith("."))


@pytest.fixture
def start(models_dir, tmp_path):
    """Start servers on the session store; each is stopped (SIGTERM, a graceful shutdown) at the end."""
    servers = []

    def run(cache_dir, **env) -> LiveServer:
        env = {"MLXOLLAMA_PROMPT_CACHE_DIR": str(cache_dir), **{k: str(v) for k, v in env.items()}}
        srv = LiveServer(models_dir, tmp_path / f"server{len(servers)}.log", env)
        servers.append(srv)
        return srv

    yield run
    for srv in servers:
        srv.stop()


@pytest.fixture(scope="module")
def fresh_turn2(models_dir, tmp_path_factory):
    """Both turns from a server without the disk tier: what turn 2 must answer, and its full count."""
    logs = tmp_path_factory.mktemp("fresh")
    srv = LiveServer(models_dir, logs / "server.log", {"MLXOLLAMA_PROMPT_CACHE_DISK": "0"})
    try:
        first = chat(srv.url, HISTORY)
        srv.stop()  # a new server: its RAM cache is empty too
        srv = LiveServer(models_dir, logs / "server2.log", {"MLXOLLAMA_PROMPT_CACHE_DISK": "0"})
        turn2 = chat(srv.url, second_turn(first))
    finally:
        srv.stop()
    assert "prompt_eval_cached_count" not in turn2  # nothing cached: nothing to name
    return first, turn2


def test_a_second_turn_after_a_restart_evaluates_only_the_new_tokens(start, tmp_path, fresh_turn2):
    fresh_first, fresh = fresh_turn2
    cache_dir = tmp_path / "prompts"
    srv = start(cache_dir)
    first = chat(srv.url, HISTORY)
    assert first["message"] == fresh_first["message"]
    srv.stop()
    assert len(cache_files(cache_dir)) == 1

    srv = start(cache_dir)
    turn2 = chat(srv.url, second_turn(first))
    assert turn2["message"] == fresh["message"]  # the same greedy answer as without any cache
    assert turn2["prompt_eval_count"] == fresh["prompt_eval_count"]  # cached tokens count, as in Ollama
    cached = turn2["prompt_eval_cached_count"]
    # the whole first turn came from the disk: what was evaluated is at most what turn 2 added
    assert first["prompt_eval_count"] <= cached < turn2["prompt_eval_count"]


def test_a_torn_file_is_ignored_and_deleted(start, tmp_path, fresh_turn2):
    fresh_first, fresh = fresh_turn2
    cache_dir = tmp_path / "prompts"
    srv = start(cache_dir)
    first = chat(srv.url, HISTORY)
    srv.stop()
    (path,) = cache_files(cache_dir)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])  # as if the machine died mid-write, without the rename

    srv = start(cache_dir)
    turn2 = chat(srv.url, second_turn(first))
    assert turn2["message"] == fresh["message"]
    assert "prompt_eval_cached_count" not in turn2 and turn2["prompt_eval_count"] == fresh["prompt_eval_count"]
    srv.stop()
    assert path not in cache_files(cache_dir)  # dropped; turn 2's own cache took its place
    assert len(cache_files(cache_dir)) == 1


def test_the_byte_bound_holds(start, tmp_path):
    cache_dir = tmp_path / "prompts"
    srv = start(cache_dir)
    chat(srv.url, HISTORY)
    srv.stop()
    (one,) = cache_files(cache_dir)
    bound = int(one.stat().st_size * 2.5)

    srv = start(cache_dir, MLXOLLAMA_PROMPT_CACHE_DISK=bound)
    for topic in ("cats", "the sea", "rust", "jazz"):  # conversations as long as the first
        chat(srv.url, [{"role": "system", "content": f"Talk about {topic}."}] + HISTORY[1:])
    srv.stop()
    files = cache_files(cache_dir)
    assert 1 <= len(files) < 5 and sum(p.stat().st_size for p in files) <= bound


def test_zero_turns_the_disk_tier_off(start, tmp_path):
    cache_dir = tmp_path / "prompts"
    srv = start(cache_dir, MLXOLLAMA_PROMPT_CACHE_DISK=0)
    first = chat(srv.url, HISTORY)
    again = chat(srv.url, second_turn(first))
    assert again["prompt_eval_cached_count"] > 0  # the RAM tier still works
    srv.stop()
    assert not cache_dir.exists() or cache_files(cache_dir) == []
