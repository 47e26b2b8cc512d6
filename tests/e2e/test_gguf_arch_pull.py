"""Every architecture the GGUF importer claims, as a user gets it: a tiny random Hugging Face
checkpoint of that architecture (tests/support/tinyhf.py) written to GGUF with llama.cpp's
conversion rules (tests/support/ggufwriter.py), served by a loopback Ollama registry, pulled
through /api/pull of one live server, then /api/generate (raw, temperature 0) must continue a
fixed prompt with the greedy tokens mlx-lm produces on a reference checkpoint:

* F16 (every architecture): the original checkpoint, unmodified;
* one quantized file per block family (Q8_0, Q4_K, Q4_K_M's Q4_K + Q6_K mix, Q6_K, MXFP4): the
  checkpoint with the weights llama.cpp decodes from that file (dequantized, un-permuted), which
  an exact import reproduces.  Q6_K has no exact MLX form (16-element sub-blocks; requantized to
  8-bit 32-groups), so there the greedy path is compared on these fixed seeds only; its logit
  error is bounded in tests/unit/test_gguf_archs.py (test_q6_k_and_q4_k_m_mix).

The response text is compared with the reference tokens decoded by the original tokenizer,
and, where the server returns it, the token ids of /api/generate's context as well.
"""

from __future__ import annotations

import json
import re

import gguf
import httpx
import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT
from tokenizers import Tokenizer

from ..support import tinyhf as th
from ..support.fakeregistry import FakeRegistry
from ..support.ggufmoehybrid import MOE_HYBRID_ARCH, write_moe_hybrid_gguf
from ..support.ggufwriter import GGUF_ARCH, write_gguf, write_ollama_gptoss
from ..support.liveserver import LiveServer
from ..support.tinygguf import MODEL

PROMPT = "The cat sat on the mat, def f(x): return"
N_PREDICT = 6


@pytest.fixture(scope="module")
def registry():
    reg = FakeRegistry()
    yield reg
    reg.close()


@pytest.fixture(scope="module")
def http(tmp_path_factory, registry):
    root = tmp_path_factory.mktemp("archpull")
    srv = LiveServer(root / "models", root / "server.log", env={"MLXOLLAMA_REGISTRY": registry.url})
    try:
        with httpx.Client(base_url=srv.url, timeout=120) as c:
            yield c
    finally:
        srv.stop()


def _ollama_config(family: str, file_type: str) -> dict:
    return {
        "model_format": "gguf",
        "model_family": family,
        "model_families": [family],
        "model_type": "1M",
        "file_type": file_type,
        "architecture": "amd64",
        "os": "linux",
    }


def _reference_tokens(hf_dir, weights=None) -> tuple[list[int], list[int]]:
    """(prompt ids, greedy continuation up to EOS) of mlx-lm on ``hf_dir`` (``weights`` replaced)."""
    tok = Tokenizer.from_file(str(hf_dir / "tokenizer.json"))
    ids = tok.encode(PROMPT, add_special_tokens=False).ids
    model = th.load_float32(hf_dir, weights) if weights is not None else th.load_source(hf_dir)
    out = th.greedy(model, ids, N_PREDICT)
    eos = json.loads((hf_dir / "config.json").read_text())["eos_token_id"]
    return ids, out[: out.index(eos)] if eos in out else out


def _pull_and_generate(http, registry, name: str, gguf_bytes: bytes, family: str, file_type: str) -> dict:
    registry.add_model(f"library/{name}", "latest", [(MODEL, gguf_bytes)], _ollama_config(family, file_type))
    r = http.post("/api/pull", json={"model": name, "stream": False})
    assert r.status_code == 200 and r.json() == {"status": "success"}, r.text
    r = http.post(
        "/api/generate",
        json={
            "model": name,
            "prompt": PROMPT,
            "raw": True,
            "stream": False,
            # plain greedy: no repeat penalty (Ollama's default 1.1 would re-rank repeated tokens)
            "options": {"temperature": 0, "repeat_penalty": 1.0, "num_predict": N_PREDICT},
        },
    )
    assert r.status_code == 200 and r.json()["done"], r.text
    return r.json()


def _check(reply: dict, hf_dir, prompt_ids: list[int], want: list[int]) -> None:
    tok = Tokenizer.from_file(str(hf_dir / "tokenizer.json"))
    assert reply["response"] == tok.decode(want, skip_special_tokens=False), (reply, want)
    if "context" in reply:
        assert reply["context"] == prompt_ids + want


