"""GGUF import of every supported architecture, end to end: a tiny random
Hugging Face checkpoint (mlx-lm's model class), written as GGUF with
llama.cpp's converter rules (tests/ggufwriter.py), imported, loaded by mlx-lm
and run in float32 against the source.

Tolerances (logit errors relative to the largest |logit|):
* vs the source run with the weights llama.cpp decodes from the file (F16
  rounding, Q8_0/Q4_K dequantization, un-permuted): the import is exact for
  these types, so <= 1e-5 (measured 0) and identical greedy tokens (8, with
  KV caches and rotating windows);
* vs the unmodified source: F16 <= 1e-4 (measured ~1e-6) and identical greedy
  tokens; Q8_0 <= 5% (measured ~2%: Q8_0's own rounding, amplified by random
  weights; greedy tokens are not compared since random models have top-1
  margins below that); Q4_K correlation > 0.9 (its error is ~30%).
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT

from mlxollama.convert.gguf import (
    SUPPORTED_GGUF_ARCHITECTURES,
    UnsupportedGGUF,
    gguf_architecture_supported,
    import_gguf,
)

from ..support import tinyhf as th
from ..support.ggufwriter import GGUF_ARCH, write_gguf, write_ollama_gptoss

ARCHS = list(th.CONFIGS)
QTYPES = [QT.F16, QT.Q8_0, QT.Q4_K]
FILE_TYPE = {QT.F16: "F16", QT.Q8_0: "Q8_0", QT.Q4_K: "Q4_K_S"}
MLX_TYPE = {"mistral": "llama", "gemma3": "gemma3_text"}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """arch -> (HF folder, float32 source model, its logits and greedy tokens on PROMPT), built once."""
    cache = {}

    def get(arch: str, **overrides):
        key = (arch, json.dumps(overrides, sort_keys=True))
        if key not in cache:
            d = th.build_hf_checkpoint(tmp_path_factory.mktemp(arch), arch, overrides=overrides)
            src = th.load_source(d)
            cache[key] = d, src, th.logits(src, th.PROMPT), th.greedy(src, th.PROMPT)
        return cache[key]

    return get


def _import(tmp_path: Path, hf_dir: Path, qtype: QT, gguf_arch: str | None = None):
    path = tmp_path / "model.gguf"
    reference = write_gguf(hf_dir, path, qtype, gguf_arch)
    info = import_gguf(path, tmp_path / "mlx")
    return info, tmp_path / "mlx", reference


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def _check_exact(out: Path, hf_dir: Path, reference: dict) -> tuple[np.ndarray, list[int]]:
    model = th.load_float32(out)
    ref = th.load_float32(hf_dir, reference)
    got, want = th.logits(model, th.PROMPT), th.logits(ref, th.PROMPT)
    assert _rel(got, want) <= 1e-5, _rel(got, want)
    tokens = th.greedy(model, th.PROMPT)
    assert tokens == th.greedy(ref, th.PROMPT)
    return got, tokens


@pytest.mark.e2e  # the per-architecture conversion matrix (~0.5 s a case): whole suite only, not the fast subset
@pytest.mark.parametrize("qtype", QTYPES, ids=lambda q: q.name)
@pytest.mark.parametrize("arch", ARCHS)
def test_import_matches_source(tmp_path, checkpoints, arch, qtype):
    hf_dir, _, src_logits, src_tokens = checkpoints(arch)
    info, out, reference = _import(tmp_path, hf_dir, qtype)
    mt = json.loads((hf_dir / "config.json").read_text())["model_type"]
    assert info.architecture == GGUF_ARCH[mt]
    assert info.file_type == FILE_TYPE[qtype]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == MLX_TYPE.get(arch, arch)

    got, tokens = _check_exact(out, hf_dir, reference)
    err = _rel(got, src_logits)
    if qtype == QT.F16:
        assert err <= 1e-4, err
        assert tokens == src_tokens
    elif qtype == QT.Q8_0:
        assert err <= 0.05, err
        assert np.corrcoef(got.ravel(), src_logits.ravel())[0, 1] > 0.999
    else:
        # Q4_K's own noise flips some expert choices of deepseek_v2's router
        # (measured 0.896) and compounds through the recurrent delta-net state of
        # qwen3_5 (0.851) and qwen3_next (0.766, routed experts too); the exact check
        # above is what tests the import.
        floor = {"deepseek_v2": 0.84, "qwen3_5": 0.84, "qwen3_next": 0.74}.get(arch, 0.9)
        assert np.corrcoef(got.ravel(), src_logits.ravel())[0, 1] > floor


def test_config_details(tmp_path, checkpoints):
    """What GGUF metadata cannot say is derived the way llama.cpp derives it."""
    src = {a: json.loads((checkpoints(a)[0] / "config.json").read_text()) for a in ("gemma2", "gemma3", "phi3")}

    def imported(arch):
        d = tmp_path / arch
        d.mkdir()
        return json.loads((_import(d, checkpoints(arch)[0], QT.Q8_0)[1] / "config.json").read_text())

    g2 = imported("gemma2")
    for key in (
        "head_dim",
        "query_pre_attn_scalar",
        "attn_logit_softcapping",
        "final_logit_softcapping",
        "sliding_window",
    ):
        assert g2[key] == src["gemma2"][key], key
    assert g2["rope_theta"] == 10000.0  # Gemma2Model writes no freq_base: llama.cpp's default
    g3 = imported("gemma3")
    for key in (
        "head_dim",
        "query_pre_attn_scalar",
        "sliding_window",
        "sliding_window_pattern",
        "rope_theta",
        "rope_local_base_freq",
    ):
        assert g3[key] == src["gemma3"][key], key
    assert g3["rope_scaling"] == {"type": "linear", "factor": 8.0}
    p3 = imported("phi3")
    assert p3["partial_rotary_factor"] == 0.75
    assert p3["original_max_position_embeddings"] == 1024 and p3["max_position_embeddings"] == 8192
    for key in ("long_factor", "short_factor"):  # GGUF stores them as float32
        np.testing.assert_array_equal(np.float32(p3["rope_scaling"][key]), np.float32(src["phi3"]["rope_scaling"][key]))
    assert "head_dim" not in p3


def test_mistral3_without_temperature_is_llama(tmp_path, checkpoints):
    """Newer llama.cpp writes plain Mistral text models as "mistral3" too."""
    hf_dir, _, _, src_tokens = checkpoints("mistral")
    info, out, reference = _import(tmp_path, hf_dir, QT.F16, gguf_arch="mistral3")
    assert info.architecture == "mistral3"
    assert json.loads((out / "config.json").read_text())["model_type"] == "llama"
    _, tokens = _check_exact(out, hf_dir, reference)
    assert tokens == src_tokens


@pytest.mark.parametrize("qtype", [QT.F16, QT.Q8_0], ids=lambda q: q.name)
def test_deepseek2_legacy_mla_layout(tmp_path, checkpoints, qtype):
    """Files converted before llama.cpp split kv_b_proj (Ollama's
    deepseek-coder-v2, deepseek-v2) keep attn_kv_b whole: mapped directly and
    kept quantized, where the split form is rebuilt unquantized."""
    hf_dir, _, _, src_tokens = checkpoints("deepseek_v2")
    path = tmp_path / "model.gguf"
    reference = write_gguf(hf_dir, path, qtype, mla_legacy=True)
    assert "blk.0.attn_kv_b.weight" in {t.name for t in gguf.GGUFReader(str(path)).tensors}
    import_gguf(path, tmp_path / "mlx")
    cfg = json.loads((tmp_path / "mlx" / "config.json").read_text())
    assert (cfg["qk_nope_head_dim"], cfg["v_head_dim"], cfg["kv_lora_rank"]) == (32, 32, 64)
    assert ("quantization" in cfg) == (qtype == QT.Q8_0)
    _, tokens = _check_exact(tmp_path / "mlx", hf_dir, reference)
    if qtype == QT.F16:
        assert tokens == src_tokens


@pytest.mark.parametrize("qtype", [QT.F16, QT.Q8_0], ids=lambda q: q.name)
def test_command_r_plus_qk_norms(tmp_path, checkpoints, qtype):
    """Command R+ adds per-head q/k LayerNorms (GGUF attn_q_norm (heads, head_dim))."""
    hf_dir, _, _, src_tokens = checkpoints("cohere", use_qk_norm=True)
    info, out, reference = _import(tmp_path, hf_dir, qtype)
    assert json.loads((out / "config.json").read_text())["use_qk_norm"] is True
    _, tokens = _check_exact(out, hf_dir, reference)
    if qtype == QT.F16:
        assert tokens == src_tokens


@pytest.mark.parametrize("fused_qkv", [False, True], ids=["hf-flavour", "original-flavour"])
def test_ollama_gptoss(tmp_path, checkpoints, fused_qkv):
    """gpt-oss from Ollama's library ("gptoss", Ollama's own converter): its
    names, fused interleaved gate/up experts and q/k/v split by rows, OpenAI's
    MXFP4 nibble order, yarn implied; MXFP4 -> mxfp4 stays lossless."""
    hf_dir, _, _, src_tokens = checkpoints("gpt_oss")
    path = tmp_path / "model.gguf"
    reference = write_ollama_gptoss(hf_dir, path, QT.F16, fused_qkv=fused_qkv)
    info = import_gguf(path, tmp_path / "mlx")
    assert (info.architecture, info.file_type) == ("gptoss", "MXFP4")
    cfg = json.loads((tmp_path / "mlx" / "config.json").read_text())
    assert cfg["rope_scaling"] == {
        "rope_type": "yarn",
        "factor": 8.0,
        "beta_fast": 32.0,
        "beta_slow": 1.0,
        "original_max_position_embeddings": 8,
    }
    _, tokens = _check_exact(tmp_path / "mlx", hf_dir, reference)
    assert tokens == src_tokens


def test_gemma3_without_sliding_window(tmp_path, checkpoints):
    """No attention.sliding_window key: every layer is global."""
    hf_dir, _, _, src_tokens = checkpoints("gemma3", sliding_window_pattern=1)
    info, out, reference = _import(tmp_path, hf_dir, QT.F16)
    assert json.loads((out / "config.json").read_text())["sliding_window_pattern"] == 1
    _, tokens = _check_exact(out, hf_dir, reference)
    assert tokens == src_tokens


def test_supported_architectures():
    assert SUPPORTED_GGUF_ARCHITECTURES == {
        "llama",
        "mistral3",
        "qwen2",
        "qwen3",
        "gemma",
        "gemma2",
        "gemma3",
        "phi3",
        "qwen2moe",
        "qwen3moe",
        "granite",
        "olmo2",
        "smollm3",
        "starcoder2",
        "command-r",
        "exaone",
        "glm4",
        "deepseek2",
        "gpt-oss",
        "olmoe",
        "cohere2",
        "granitemoe",
        "phi2",
        "starcoder",
        "stablelm",
        "nemotron",
        "gptoss",
        "internlm2",
        "llama4",
        "qwen35",
        "qwen3next",
        "qwen35moe",  # these two: tests/unit/test_gguf_moe_hybrid.py
        "gemma4",
        "granitehybrid",  # these two: tests/unit/test_gguf_hybrid.py
        "gemma3n",
    }
    # every claimed architecture is exercised by test_import_matches_source
    others = {"mistral3", "gptoss", "qwen35moe", "gemma4", "granitehybrid", "gemma3n"}
    assert SUPPORTED_GGUF_ARCHITECTURES <= set(GGUF_ARCH.values()) | others
    assert all(gguf_architecture_supported(a) for a in SUPPORTED_GGUF_ARCHITECTURES)
    for arch in ("mamba", "falcon-h1", "", "LLAMA"):
        assert not gguf_architecture_supported(arch)


@pytest.mark.parametrize("arch", ["falcon-h1", "phimoe"])
def test_unsupported_architecture_is_named(tmp_path, arch):
    p = tmp_path / "x.gguf"
    w = gguf.GGUFWriter(str(p), arch)
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((8, 32), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(UnsupportedGGUF, match=arch):
        import_gguf(p, tmp_path / "out")


def test_unexpected_tensor_is_refused(tmp_path):
    """A phi3 file with separate q/k/v (which llama.cpp also accepts) has no
    mapping onto mlx-lm's fused qkv_proj: refused by name, not mis-loaded."""
    w = gguf.GGUFWriter(str(tmp_path / "split.gguf"), "phi3")
    w.add_block_count(1)
    w.add_embedding_length(256)
    w.add_head_count(4)
    w.add_feed_forward_length(512)
    w.add_context_length(2048)
    w.add_tensor("token_embd.weight", np.zeros((384, 256), np.float16))
    w.add_tensor("blk.0.attn_q.weight", np.zeros((256, 256), np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(UnsupportedGGUF, match="attn_q"):
        import_gguf(tmp_path / "split.gguf", tmp_path / "out")


def test_gemma3_sliding_pattern_key():
    """Newer converters may spell the local/global layers out per layer (true = sliding)."""
    from mlxollama.convert.gguf import _gemma3_sliding_pattern, _Meta

    def pattern(v, layers=12):
        return _gemma3_sliding_pattern(
            _Meta({} if v is None else {"gemma3.attention.sliding_window_pattern": v}, "gemma3"), layers
        )

    assert pattern(None) == 6  # llama.cpp's fixed gemma3 pattern
    assert pattern([True] * 5 + [False] + [True] * 5 + [False]) == 6
    assert pattern([True, False] * 6) == 2
    assert pattern([True] * 12) == 13  # no global layer
    with pytest.raises(UnsupportedGGUF, match="not periodic"):
        pattern([True, False, True, True, False, True])


def test_deepseek_llm_pre_tokenizer():
    """deepseek2 GGUFs name the "deepseek-llm" split (cased letters, ASCII
    and CJK punctuation, CJK runs, digit runs), applied in sequence as
    llama.cpp does; code points NFC would fold (Ohm, Kelvin) are letters."""
    from tokenizers import Regex, pre_tokenizers

    from mlxollama.convert.gguf_tokenizer import PRE_TOKENIZER_REGEXES

    split = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in PRE_TOKENIZER_REGEXES["deepseek-llm"]]
    )
    pieces = [p for p, _ in split.pre_tokenize_str("Hello \u4f60\u597d 2024\n\u0391\u03bb\u03c6\u03b1 \u2126\u212a")]
    # (U+2126 and U+212A also fall in the CJK split's U+0800-U+4E00 range, which takes them from the space)
    assert pieces == ["Hello", " ", "\u4f60\u597d", " ", "2024", "\n", "\u0391\u03bb\u03c6\u03b1", " ", "\u2126\u212a"]


