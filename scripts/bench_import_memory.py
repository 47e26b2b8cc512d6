"""Peak memory of importing a GGUF: it must stream, staying below the largest tensor plus a
fixed margin however large the model.

  .venv/bin/python scripts/bench_import_memory.py [--layers 19] [--keep] [--skip-pull] [--skip-direct]

Writes a synthetic llama GGUF (TinyLlama's shape: hidden 2048, FFN 5632, 32 heads / 4 KV
heads, 32000 vocab; Q8_0 matrices, F32 norms, random blocks; 19 layers is ~1 GB) under
.cache/bench-import/, then measures:

  pull    a fresh ``mlxollama serve`` pulls it from the loopback registry
          (tests/support/fakeregistry.py): download + sha256 + convert, in the server process;
  direct  ``import_gguf`` (what pull, create and ``mlxollama convert`` run) in a fresh process.

For each: the process's resident memory before, and its peak growth during the import, from
/proc/<pid>/status: VmHWM (the kernel's high-water mark of all resident pages) and, sampled
every 20 ms, RssAnon (heap: what the import really holds) and RssFile (pages of mapped files,
such as the GGUF's memmap, which the kernel can drop at will).  The GGUF and the converted
copies are deleted afterwards unless --keep.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

HIDDEN, FFN, HEADS, KV_HEADS, VOCAB = 2048, 5632, 32, 4, 32000
Q8_BLOCK, Q8_BYTES = 32, 34  # elements / bytes per Q8_0 block
MIB = 1 << 20


def _proc_status(pid: int) -> dict[str, int]:
    """The kB fields of /proc/<pid>/status, in bytes."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            parts = rest.split()
            if len(parts) == 2 and parts[1] == "kB":
                out[key] = int(parts[0]) * 1024
    return out


class Sampler:
    """Polls a process's RSS split while an import runs (VmHWM alone cannot tell heap from
    mapped-file pages)."""

    def __init__(self, pid: int, interval: float = 0.02):
        self.pid, self.interval = pid, interval
        self.before = _proc_status(pid)
        self.peak = {"RssAnon": 0, "RssFile": 0, "VmRSS": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                s = _proc_status(self.pid)
            except OSError:
                return
            for k in self.peak:
                self.peak[k] = max(self.peak[k], s.get(k, 0))
            time.sleep(self.interval)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        after = _proc_status(self.pid)
        b = self.before
        return {
            "rss_before_mib": b["VmRSS"] / MIB,
            "hwm_before_mib": b["VmHWM"] / MIB,
            "hwm_after_mib": after["VmHWM"] / MIB,
            # growth of the high-water mark over the resident size the import started from
            "peak_growth_mib": (max(after["VmHWM"], b["VmRSS"]) - b["VmRSS"]) / MIB,
            "peak_anon_growth_mib": (self.peak["RssAnon"] - b["RssAnon"]) / MIB,
            "peak_file_mib": self.peak["RssFile"] / MIB,
            "rss_after_mib": after["VmRSS"] / MIB,
        }


# --- the synthetic GGUF ---------------------------------------------------------------


def _synthetic_vocab(vocab: int) -> tuple[list[str], list[str]]:
    """A 32000-token byte-level BPE vocabulary: the 256 byte symbols, then two-symbol pieces
    with their merges (real text tokenizes; nothing here is meant to be meaningful)."""
    from tokenizers import pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens, merges = list(alphabet), []
    for a in alphabet:
        for b in alphabet:
            if len(tokens) == vocab - 2:
                break
            tokens.append(a + b)
            merges.append(f"{a} {b}")
    return tokens + ["<|endoftext|>", "<|im_end|>"], merges


def _tensor_plan(layers: int, vocab: int, hidden: int, ffn: int) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape as rows x columns) in llama.cpp's order."""
    kv = hidden // HEADS * KV_HEADS
    plan: list = [("token_embd.weight", (vocab, hidden))]
    for i in range(layers):
        b = f"blk.{i}."
        plan += [
            (b + "attn_norm.weight", (hidden,)),
            (b + "attn_q.weight", (hidden, hidden)),
            (b + "attn_k.weight", (kv, hidden)),
            (b + "attn_v.weight", (kv, hidden)),
            (b + "attn_output.weight", (hidden, hidden)),
            (b + "ffn_norm.weight", (hidden,)),
            (b + "ffn_gate.weight", (ffn, hidden)),
            (b + "ffn_up.weight", (ffn, hidden)),
            (b + "ffn_down.weight", (hidden, ffn)),
        ]
    plan += [("output_norm.weight", (hidden,)), ("output.weight", (vocab, hidden))]
    return plan


