"""GGUF import of granite4's hybrid files (``granitehybrid``) and gemma3n, end to end: a tiny
random Hugging Face checkpoint (tests/support/tinyhybrid.py, mlx-lm's model classes) written as
GGUF with llama.cpp's converter rules (or, for gemma3n, Ollama's), imported, loaded by mlx-lm and
run in float32 against the source.

Tolerances (logit errors relative to the largest |logit|), as in test_gguf_archs.py:
* vs the source run with the weights llama.cpp decodes from the file: <= 1e-4 (float32 sums in another order) and identical
  greedy tokens (8, through KV caches, rotating windows and Mamba states) -- the import is exact
  for F16, Q8_0 and Q4_K (Q5_0 where rows do not fill Q4_K's 256-element blocks);
* vs the unmodified source: F16 <= 1e-4 (measured 0) and identical greedy tokens; Q8_0 and Q4_K
  by correlation only, their own noise (Q8_0 measured 0.998 granite, 0.999 gemma3n: > 0.98; Q4_K
  0.84 granite, whose expert routing and Mamba state compound it, 0.95 gemma3n).
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT

from mlxollama.convert.gguf import UnsupportedGGUF, gguf_architecture_supported, import_gguf
from mlxollama.convert.gguf_hybrid import GEMMA3N_ALTUP_COEF_CLIP, sparsity_from_scale

from ..support import tinyhf as th
from ..support.tinyhybrid import CONFIGS, GGUF_ARCH, build_hybrid_checkpoint, write_hybrid_gguf

FILE_TYPE = {QT.F16: "F16", QT.Q8_0: "Q8_0", QT.Q4_K: "Q4_K_S"}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """(arch, overrides) -> (HF folder, source logits and greedy tokens on PROMPT), built once."""
    cache = {}

    def get(arch: str, **overrides):
        key = (arch, json.dumps(overrides, sort_keys=True))
        if key not in cache:
            d = build_hybrid_checkpoint(tmp_path_factory.mktemp(arch), arch, overrides=overrides)
            src = th.load_source(d)
            cache[key] = d, th.logits(src, th.PROMPT), th.greedy(src, th.PROMPT)
        return cache[key]

    return get


def _import(tmp_path: Path, hf_dir: Path, qtype: QT, **kw):
    path = tmp_path / "model.gguf"
    reference = write_hybrid_gguf(hf_dir, path, qtype, **kw)
    info = import_gguf(path, tmp_path / "mlx")
    return info, tmp_path / "mlx", reference


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def _check_exact(out: Path, hf_dir: Path, reference: dict) -> tuple[np.ndarray, list[int]]:
    model = th.load_float32(out)
    ref = th.load_float32(hf_dir, reference)
    got, want = th.logits(model, th.PROMPT), th.logits(ref, th.PROMPT)
    assert _rel(got, want) <= 1e-4, _rel(got, want)
    tokens = th.greedy(model, th.PROMPT)
    assert tokens == th.greedy(ref, th.PROMPT)
    return got, tokens


def _config(out: Path) -> dict:
    return json.loads((out / "config.json").read_text())


def test_architectures_are_admitted():
    assert gguf_architecture_supported("granitehybrid") and gguf_architecture_supported("gemma3n")


@pytest.mark.e2e  # the per-architecture conversion matrix (~0.5 s a case): whole suite only, not the fast subset
@pytest.mark.parametrize("qtype", [QT.F16, QT.Q8_0, QT.Q4_K], ids=lambda q: q.name)
@pytest.mark.parametrize("arch", list(CONFIGS))
def test_import_matches_source(tmp_path, checkpoints, arch, qtype):
    hf_dir, src_logits, src_tokens = checkpoints(arch)
    info, out, reference = _import(tmp_path, hf_dir, qtype)
    assert info.architecture == GGUF_ARCH[arch] and info.file_type == FILE_TYPE[qtype]
    assert _config(out)["model_type"] == arch
    got, tokens = _check_exact(out, hf_dir, reference)
    assert len(set(src_tokens)) > 1, "the tiny model repeats one token: nothing compared"
    err = _rel(got, src_logits)
    if qtype == QT.F16:
        assert err <= 1e-4, err
        assert tokens == src_tokens
    corr = np.corrcoef(got.ravel(), src_logits.ravel())[0, 1]
    if qtype == QT.Q8_0:
        assert corr > 0.98, (err, corr)
    elif qtype == QT.Q4_K:
        assert corr > {"granitemoehybrid": 0.8, "gemma3n": 0.9}[arch], (err, corr)


def test_granitehybrid_config(tmp_path, checkpoints):
    """What the GGUF says only indirectly: which layers are Mamba (head_count_kv 0), no rope,
    the Mamba sizes from ssm.*, the experts' and shared MLP's widths from their tensors."""
    hf_dir = checkpoints("granitemoehybrid")[0]
    src = CONFIGS["granitemoehybrid"]
    cfg = _config(_import(tmp_path, hf_dir, QT.Q8_0)[1])
    for key in (
        "layer_types",
        "position_embedding_type",
        "num_key_value_heads",
        "intermediate_size",
        "shared_intermediate_size",
        "num_local_experts",
        "num_experts_per_tok",
        "mamba_n_heads",
        "mamba_d_head",
        "mamba_d_state",
        "mamba_d_conv",
        "mamba_n_groups",
        "mamba_conv_bias",
        "mamba_proj_bias",
        "logits_scaling",
        "attention_multiplier",
        "embedding_multiplier",
        "residual_multiplier",
        "tie_word_embeddings",
    ):
        assert cfg[key] == src[key], key
    assert cfg["max_position_embeddings"] == 1 << 20  # the converter's context for a model without rope
    # the shared MLP's gate/up halves rejoined, still Q8_0 (rows moved, not requantized)
    assert cfg["quantization"]["bits"] == 8 and "model.layers.0.shared_mlp.input_linear" not in cfg["quantization"]


def test_granitehybrid_dense(tmp_path, checkpoints):
    """A hybrid without experts (granite-4.0-h-micro's layout): the converter writes the shared
    MLP as a dense ffn_gate / ffn_up / ffn_down, mlx-lm's mlp."""
    hf_dir, _, src_tokens = checkpoints("granitemoehybrid", num_local_experts=0)
    _, out, reference = _import(tmp_path, hf_dir, QT.F16)
    assert "num_local_experts" not in _config(out)
    _, tokens = _check_exact(out, hf_dir, reference)
    assert tokens == src_tokens


def test_granitehybrid_norm_groups_are_refused(tmp_path, checkpoints):
    """llama.cpp normalises the gated SSM output per group, mlx-lm over the whole inner size:
    files with more than one group are refused by name rather than run differently."""
    hf_dir = checkpoints("granitemoehybrid", mamba_n_groups=2)[0]
    path = tmp_path / "model.gguf"
    write_hybrid_gguf(hf_dir, path, QT.F16)
    with pytest.raises(UnsupportedGGUF, match="2 SSM norm groups"):
        import_gguf(path, tmp_path / "mlx")


def test_gemma3n_config(tmp_path, checkpoints):
    hf_dir = checkpoints("gemma3n")[0]
    src = CONFIGS["gemma3n"]["text_config"]
    cfg = _config(_import(tmp_path, hf_dir, QT.Q8_0)[1])
    text = cfg["text_config"]
    for key in (
        "layer_types",
        "num_kv_shared_layers",
        "head_dim",
        "num_key_value_heads",
        "hidden_size_per_layer_input",
        "vocab_size_per_layer_input",
        "sliding_window",
        "rope_theta",
        "rope_local_base_freq",
        "final_logit_softcapping",
        "altup_num_inputs",
        "altup_active_idx",
        "altup_correct_scale",
        "laurel_rank",
        # the stored normal quantiles map back to the very sparsities of the checkpoint
        "activation_sparsity_pattern",
    ):
        assert text[key] == src[key], key
    assert text["altup_coef_clip"] == GEMMA3N_ALTUP_COEF_CLIP == src["altup_coef_clip"]
    assert text["intermediate_size"] == 512  # the per-layer list, all 512
    assert cfg["num_hidden_layers"] == src["num_hidden_layers"]


def test_gemma3n_ollama_file(tmp_path, checkpoints):
    """Gemma 3n as Ollama's convert_gemma3n.go writes its library tags: its own key names
    (head_dim, rope.freq_base_local, altup.correct_scale), one MLP width, no soft-capping key,
    AltUp coefficients clamped, per-layer embeddings unpadded."""
    hf_dir, _, src_tokens = checkpoints("gemma3n")
    _, out, reference = _import(tmp_path, hf_dir, QT.Q8_0, ollama=True)
    text = _config(out)["text_config"]
    assert text["head_dim"] == 64 and text["rope_local_base_freq"] == 10000.0
    assert text["final_logit_softcapping"] == 30.0 and text["intermediate_size"] == 512
    _check_exact(out, hf_dir, reference)
    (tmp_path / "f16").mkdir()
    _, out16, reference16 = _import(tmp_path / "f16", hf_dir, QT.F16, ollama=True)
    _, tokens = _check_exact(out16, hf_dir, reference16)
    assert tokens == src_tokens


def test_gemma3n_padded_per_layer_embeddings(tmp_path, checkpoints):
    """Gemma3NModel zero-pads the per-layer embedding to the full vocabulary (Hugging Face's
    stops short of the image / audio soft tokens); the padding is kept, so those ids get zeros
    as in llama.cpp, and every other id is what the source computes."""
    hf_dir, src_logits, src_tokens = checkpoints("gemma3n", vocab_size_per_layer_input=320)
    assert max(th.PROMPT) < 320
    _, out, _ = _import(tmp_path, hf_dir, QT.F16)
    assert _config(out)["text_config"]["vocab_size_per_layer_input"] == th.VOCAB
    model = th.load_float32(out)
    table = np.array(model.model.language_model.embed_tokens_per_layer.weight)
    assert not table[320:].any() and table[:320].any()
    assert _rel(th.logits(model, th.PROMPT), src_logits) <= 1e-4


@pytest.mark.parametrize("p", [0.95, 0.9, 0.5, 0.05, 0.123, 0.0])
def test_sparsity_from_stored_quantile(p):
    """The converter stores float32(icdf(p)); the import gives back p itself."""
    from statistics import NormalDist

    scale = float(np.float32(NormalDist().inv_cdf(p))) if p else float("-inf")
    assert sparsity_from_scale(scale) == p


def test_gemma3n_without_sparsity_key_uses_llamacpps(tmp_path, checkpoints):
    """A file without activation_sparsity_scale runs as llama.cpp's graph does: 0.95 on the first
    ten layers."""
    hf_dir = checkpoints("gemma3n")[0]
    path = tmp_path / "model.gguf"
    write_hybrid_gguf(hf_dir, path, QT.F16)
    reader = gguf.GGUFReader(str(path))
    stripped = tmp_path / "stripped.gguf"
    w = gguf.GGUFWriter(str(stripped), "gemma3n")
    for key, f in reader.fields.items():
        if key.startswith("GGUF.") or key in ("general.architecture", "gemma3n.activation_sparsity_scale"):
            continue
        if f.types[0] == gguf.GGUFValueType.ARRAY:
            w.add_key_value(key, f.contents(), f.types[0], sub_type=f.types[-1])
        else:
            w.add_key_value(key, f.contents(), f.types[0])
    for t in reader.tensors:
        w.add_tensor(t.name, np.asarray(t.data), raw_shape=[int(x) for x in reversed(t.shape)], raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    import_gguf(stripped, tmp_path / "mlx")
    assert _config(tmp_path / "mlx")["text_config"]["activation_sparsity_pattern"] == [0.95] * 6