def _rewrite_without(src: Path, dst: Path, drop: str, reshape: dict | None = None, extra: dict | None = None) -> None:
    """Copy a GGUF, leaving out tensor ``drop``, writing others reshaped and adding ``extra`` tensors."""
    r = gguf.GGUFReader(str(src))
    arch = r.fields["general.architecture"].contents()
    w = gguf.GGUFWriter(str(dst), arch)
    for key, f in r.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        vtype = f.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            w.add_key_value(key, f.contents(), vtype, sub_type=f.types[-1])
        else:
            w.add_key_value(key, f.contents(), vtype)
    for t in r.tensors:
        if t.name == drop:
            continue
        data = np.asarray(t.data).reshape(tuple(int(x) for x in reversed(t.shape)))
        if reshape and t.name in reshape:
            data = data.reshape(reshape[t.name])
        w.add_tensor(t.name, data)
    for name, data in (extra or {}).items():
        w.add_tensor(name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_missing_or_misshapen_tensors_are_refused(tmp_path, checkpoints):
    """Every mlx-lm parameter must be filled and every tensor land on a
    parameter of its shape: a file that does not is refused by name."""
    hf_dir = checkpoints("qwen3_moe")[0]
    write_gguf(hf_dir, tmp_path / "ok.gguf", QT.F16)
    _rewrite_without(tmp_path / "ok.gguf", tmp_path / "missing.gguf", "blk.1.ffn_down_exps.weight")
    with pytest.raises(UnsupportedGGUF, match=r"lacks tensors .*layers\.1\.mlp\.switch_mlp\.down_proj"):
        import_gguf(tmp_path / "missing.gguf", tmp_path / "out1")
    _rewrite_without(tmp_path / "ok.gguf", tmp_path / "shape.gguf", "", reshape={"blk.0.attn_q.weight": (128, 512)})
    with pytest.raises(UnsupportedGGUF, match=r"blk\.0\.attn_q\.weight.* shape"):
        import_gguf(tmp_path / "shape.gguf", tmp_path / "out2")


@pytest.mark.parametrize("arch", ["gemma3", "ministral3"])
def test_vision_tower_is_left_out(tmp_path, checkpoints, arch):
    """The Ollama library's multimodal gemma3 / mistral-small3.x GGUFs hold the vision tower
    and projector (v.*, mm.*) beside the text model: the text model imports as from a text-only file."""
    hf_dir, _, _, src_tokens = checkpoints(arch)
    plain = tmp_path / "plain.gguf"
    reference = write_gguf(hf_dir, plain, QT.F16)
    rng = np.random.default_rng(3)
    extra = {
        "v.patch_embd.weight": rng.normal(size=(64, 48)).astype(np.float16),
        "v.blk.0.attn_q.weight": rng.normal(size=(64, 64)).astype(np.float16),
        "mm.input_projection.weight": rng.normal(size=(64, 256)).astype(np.float16),
    }
    _rewrite_without(plain, tmp_path / "vision.gguf", "", extra=extra)
    info = import_gguf(tmp_path / "vision.gguf", tmp_path / "mlx")
    assert info.architecture == GGUF_ARCH[json.loads((hf_dir / "config.json").read_text())["model_type"]]
    stored = set(th.load_hf_weights(tmp_path / "mlx"))
    assert not any("patch_embd" in k or "projection" in k or k.startswith(("v.", "mm.")) for k in stored)
    _, tokens = _check_exact(tmp_path / "mlx", hf_dir, reference)
    assert tokens == src_tokens


@pytest.mark.parametrize("mix", [True, False], ids=["Q4_K_M", "Q6_K"])
@pytest.mark.parametrize("arch", ["llama", "qwen3_moe"])
def test_q6_k_and_q4_k_m_mix(tmp_path, checkpoints, arch, mix):
    """Q6_K (16-element sub-blocks: no exact MLX form) is requantized to 8-bit 32-groups;
    in llama-quantize's Q4_K_M mix those tensors sit beside exact Q4_K ones, which the
    config's per-module quantization entries tell apart.  Against the weights llama.cpp
    decodes: logits within the 8-bit requantization's noise, top-1 identical where margins allow."""
    hf_dir = checkpoints(arch)[0]
    path = tmp_path / "model.gguf"
    reference = write_gguf(hf_dir, path, QT.Q4_K if mix else QT.Q6_K, mix=mix)
    types = {t.name: QT(t.tensor_type) for t in gguf.GGUFReader(str(path)).tensors}
    assert types["blk.0.attn_v.weight"] == QT.Q6_K and types["output.weight"] == QT.Q6_K
    assert types["blk.1.attn_v.weight"] == (QT.Q4_K if mix else QT.Q6_K)
    info = import_gguf(path, tmp_path / "mlx")
    assert info.file_type == ("Q4_K_M" if mix else "Q6_K")
    quant = json.loads((tmp_path / "mlx" / "config.json").read_text())["quantization"]
    if mix:
        assert (quant["bits"], quant["model.layers.0.self_attn.v_proj"]["bits"], quant["lm_head"]["bits"]) == (4, 8, 8)
    else:
        assert quant["bits"] == 8
    got = th.logits(th.load_float32(tmp_path / "mlx"), th.PROMPT)
    want = th.logits(th.load_float32(hf_dir, reference), th.PROMPT)
    assert _rel(got, want) <= 0.02, _rel(got, want)  # measured 0.6-0.8% (Q4_K_M), 1.2-1.5% (Q6_K)
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.999
    # Random weights put some top-1 margins (down to 0.05) below that noise (max abs 0.2-0.46):
    # measured 11 or 12 of 12 positions identical.
    assert (got.argmax(-1) == want.argmax(-1)).sum() >= len(th.PROMPT) - 1


def test_qwen3next_fused_ssm_in(tmp_path, checkpoints):
    """Qwen3-Next files from converters that kept in_proj_qkvz whole (ssm_in, per key head:
    q, k, v, z) map straight onto mlx-lm's in_proj_qkvz; newer ones split it (attn_qkv +
    attn_gate), regrouped exactly and kept quantized (test_import_matches_source)."""
    hf_dir = checkpoints("qwen3_next")[0]
    split = tmp_path / "split.gguf"
    reference = write_gguf(hf_dir, split, QT.Q8_0)
    r = gguf.GGUFReader(str(split))
    tensors = {t.name: t for t in r.tensors}
    cfg = json.loads((hf_dir / "config.json").read_text())
    nk, dk = cfg["linear_num_key_heads"], cfg["linear_key_head_dim"]

    fused = {}  # Q8_0 rows regrouped as they are (whole rows: blocks never straddle them)
    for layer in range(cfg["num_hidden_layers"]):
        if f"blk.{layer}.attn_gate.weight" in tensors:
            qkv = np.asarray(tensors[f"blk.{layer}.attn_qkv.weight"].data)
            z = np.asarray(tensors[f"blk.{layer}.attn_gate.weight"].data)
            groups = [x.reshape(nk, -1, qkv.shape[1]) for x in (*np.split(qkv, [nk * dk, 2 * nk * dk]), z)]
            fused[f"blk.{layer}.ssm_in.weight"] = np.concatenate(groups, axis=1).reshape(-1, qkv.shape[1])
    assert len(fused) == 3  # the three linear-attention layers
    drop = {n.replace("ssm_in", p) for n in fused for p in ("attn_qkv", "attn_gate")}
    w = gguf.GGUFWriter(str(tmp_path / "fused.gguf"), "qwen3next")
    for key, f in r.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        if f.types[0] == gguf.GGUFValueType.ARRAY:
            w.add_key_value(key, f.contents(), f.types[0], sub_type=f.types[-1])
        else:
            w.add_key_value(key, f.contents(), f.types[0])
    for t in r.tensors:
        if t.name not in drop:  # the reader's arrays: elements for F32/F16, bytes per row when quantized
            w.add_tensor(t.name, np.asarray(t.data), raw_dtype=t.tensor_type)
    for name, a in fused.items():
        w.add_tensor(name, a, raw_dtype=QT.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    import_gguf(tmp_path / "fused.gguf", tmp_path / "mlx")
    _check_exact(tmp_path / "mlx", hf_dir, reference)