def _q8_0_blocks(rng, rows: int, cols: int):
    """Valid Q8_0 rows: a small f16 scale, then 32 random int8 quants per block."""
    import numpy as np

    n = rows * cols // Q8_BLOCK
    blocks = np.frombuffer(rng.bytes(n * Q8_BYTES), np.uint8).reshape(n, Q8_BYTES).copy()
    blocks[:, :2] = rng.uniform(1e-3, 1e-2, n).astype(np.float16).view(np.uint8).reshape(n, 2)
    return blocks.reshape(rows, cols // Q8_BLOCK * Q8_BYTES)


def write_synthetic_gguf(
    path: Path, layers: int, vocab: int = VOCAB, hidden: int = HIDDEN, ffn: int = FFN
) -> dict[str, int]:
    """Streams tensors to the file one at a time; returns GGUF bytes per tensor."""
    import gguf
    import numpy as np
    from gguf import GGMLQuantizationType as QT

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("bench llama")
    w.add_block_count(layers)
    w.add_context_length(2048)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_dimension_count(hidden // HEADS)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(vocab)
    w.add_file_type(int(gguf.LlamaFileType.MOSTLY_Q8_0))
    tokens, merges = _synthetic_vocab(vocab)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types([1] * (vocab - 2) + [3, 3])
    w.add_token_merges(merges)
    w.add_eos_token_id(vocab - 1)

    plan = _tensor_plan(layers, vocab, hidden, ffn)
    sizes = {}
    for name, shape in plan:
        if len(shape) == 1:
            w.add_tensor_info(name, shape, np.dtype(np.float32), shape[0] * 4)
            sizes[name] = shape[0] * 4
        else:
            byte_shape = (shape[0], shape[1] // Q8_BLOCK * Q8_BYTES)
            sizes[name] = byte_shape[0] * byte_shape[1]
            w.add_tensor_info(name, byte_shape, np.dtype(np.uint8), sizes[name], raw_dtype=QT.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    rng = np.random.default_rng(0)
    for name, shape in plan:
        if len(shape) == 1:
            w.write_tensor_data(np.ones(shape, np.float32))
        else:
            w.write_tensor_data(_q8_0_blocks(rng, *shape))
    w.close()
    return sizes


# --- the measurements ---------------------------------------------------------------


def measure_pull(gguf_path: Path, work: Path) -> dict[str, float]:
    import httpx

    from tests.support.fakeregistry import FakeRegistry
    from tests.support.liveserver import LiveServer
    from tests.support.tinygguf import MODEL, OLLAMA_CONFIG

    reg = FakeRegistry()
    srv = None
    try:
        # (the registry holds the blob in this process's memory, not the server's)
        reg.add_model("library/bench", "latest", [(MODEL, gguf_path.read_bytes())], OLLAMA_CONFIG)
        srv = LiveServer(work / "models", work / "server.log", env={"MLXOLLAMA_REGISTRY": reg.url})
        # a fresh server, idle: its high-water mark so far is its start-up
        sampler = Sampler(srv.proc.pid)
        t0 = time.monotonic()
        with httpx.Client(base_url=srv.url, timeout=3600) as c:
            r = c.post("/api/pull", json={"model": "bench", "stream": False})
        elapsed = time.monotonic() - t0
        result = sampler.stop()
        if r.status_code != 200:
            raise SystemExit(f"pull failed: {r.status_code} {r.text}\n{srv.log()}")
        result["seconds"] = elapsed
        return result
    finally:
        if srv is not None:
            srv.stop()
        reg.close()


_DIRECT = r"""
import json, sys, time
sys.path.insert(0, sys.argv[3])
from mlxollama.convert.gguf import import_gguf
from scripts.bench_import_memory import Sampler
from mlx_lm.utils import _get_classes
import os
_get_classes({"model_type": "llama"})  # imports done before the baseline
sampler = Sampler(os.getpid())
t0 = time.monotonic()
import_gguf(sys.argv[1], sys.argv[2])
result = sampler.stop()
result["seconds"] = time.monotonic() - t0
print(json.dumps(result))
"""


def measure_direct(gguf_path: Path, work: Path) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", _DIRECT, str(gguf_path), str(work / "direct"), str(ROOT)],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"direct import failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=19, help="decoder layers (19: ~1 GB at Q8_0)")
    ap.add_argument("--keep", action="store_true", help="keep the GGUF and the converted copies")
    ap.add_argument("--skip-pull", action="store_true")
    ap.add_argument("--skip-direct", action="store_true")
    args = ap.parse_args()

    cache = ROOT / ".cache" / "bench-import"
    cache.mkdir(parents=True, exist_ok=True)
    gguf_path = cache / f"llama-{args.layers}L-q8_0.gguf"
    work = Path(tempfile.mkdtemp(prefix="bench-import-", dir=cache))
    try:
        t0 = time.monotonic()
        sizes = write_synthetic_gguf(gguf_path, args.layers)
        largest = max(sizes, key=sizes.get)
        print(
            f"GGUF: {gguf_path.stat().st_size / MIB:.0f} MiB, {len(sizes)} tensors, written in "
            f"{time.monotonic() - t0:.0f}s; largest tensor {largest}: {sizes[largest] / MIB:.1f} MiB as Q8_0 "
            f"({sizes[largest] // Q8_BYTES * Q8_BLOCK * 4 / MIB:.0f} MiB as float32)"
        )
        rows = []
        if not args.skip_direct:
            rows.append(("direct import_gguf", measure_direct(gguf_path, work)))
        if not args.skip_pull:
            rows.append(("pull (server)", measure_pull(gguf_path, work)))
        for label, r in rows:
            print(
                f"{label:20s} {r['seconds']:6.0f}s  RSS before {r['rss_before_mib']:6.0f} MiB  "
                f"peak growth (VmHWM) {r['peak_growth_mib']:6.0f} MiB  "
                f"peak heap growth (RssAnon) {r['peak_anon_growth_mib']:6.0f} MiB  "
                f"peak mapped-file pages {r['peak_file_mib']:6.0f} MiB  "
                f"= {r['peak_growth_mib'] / (sizes[largest] / MIB):.1f}x the largest tensor"
            )
        print(json.dumps({"largest_tensor_mib": sizes[largest] / MIB, **{k: v for k, v in rows}}, indent=1))
    finally:
        if not args.keep:
            gguf_path.unlink(missing_ok=True)
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
