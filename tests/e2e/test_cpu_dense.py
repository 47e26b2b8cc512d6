"""Dense float32 weights on the CPU backend (engine/cpu_dense.py) give what the quantized weights give,
and the set-up's OpenBLAS is the one MLX's matmuls use.

A tiny llama quantized to 4 bits stands in for a real model: loaded by the engine with and without
the dense choice, then served by two live servers that differ only in MLXOLLAMA_CPU_DENSE."""

from __future__ import annotations

import ctypes
import os
import platform
import subprocess
import sys
from pathlib import Path

import httpx
import mlx.core as mx
import numpy as np
import pytest

from mlxollama.store import Store

from ..support.liveserver import LiveServer
from ..support.store import package_tiny
from ..support.tinyhf import greedy
from ..support.tinymodels import build_tiny_llama

ROOT = Path(__file__).resolve().parents[2]
PROMPT_IDS = [5, 77, 120, 3, 250, 9, 300, 41, 17, 200, 64, 99] * 6  # longer than one BLAS block row


@pytest.fixture(scope="module")
def quantized_dir(tmp_path_factory) -> Path:
    from mlxollama.convert.quantize import parse_quantize, quantize_dir

    src = build_tiny_llama(tmp_path_factory.mktemp("tiny-f16"), hidden=128, seed=7)
    out = tmp_path_factory.mktemp("tiny-q4") / "model"
    quantize_dir(src, out, parse_quantize("q4_K_M"))
    return out


def _load(model_dir: Path, dense_bytes: int):
    from mlxollama.engine.llm import EngineSettings, LoadedLLM

    return LoadedLLM(model_dir, EngineSettings(cpu_dense_bytes=dense_bytes))


def test_dense_and_quantized_loads_agree(quantized_dir):
    if mx.default_device() != mx.cpu:
        pytest.skip("the dense choice is for the CPU backend")
    quantized = _load(quantized_dir, 0)
    dense = _load(quantized_dir, 1 << 40)
    assert not quantized.dense and dense.dense
    # All 4-bit layers (embedding, projections, head) became float32: about 6x the packed size here.
    assert dense.weights_bytes > 5 * quantized.weights_bytes

    q_logits = np.array(quantized.model(mx.array([PROMPT_IDS]))[0])
    d_logits = np.array(dense.model(mx.array([PROMPT_IDS]))[0])
    scale = np.abs(q_logits).max()
    assert scale > 1.0  # real signal, not an all-zero output
    assert np.abs(q_logits - d_logits).max() <= 1e-4 * scale
    assert greedy(quantized.model, PROMPT_IDS, 24) == greedy(dense.model, PROMPT_IDS, 24)


def test_a_budget_too_small_keeps_the_quantized_weights(quantized_dir):
    small = _load(quantized_dir, 1000)
    assert not small.dense
    assert small.weights_bytes == _load(quantized_dir, 0).weights_bytes


def _generate(server: LiveServer, model: str) -> dict:
    body = {
        "model": model,
        "prompt": "Tell me about the sea and the ships",
        "stream": False,
        "options": {"temperature": 0, "num_predict": 24, "seed": 1},
    }
    r = httpx.post(server.url + "/api/generate", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def test_servers_with_and_without_dense_weights_answer_alike(quantized_dir, tmp_path):
    if mx.default_device() != mx.cpu:
        pytest.skip("the dense choice is for the CPU backend")
    models = tmp_path / "models"
    package_tiny(Store(models), "tinyq:latest", quantized_dir)
    replies, sizes = {}, {}
    for setting in ("off", "on"):  # "on" dequantizes whatever the BLAS; auto also wants OpenBLAS
        server = LiveServer(models, tmp_path / f"server-{setting}.log", env={"MLXOLLAMA_CPU_DENSE": setting})
        try:
            replies[setting] = _generate(server, "tinyq")
            ps = httpx.get(server.url + "/api/ps", timeout=10).json()["models"]
            sizes[setting] = next(m["size"] for m in ps if m["name"] == "tinyq:latest")
        finally:
            server.stop()
    assert replies["off"]["eval_count"] == replies["on"]["eval_count"] == 24
    assert replies["off"]["response"] == replies["on"]["response"]
    assert replies["off"]["context"] == replies["on"]["context"]
    assert sizes["on"] > sizes["off"]  # /api/ps reports the float32 weights the model really takes


def test_setup_preloads_an_openblas_that_mlx_uses():
    """A clean clone gets a fast BLAS from the set-up alone: a system OpenBLAS or the shipped one."""
    if platform.system() != "Linux":
        pytest.skip("the preload is for MLX's Linux CPU wheel")
    if not (ROOT / ".venv" / ".mlxollama-installed").exists():
        pytest.skip("run through ./scripts/test or ./scripts/serve, which set up .venv")
    env = {
        k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "OPENBLAS_NUM_THREADS", "MLXOLLAMA_NO_OPENBLAS")
    }
    r = subprocess.run(
        ["bash", "-c", 'source scripts/_setup.sh >/dev/null && echo "$LD_PRELOAD|$OPENBLAS_NUM_THREADS"'],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    preload, threads = r.stdout.strip().splitlines()[-1].split("|")
    lib = preload.split(":")[0]
    assert lib and Path(lib).is_file(), f"no OpenBLAS preloaded: {r.stdout}"
    assert int(threads) >= 1
    assert hasattr(ctypes.CDLL(lib), "cblas_sgemm")

    # MLX's matmul under the preload: right, and much faster than the bundled reference BLAS.
    probe = (
        "import time, numpy as np, mlx.core as mx\n"
        "a = np.random.default_rng(0).standard_normal((512, 576), dtype=np.float32)\n"
        "b = np.random.default_rng(1).standard_normal((576, 1536), dtype=np.float32)\n"
        "x, y = mx.array(a), mx.array(b); mx.eval(x @ y)\n"
        "t = time.perf_counter(); [mx.eval(x @ y) for _ in range(5)]; dt = (time.perf_counter() - t) / 5\n"
        "err = float(np.abs(np.array(x @ y) - a.astype(np.float64) @ b).max())\n"
        "from mlxollama.engine.cpu_dense import fast_blas_loaded\n"
        "print(err, 2 * 512 * 576 * 1536 / dt / 1e9, int(fast_blas_loaded()))\n"
    )
    gflops = {}
    # One OpenBLAS thread: a busy machine (tests in parallel) can stall a second one for a time slice.
    for name, extra in (("openblas", {"LD_PRELOAD": preload, "OPENBLAS_NUM_THREADS": "1"}), ("bundled", {})):
        out = subprocess.run(
            [sys.executable, "-c", probe], env={**env, **extra}, capture_output=True, text=True, timeout=300
        )
        assert out.returncode == 0, out.stderr
        err, gflops[name], fast = map(float, out.stdout.split())
        assert err < 1e-2, f"{name}: max error {err}"
        assert bool(fast) == (name == "openblas")  # what the automatic dense choice looks at
    # The reference BLAS runs ~5 GFLOP/s here and OpenBLAS ~100 per core; 3x leaves room for a busy machine.
    assert gflops["openblas"] > 3 * gflops["bundled"], gflops
