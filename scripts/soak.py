#!/usr/bin/env python3
"""Soak test: N concurrent clients mixing generate, chat, embed, tags, show and pull for T seconds.

    .venv/bin/python scripts/soak.py                       # starts its own server on a tiny model
    .venv/bin/python scripts/soak.py --clients 16 --seconds 120
    .venv/bin/python scripts/soak.py --url http://127.0.0.1:11434 --model smollm2:135m

Every answer is checked, and counted as one of:
  lost       no complete answer: connection error, timeout, 5xx, a stream cut before its done line
  failed     a 4xx to a request that is valid
  mixed      an answer that belongs to another request: each generation is forced by a JSON-schema
             `const` to spell out a marker unique to its request, each embedding is compared with the
             vector its text had when asked alone, every chunk must name the model it was asked
  malformed  a line that is not JSON, a missing or mistyped field, a line after `done`
and p50/p99 latency is printed per route. `--json` prints the tally as JSON (for tests).

Started on its own (no --url), it builds a tiny random model in a temp store, serves the same
model from a loopback fake registry for pulls, and nothing leaves the machine. With --url, pulls
are skipped unless --pull-model names a model the server's registry can serve.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
MAX_CLIENTS = 64
MAX_SECONDS = 3600
MAX_TOKENS = 48  # room for the marker; the const schema ends the generation well before
EMBED_TEXTS = [
    "the quick brown fox",
    "jumps over",
    "the lazy dog",
    "Grüße aus Köln",
    "1 2 3 4 5",
    "a longer sentence about nothing in particular",
    "x",
    "soak",
]
ROUTE_WEIGHTS = {
    "generate": 4,
    "generate-stream": 4,
    "chat": 3,
    "chat-stream": 3,
    "embed": 3,
    "tags": 1,
    "show": 1,
    "pull": 1,
}


class Bad(Exception):
    def __init__(self, kind: str, detail: str):
        super().__init__(detail)
        self.kind = kind


@dataclass
class Tally:
    ok: int = 0
    problems: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, route: str, seconds: float, problem: Bad | None) -> None:
        with self.lock:
            self.latencies[route].append(seconds)
            if problem is None:
                self.ok += 1
            else:
                self.problems[problem.kind].append(f"{route}: {problem}")

    def count(self, kind: str) -> int:
        return len(self.problems.get(kind, []))

    def summary(self) -> dict:
        routes = {}
        for route, values in sorted(self.latencies.items()):
            values = sorted(values)
            routes[route] = {
                "count": len(values),
                "p50_ms": round(1000 * percentile(values, 50), 1),
                "p99_ms": round(1000 * percentile(values, 99), 1),
            }
        return {
            "ok": self.ok,
            **{k: self.count(k) for k in ("lost", "failed", "mixed", "malformed")},
            "routes": routes,
            "examples": {k: v[:5] for k, v in self.problems.items()},
        }


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return math.nan
    rank = (len(sorted_values) - 1) * p / 100
    low, high = math.floor(rank), math.ceil(rank)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low)


# --------------------------------------------------------------------------------- checks


def expect(cond: bool, kind: str, detail: str) -> None:
    if not cond:
        raise Bad(kind, detail)


def status_ok(r: httpx.Response) -> None:
    if r.status_code == 200:
        return
    r.read()  # a streamed error answer: its text, for the report
    kind = "lost" if r.status_code >= 500 else "failed"
    raise Bad(kind, f"HTTP {r.status_code}: {r.text[:200]}")


def parse_json(text: str) -> dict:
    try:
        obj = json.loads(text)
    except ValueError:
        raise Bad("malformed", f"not JSON: {text[:200]!r}") from None
    expect(isinstance(obj, dict), "malformed", f"not an object: {text[:200]!r}")
    expect("error" not in obj, "lost", f"error: {obj.get('error')!r}")
    return obj


def check_final(obj: dict, model: str) -> None:
    expect(obj.get("done") is True, "malformed", f"last object is not done: {obj}")
    expect(obj.get("model") == model, "mixed", f"answer for {obj.get('model')!r}, asked {model!r}")
    for key in ("eval_count", "prompt_eval_count", "total_duration"):
        expect(isinstance(obj.get(key), int) and obj[key] >= 0, "malformed", f"{key} is {obj.get(key)!r}")
    expect(obj.get("done_reason") in ("stop", "length"), "malformed", f"done_reason {obj.get('done_reason')!r}")


def read_stream(r: httpx.Response, model: str, piece) -> str:
    """Concatenates the streamed pieces; every line JSON, our model, exactly one done line, last."""
    status_ok(r)
    text, final = [], None
    for line in r.iter_lines():
        if not line.strip():
            continue
        expect(final is None, "malformed", f"a line after done: {line[:200]!r}")
        obj = parse_json(line)
        expect(obj.get("model") == model, "mixed", f"chunk for {obj.get('model')!r}, asked {model!r}")
        text.append(piece(obj))
        if obj.get("done"):
            final = obj
    expect(final is not None, "lost", "the stream ended without a done line")
    check_final(final, model)
    return "".join(text)


def marker_request(marker: str, seed: int) -> dict:
    # The schema leaves one possible answer: the marker, quoted. Anything else came from elsewhere.
    return {"format": {"const": marker}, "options": {"num_predict": MAX_TOKENS, "temperature": 0.7, "seed": seed}}


def check_marker(text: str, marker: str) -> None:
    expect(text.strip() == json.dumps(marker), "mixed", f"got {text[:120]!r}, forced {json.dumps(marker)!r}")


class Client:
    def __init__(
        self,
        url: str,
        models: list[str],
        pull_model: str | None,
        references: dict[str, list[float]],
        timeout: float,
        index: int,
    ):
        self.rng = random.Random(index)  # each client its own reproducible mix
        self.http = httpx.Client(base_url=url, timeout=timeout)
        self.models = models
        self.pull_model = pull_model
        self.references = references
        self.seq = 0
        self.index = index

    def marker(self, tag: str) -> str:
        self.seq += 1
        return f"{tag}-{self.index}-{self.seq}-{self.rng.randrange(1 << 20):x}"

    def run(self, route: str) -> None:
        getattr(self, route.replace("-", "_"))()

    def generate(self, stream: bool = False) -> None:
        model, marker = self.rng.choice(self.models), self.marker("g")
        body = {
            "model": model,
            "prompt": f"say {marker}",
            "stream": stream,
            **marker_request(marker, self.rng.randrange(1 << 30)),
        }
        if stream:
            with self.http.stream("POST", "/api/generate", json=body) as r:
                text = read_stream(r, model, lambda o: o.get("response", ""))
        else:
            r = self.http.post("/api/generate", json=body)
            status_ok(r)
            obj = parse_json(r.text)
            check_final(obj, model)
            text = obj.get("response", "")
        check_marker(text, marker)

    def generate_stream(self) -> None:
        self.generate(stream=True)

    def chat(self, stream: bool = False) -> None:
        model, marker = self.rng.choice(self.models), self.marker("c")
        body = {
            "model": model,
            "messages": [{"role": "user", "content": f"say {marker}"}],
            "stream": stream,
            **marker_request(marker, self.rng.randrange(1 << 30)),
        }

        def piece(obj: dict) -> str:
            msg = obj.get("message")
            expect(isinstance(msg, dict) and msg.get("role") == "assistant", "malformed", f"message {msg!r}")
            return msg.get("content", "")

        if stream:
            with self.http.stream("POST", "/api/chat", json=body) as r:
                text = read_stream(r, model, piece)
        else:
            r = self.http.post("/api/chat", json=body)
            status_ok(r)
            obj = parse_json(r.text)
            check_final(obj, model)
            text = piece(obj)
        check_marker(text, marker)

    def chat_stream(self) -> None:
        self.chat(stream=True)

    def embed(self) -> None:
        model = self.models[0]
        texts = self.rng.sample(EMBED_TEXTS, self.rng.randint(1, len(EMBED_TEXTS)))
        r = self.http.post("/api/embed", json={"model": model, "input": texts})
        status_ok(r)
        obj = parse_json(r.text)
        vectors = obj.get("embeddings")
        expect(
            isinstance(vectors, list) and len(vectors) == len(texts),
            "malformed",
            f"{len(vectors) if isinstance(vectors, list) else vectors!r} embeddings for {len(texts)} inputs",
        )
        expect(obj.get("model") == model, "mixed", f"answer for {obj.get('model')!r}")
        for text, vector in zip(texts, vectors):
            expect(cosine(vector, self.references[text]) > 0.999, "mixed", f"the vector for {text!r} is another's")

    def tags(self) -> None:
        r = self.http.get("/api/tags")
        status_ok(r)
        models = parse_json(r.text).get("models")
        expect(isinstance(models, list), "malformed", f"models is {models!r}")
        names = {m.get("name") for m in models}
        expect(set(self.models) <= names, "malformed", f"{self.models} not all in {sorted(names)}")

    def show(self) -> None:
        model = self.rng.choice(self.models)
        r = self.http.post("/api/show", json={"model": model})
        status_ok(r)
        obj = parse_json(r.text)
        expect(
            isinstance(obj.get("details"), dict) and isinstance(obj.get("model_info"), dict),
            "malformed",
            f"show without details/model_info: {sorted(obj)}",
        )

    def pull(self) -> None:
        if not self.pull_model:
            return self.tags()
        stream = self.rng.random() < 0.5
        body = {"model": self.pull_model, "stream": stream}
        if not stream:
            r = self.http.post("/api/pull", json=body)
            status_ok(r)
            expect(parse_json(r.text) == {"status": "success"}, "malformed", r.text[:200])
            return None
        with self.http.stream("POST", "/api/pull", json=body) as r:
            status_ok(r)
            lines = [parse_json(line) for line in r.iter_lines() if line.strip()]
        expect(bool(lines) and lines[-1] == {"status": "success"}, "lost", f"pull ended with {lines[-1:]}")
        expect(all(isinstance(o.get("status"), str) for o in lines), "malformed", "a pull line without status")
        return None


def cosine(a, b) -> float:
    if not isinstance(a, list) or len(a) != len(b):
        return -1.0
    dot = sum(x * y for x, y in zip(a, b))
    na, nb = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(y * y for y in b))
    return dot / (na * nb) if na and nb else -1.0


def embed_references(url: str, model: str, timeout: float) -> dict[str, list[float]]:
    """Each text embedded on its own, before the load: what every later answer must match."""
    out = {}
    with httpx.Client(base_url=url, timeout=timeout) as c:
        for text in EMBED_TEXTS:
            r = c.post("/api/embed", json={"model": model, "input": text})
            r.raise_for_status()
            out[text] = r.json()["embeddings"][0]
    return out


def soak(
    url: str,
    models: list[str],
    clients: int,
    seconds: float,
    max_requests: int,
    pull_model: str | None = None,
    timeout: float = 120.0,
) -> Tally:
    clients = max(1, min(clients, MAX_CLIENTS))
    seconds = max(0.0, min(seconds, MAX_SECONDS))
    references = embed_references(url, models[0], timeout)
    tally = Tally()
    deadline = time.monotonic() + seconds
    issued = [0]
    issued_lock = threading.Lock()
    routes, weights = zip(*ROUTE_WEIGHTS.items())

    def worker(index: int) -> None:
        client = Client(url, models, pull_model, references, timeout, index)
        try:
            while time.monotonic() < deadline:
                with issued_lock:
                    if issued[0] >= max_requests:
                        return
                    issued[0] += 1
                route = client.rng.choices(routes, weights)[0]
                started = time.monotonic()
                problem = None
                try:
                    client.run(route)
                except Bad as e:
                    problem = e
                except httpx.HTTPError as e:
                    problem = Bad("lost", f"{type(e).__name__}: {e}")
                except Exception as e:  # noqa: BLE001 - an answer this script cannot digest is malformed
                    problem = Bad("malformed", f"{type(e).__name__}: {e}")
                tally.record(route, time.monotonic() - started, problem)
        finally:
            client.http.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + timeout + 30)
    return tally


# --------------------------------------------------------------------------------- own server


class OwnServer:
    """A server on a free loopback port over a temp store with a tiny model, and a fake registry that
    serves the same model for pulls."""

    def __init__(self):
        sys.path.insert(0, str(REPO))
        from mlxollama.store import Store
        from tests.support.fakeregistry import FakeRegistry
        from tests.support.liveserver import LiveServer
        from tests.support.store import package_tiny
        from tests.support.tinymodels import build_tiny_llama

        self.tmp = tempfile.TemporaryDirectory(prefix="mlxollama-soak-")
        root = Path(self.tmp.name)
        store = Store(root / "models")
        package_tiny(store, "tiny:latest", build_tiny_llama(root / "tiny"))
        stored = store.get_manifest("tiny:latest")
        self.registry = FakeRegistry()
        for layer in stored.manifest.all_layers():
            self.registry.blobs[layer.digest] = stored.read_blob(layer)
        self.registry.manifests[("library/soakpull", "latest")] = stored.raw
        self.server = LiveServer(
            root / "models",
            root / "server.log",
            env={
                "MLXOLLAMA_REGISTRY": self.registry.url,
                "OLLAMA_MODELS": str(root / "no-ollama"),
                "HF_ENDPOINT": "http://127.0.0.1:9",
            },
        )
        self.url = self.server.url
        with httpx.Client(base_url=self.url, timeout=60) as c:
            for copy in ("soak-a:latest", "soak-b:latest"):  # several names: answers must say which
                c.post("/api/copy", json={"source": "tiny:latest", "destination": copy}).raise_for_status()
        self.models = ["tiny:latest", "soak-a:latest", "soak-b:latest"]
        self.pull_model = "soakpull"

    def log(self) -> str:
        return self.server.log()

    def close(self) -> None:
        self.server.stop()
        self.registry.close()
        self.tmp.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running server; without it the script starts its own")
    parser.add_argument("--model", action="append", help="model(s) to use with --url (repeatable)")
    parser.add_argument("--pull-model", help="a model the --url server can pull (default: no pulls)")
    parser.add_argument("--clients", type=int, default=8, help=f"concurrent clients (at most {MAX_CLIENTS})")
    parser.add_argument("--seconds", type=float, default=30, help=f"duration (at most {MAX_SECONDS})")
    parser.add_argument("--max-requests", type=int, default=100_000, help="stop after this many requests")
    parser.add_argument("--timeout", type=float, default=120, help="seconds before a request counts as lost")
    parser.add_argument("--json", action="store_true", help="print the tally as JSON")
    args = parser.parse_args(argv)

    own = None
    if args.url:
        url, models, pull_model = args.url.rstrip("/"), args.model or ["smollm2:135m"], args.pull_model
    else:
        own = OwnServer()
        url, models, pull_model = own.url, own.models, own.pull_model
    try:
        tally = soak(url, models, args.clients, args.seconds, args.max_requests, pull_model, args.timeout)
    finally:
        if own is not None:
            log = own.log()
            own.close()
    summary = tally.summary()
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(
            f"{summary['ok']} ok, {summary['lost']} lost, {summary['failed']} failed, "
            f"{summary['mixed']} mixed, {summary['malformed']} malformed"
        )
        for route, s in summary["routes"].items():
            print(f"  {route:16} {s['count']:6}  p50 {s['p50_ms']:8.1f} ms  p99 {s['p99_ms']:8.1f} ms")
        for kind, examples in summary["examples"].items():
            print(f"{kind}:")
            for e in examples:
                print(f"  {e}")
    bad = sum(summary[k] for k in ("lost", "failed", "mixed", "malformed"))
    if bad and own is not None and not args.json:
        print("server log (tail):\n" + log[-3000:], file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