def _model_name(arch: str, qtype: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", f"tiny-{arch}-{qtype}".lower())


@pytest.mark.parametrize("arch", list(th.CONFIGS))
def test_f16_pull_matches_original(tmp_path, http, registry, arch):
    hf_dir = th.build_hf_checkpoint(tmp_path / "hf", arch)
    path = tmp_path / "model.gguf"
    write_gguf(hf_dir, path, QT.F16)
    mt = json.loads((hf_dir / "config.json").read_text())["model_type"]
    reply = _pull_and_generate(http, registry, _model_name(arch, "f16"), path.read_bytes(), GGUF_ARCH[mt], "F16")
    prompt_ids, want = _reference_tokens(hf_dir)
    assert want, "the reference stops at once: nothing compared"
    _check(reply, hf_dir, prompt_ids, want)


@pytest.mark.parametrize(
    "arch,qtype",
    [
        ("llama", "Q8_0"),  # exact (8-bit affine)
        ("qwen3", "Q4_K"),  # exact (4-bit affine, 32-groups)
        ("qwen3_moe", "Q4_K"),  # stacked experts, exact
        ("internlm2", "Q8_0"),  # q/k/v rebuilt into wqkv from dequantized rows
        ("qwen3_5", "Q8_0"),  # value heads reordered back: rows and whole column groups, exactly
        ("llama", "Q4_K_M"),  # Q4_K exact beside Q6_K requantized to 8 bits
        ("gemma3", "Q6_K"),  # requantized to 8 bits
    ],
)
def test_quantized_pull_matches_llamacpp_weights(tmp_path, http, registry, arch, qtype):
    hf_dir = th.build_hf_checkpoint(tmp_path / "hf", arch)
    path = tmp_path / "model.gguf"
    mix = qtype == "Q4_K_M"
    reference = write_gguf(hf_dir, path, QT.Q4_K if mix else QT[qtype], mix=mix)
    mt = json.loads((hf_dir / "config.json").read_text())["model_type"]
    name = _model_name(arch, qtype)
    reply = _pull_and_generate(http, registry, name, path.read_bytes(), GGUF_ARCH[mt], qtype)
    prompt_ids, want = _reference_tokens(hf_dir, reference)
    assert want
    _check(reply, hf_dir, prompt_ids, want)


def test_mxfp4_gptoss_pull_matches_original(tmp_path, http, registry):
    """gpt-oss as Ollama's library ships it ("gptoss", MXFP4 experts): MXFP4 -> mxfp4 is lossless."""
    hf_dir = th.build_hf_checkpoint(tmp_path / "hf", "gpt_oss")
    path = tmp_path / "model.gguf"
    write_ollama_gptoss(hf_dir, path, QT.F16)
    reply = _pull_and_generate(http, registry, "tiny-gptoss-mxfp4", path.read_bytes(), "gptoss", "MXFP4")
    prompt_ids, want = _reference_tokens(hf_dir)
    assert want
    _check(reply, hf_dir, prompt_ids, want)


def test_vision_tensors_are_left_out(tmp_path, http, registry):
    """A multimodal library GGUF of a family whose vision tower is not converted (llama4: tower and
    projector in the same file): pulled, its text model answers as the text-only file does. (gemma3,
    qwen2.5-vl and mistral3 towers become mlx-vlm models: test_vision_registry_pull.py.)"""
    hf_dir = th.build_hf_checkpoint(tmp_path / "hf", "llama4")
    plain = tmp_path / "plain.gguf"
    write_gguf(hf_dir, plain, QT.F16)
    reader = gguf.GGUFReader(str(plain))
    out = tmp_path / "vision.gguf"
    w = gguf.GGUFWriter(str(out), "llama4")
    for key, f in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        if f.types[0] == gguf.GGUFValueType.ARRAY:
            w.add_key_value(key, f.contents(), f.types[0], sub_type=f.types[-1])
        else:
            w.add_key_value(key, f.contents(), f.types[0])
    w.add_uint32("llama4.vision.block_count", 1)
    for t in reader.tensors:
        w.add_tensor(t.name, np.asarray(t.data), raw_shape=[int(x) for x in reversed(t.shape)], raw_dtype=t.tensor_type)
    rng = np.random.default_rng(1)
    for name, shape in [("v.patch_embd.weight", (64, 48)), ("v.blk.0.attn_q.weight", (64, 64)),
                        ("mm.input_projection.weight", (64, 256))]:  # fmt: skip
        w.add_tensor(name, rng.normal(size=shape).astype(np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    reply = _pull_and_generate(http, registry, "tiny-llama4-vision", out.read_bytes(), "llama4", "F16")
    prompt_ids, want = _reference_tokens(hf_dir)
    assert want
    _check(reply, hf_dir, prompt_ids, want)


@pytest.mark.parametrize(
    "arch,qtype",
    [
        ("qwen3_5_moe", "F16"),  # against the original checkpoint
        ("qwen3_5_moe", "Q8_0"),  # stacked experts and shared expert, exact
        ("qwen3_5_moe", "Q4_K_M"),  # Q4_K exact beside Q6_K requantized to 8 bits
        ("gemma4", "F16"),
        ("gemma4", "Q8_0"),  # per-layer inputs, KV-shared layer, fused gate/up experts: exact
        # (seed 1: seed 0's sixth token is byte 0, which mlx-lm's streaming detokenizer renders as
        # its byte-level symbol where the tokenizer's decode gives "\x00")
        ("gemma4", "Q4_K"),
    ],
)
def test_moe_hybrid_pull_matches(tmp_path, http, registry, arch, qtype):
    """qwen3.5 MoE (qwen35moe) and gemma4 as llama.cpp converts them (tests/support/ggufmoehybrid.py):
    F16 continues like the original checkpoint, a quantized file like the weights it decodes to."""
    from ..support.ollamamlx import build_gemma4, build_qwen3_5

    seed = 1 if (arch, qtype) == ("gemma4", "Q4_K") else 0
    hf = tmp_path / "hf"
    hf_dir = build_gemma4(hf, moe=True, seed=seed) if arch == "gemma4" else build_qwen3_5(hf, moe=True, seed=seed)
    path = tmp_path / "model.gguf"
    mix = qtype == "Q4_K_M"
    reference = write_moe_hybrid_gguf(hf_dir, path, QT.Q4_K if mix else QT[qtype], mix=mix)
    name = _model_name(arch, qtype)
    reply = _pull_and_generate(http, registry, name, path.read_bytes(), MOE_HYBRID_ARCH[arch], qtype)
    # the original in float32 (qwen3.5's 1 + w norms added in float32, as the converter adds them)
    weights = th.load_hf_weights(hf_dir) if qtype == "F16" else reference
    prompt_ids, want = _reference_tokens(hf_dir, weights)
    assert want
    _check(reply, hf_dir, prompt_ids, want)


@pytest.mark.parametrize(
    "arch,qtype",
    [
        ("granitemoehybrid", "F16"),  # against the original checkpoint
        ("granitemoehybrid", "Q8_0"),  # Mamba-2 layers, experts, rejoined shared MLP: exact
        ("granitemoehybrid", "Q4_K_M"),  # Q4_K exact beside Q6_K (layer 0's ffn_down_*) requantized
        ("gemma3n", "F16"),
        ("gemma3n", "Q8_0"),  # unstacked AltUp projections, per-layer inputs, KV-shared layers: exact
        ("gemma3n", "Q4_K"),  # Q4_K, Q5_0 where rows do not fill 256-element blocks: exact
    ],
)
def test_hybrid_pull_matches(tmp_path, http, registry, arch, qtype):
    """granite4's hybrid (granitehybrid) and gemma3n as llama.cpp converts them
    (tests/support/tinyhybrid.py): F16 continues like the original checkpoint, a quantized file
    like the weights it decodes to."""
    from ..support.tinyhybrid import GGUF_ARCH as HYBRID_ARCH
    from ..support.tinyhybrid import build_hybrid_checkpoint, write_hybrid_gguf

    hf_dir = build_hybrid_checkpoint(tmp_path / "hf", arch)
    path = tmp_path / "model.gguf"
    mix = qtype == "Q4_K_M"
    reference = write_hybrid_gguf(hf_dir, path, QT.Q4_K if mix else QT[qtype], mix=mix)
    reply = _pull_and_generate(http, registry, _model_name(arch, qtype), path.read_bytes(), HYBRID_ARCH[arch], qtype)
    prompt_ids, want = _reference_tokens(hf_dir, None if qtype == "F16" else reference)
    assert want
    _check(reply, hf_dir, prompt_ids, want)
