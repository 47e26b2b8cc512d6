"""Hugging Face safetensors -> MLX conversion (mlxollama.convert.hf) on tiny
random checkpoints of every architecture, run in float32 against the source.

Tolerances (logit errors relative to the largest |logit|):
* unquantized: identical logits (measured 0) and greedy tokens;
* quantized: against the source whose Linear/Embedding weights went through
  mx.quantize -> mx.dequantize with the same bits / group size / mode (what
  the conversion should store): <= 1e-5 (measured 0) and identical greedy
  tokens.  Against the untouched source the quantization error itself shows:
  8-bit ~3% (bound 10%, correlation > 0.995), 4-bit ~30% (correlation > 0.9);
  random weights have top-1 margins below that, so greedy tokens are not
  compared there.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from mlxollama.convert.create import ManageError, convert_path
from mlxollama.convert.hf import (
    QUANTIZE_CHOICES,
    UnsupportedCheckpoint,
    convert_hf_checkpoint,
    is_mlx_checkpoint,
)
from mlxollama.store import ModelName, Store

from ..support import tinyhf as th
from ..support.tinymodels import CHATML_TEMPLATE

ARCHS = ["llama", "qwen2", "qwen3", "gemma2", "gemma3", "mistral", "phi3"]
QUANTS = {None: None, "4bit": (4, 64, "affine"), "8bit": (8, 64, "affine"), "mxfp4": (4, 32, "mxfp4")}
FILE_TYPE = {None: "BF16", "4bit": "4bit", "8bit": "8bit", "mxfp4": "MXFP4"}
REQUANT = "quantization is only supported for F16, BF16 and F32 models"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    cache = {}

    def get(arch: str):
        if arch not in cache:
            d = th.build_hf_checkpoint(tmp_path_factory.mktemp(arch), arch, shard=arch == "qwen3")
            src = th.load_float32(d)
            cache[arch] = d, th.logits(src, th.PROMPT), th.greedy(src, th.PROMPT)
        return cache[arch]

    return get


def _rel(a, b) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def _qdq_reference(hf_dir: Path, bits: int, group: int, mode: str) -> dict[str, np.ndarray]:
    """Source weights as the conversion should leave them: cast to the
    config's dtype (bf16), matrices quantized and dequantized."""
    ref = {}
    for f in sorted(hf_dir.glob("model*.safetensors")):
        for k, v in mx.load(str(f)).items():
            if v.ndim == 2 and v.shape[-1] % group == 0:
                # quantized from bf16 (as stored), dequantized in float32 (as run)
                q = [
                    a.astype(mx.float32) if mx.issubdtype(a.dtype, mx.floating) else a
                    for a in mx.quantize(v, group_size=group, bits=bits, mode=mode)
                ]
                v = mx.dequantize(*q, group_size=group, bits=bits, mode=mode, dtype=mx.float32)
            ref[k] = np.array(v.astype(mx.float32))
    return ref


@pytest.mark.parametrize("quantize", [None, "4bit", "8bit"])
@pytest.mark.parametrize("arch", ARCHS)
def test_convert_matches_source(tmp_path, checkpoints, arch, quantize):
    hf_dir, src_logits, src_tokens = checkpoints(arch)
    hf_cfg = json.loads((hf_dir / "config.json").read_text())
    out = tmp_path / "mlx"
    info = convert_hf_checkpoint(hf_dir, out, quantize=quantize)

    assert info.architecture == hf_cfg["model_type"]
    assert info.file_type == FILE_TYPE[quantize]
    assert info.parameter_count == sum(v.size for v in th.load_hf_weights(hf_dir).values())
    assert info.context_length == hf_cfg["max_position_embeddings"]
    assert info.embedding_length == hf_cfg["hidden_size"]
    assert info.chat_template == CHATML_TEMPLATE
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "model_info.json"):
        assert name in info.files and (out / name).is_file(), name
    assert set(info.files) == {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert not list(out.glob("*.bin")) and not (out / "README.md").exists()

    arch_key = hf_cfg["model_type"]
    mi = json.loads((out / "model_info.json").read_text())
    assert mi == {
        "general.architecture": arch_key,
        "general.parameter_count": info.parameter_count,
        f"{arch_key}.context_length": hf_cfg["max_position_embeddings"],
        f"{arch_key}.embedding_length": hf_cfg["hidden_size"],
        f"{arch_key}.block_count": hf_cfg["num_hidden_layers"],
        f"{arch_key}.attention.head_count": hf_cfg["num_attention_heads"],
        f"{arch_key}.attention.head_count_kv": hf_cfg["num_key_value_heads"],
        f"{arch_key}.feed_forward_length": hf_cfg["intermediate_size"],
        f"{arch_key}.vocab_size": hf_cfg["vocab_size"],
    }

    cfg = json.loads((out / "config.json").read_text())
    model = th.load_float32(out)
    got, tokens = th.logits(model, th.PROMPT), th.greedy(model, th.PROMPT)
    if quantize is None:
        assert "quantization" not in cfg
        np.testing.assert_array_equal(got, src_logits)
        assert tokens == src_tokens
        return
    bits, group, mode = QUANTS[quantize]
    assert (cfg["quantization"]["bits"], cfg["quantization"]["group_size"]) == (bits, group)
    ref = th.load_float32(hf_dir, _qdq_reference(hf_dir, bits, group, mode))
    want = th.logits(ref, th.PROMPT)
    assert _rel(got, want) <= 1e-5, _rel(got, want)
    assert tokens == th.greedy(ref, th.PROMPT)
    corr = np.corrcoef(got.ravel(), src_logits.ravel())[0, 1]
    if bits == 8:
        assert _rel(got, src_logits) <= 0.10 and corr > 0.995, (_rel(got, src_logits), corr)
    else:
        assert corr > 0.9, corr


def test_mxfp4_and_float_choices(tmp_path, checkpoints):
    hf_dir, src_logits, _ = checkpoints("llama")
    info = convert_hf_checkpoint(hf_dir, tmp_path / "mx", quantize="MXFP4")  # names are case-insensitive
    assert info.file_type == "MXFP4"
    cfg = json.loads((tmp_path / "mx" / "config.json").read_text())
    assert cfg["quantization"]["mode"] == "mxfp4"
    got = th.logits(th.load_float32(tmp_path / "mx"), th.PROMPT)
    want = th.logits(th.load_float32(hf_dir, _qdq_reference(hf_dir, 4, 32, "mxfp4")), th.PROMPT)
    assert _rel(got, want) <= 1e-5

    info = convert_hf_checkpoint(hf_dir, tmp_path / "f16", quantize="f16")
    assert info.file_type == "F16"
    weights = mx.load(str(tmp_path / "f16" / "model.safetensors"))
    assert {v.dtype for v in weights.values()} == {mx.float16}
    # bf16 -> f16 is exact for these magnitudes
    np.testing.assert_allclose(th.logits(th.load_float32(tmp_path / "f16"), th.PROMPT), src_logits, rtol=0, atol=1e-4)

    info = convert_hf_checkpoint(hf_dir, tmp_path / "q4km", quantize="q4_K_M")
    assert info.file_type == "Q4_K_M"


def test_quantize_choices_table():
    assert QUANTIZE_CHOICES["4bit"] == {"bits": 4, "group_size": 64}
    assert QUANTIZE_CHOICES["8bit"] == {"bits": 8, "group_size": 64}
    assert QUANTIZE_CHOICES["mxfp4"]["mode"] == "mxfp4"
    for name in ("q4_0", "q4_K_M", "q4_K_S"):
        assert QUANTIZE_CHOICES[name]["bits"] == 4
    assert QUANTIZE_CHOICES["q8_0"]["bits"] == 8
    for name in ("bf16", "f16", "fp16"):
        assert "bits" not in QUANTIZE_CHOICES[name] and QUANTIZE_CHOICES[name]["dtype"]


def test_requantize_refused(tmp_path, checkpoints):
    hf_dir = checkpoints("llama")[0]
    convert_hf_checkpoint(hf_dir, tmp_path / "q4", quantize="4bit")
    for q in ("8bit", "4bit", "bf16"):
        with pytest.raises(ValueError) as e:
            convert_hf_checkpoint(tmp_path / "q4", tmp_path / "again", quantize=q)
        assert str(e.value) == REQUANT
    # keeping the quantization is fine: the folder is re-saved as it is
    info = convert_hf_checkpoint(tmp_path / "q4", tmp_path / "kept", quantize=None)
    assert info.file_type == "4bit"


def test_unknown_quantize_name(tmp_path, checkpoints):
    hf_dir = checkpoints("llama")[0]
    with pytest.raises(ValueError) as e:
        convert_hf_checkpoint(hf_dir, tmp_path / "x", quantize="q3_K_L")
    assert str(e.value).startswith("unsupported quantization type q3_K_L - supported types are ")
    assert "4bit" in str(e.value) and "q4_K_M" in str(e.value)
    assert not (tmp_path / "x").exists()


def test_unknown_architecture(tmp_path, checkpoints):
    d = tmp_path / "odd"
    shutil.copytree(checkpoints("llama")[0], d)
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(model_type="frobnicator", architectures=["FrobnicatorForCausalLM"])
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedCheckpoint, match="frobnicator"):
        convert_hf_checkpoint(d, tmp_path / "out")
    cfg["model_file"] = "modeling_frob.py"  # custom code is never run
    cfg["model_type"] = "llama"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedCheckpoint, match="Python code"):
        convert_hf_checkpoint(d, tmp_path / "out")


def test_missing_safetensors(tmp_path, checkpoints):
    d = tmp_path / "bin"
    shutil.copytree(checkpoints("llama")[0], d)
    for f in d.glob("*.safetensors"):
        f.rename(f.with_suffix(".bin"))
    with pytest.raises(UnsupportedCheckpoint, match="safetensors"):
        convert_hf_checkpoint(d, tmp_path / "out")


def test_is_mlx_checkpoint(tmp_path, checkpoints):
    hf_dir = checkpoints("llama")[0]
    assert not is_mlx_checkpoint(hf_dir)
    assert not is_mlx_checkpoint(tmp_path)  # no config.json
    convert_hf_checkpoint(hf_dir, tmp_path / "plain", quantize=None)
    convert_hf_checkpoint(hf_dir, tmp_path / "q8", quantize="8bit")
    assert is_mlx_checkpoint(tmp_path / "plain")  # weights written by MLX ("format": "mlx")
    assert is_mlx_checkpoint(tmp_path / "q8")  # config.json "quantization"


def test_convert_path_into_store(tmp_path, checkpoints):
    hf_dir, src_logits, _ = checkpoints("gemma3")
    store = Store(tmp_path / "models")
    stored = convert_path(hf_dir, "tiny-gemma3", quantize="4bit", store=store)
    assert stored.name == ModelName.parse("tiny-gemma3:latest")
    cfg = stored.read_config()
    assert cfg["model_format"] == "mlx" and cfg["model_family"] == "gemma3_text"
    assert cfg["model_families"] == ["gemma3_text"]
    assert cfg["file_type"] == "4bit" and cfg["context_length"] == 32768
    names = {l.name for l in stored.manifest.layers}
    assert {"config.json", "model.safetensors", "tokenizer.json", "model_info.json"} <= names
    mlx_cfg = json.loads(stored.read_named_text("config.json"))
    assert mlx_cfg["quantization"]["bits"] == 4


def test_convert_path_takes_an_mlx_checkpoint_as_is(tmp_path, checkpoints):
    hf_dir = checkpoints("llama")[0]
    q4 = tmp_path / "mlx-4bit"
    convert_hf_checkpoint(hf_dir, q4, quantize="4bit")
    (q4 / "model_info.json").unlink()  # as an mlx-community repo comes
    (q4 / "README.md").write_text("# card")
    store = Store(tmp_path / "models")
    stored = convert_path(q4, "m0", store=store)
    names = {l.name for l in stored.manifest.layers}
    assert "README.md" not in names and "model_info.json" in names
    weights = stored.manifest.layers[[l.name for l in stored.manifest.layers].index("model.safetensors")]
    assert weights.digest == store.add_blob_from_path(q4 / "model.safetensors")[0]  # the same bytes
    assert stored.read_config()["file_type"] == "4bit"
    mi = json.loads(stored.read_named_text("model_info.json"))
    assert mi["general.parameter_count"] == sum(v.size for v in th.load_hf_weights(hf_dir).values())
    # a quantized model is not quantized again, as in Ollama
    with pytest.raises(ManageError, match=REQUANT):
        convert_path(q4, "m8", quantize="8bit", store=store)
    # an unquantized MLX folder is quantized on request
    plain = tmp_path / "mlx-bf16"
    convert_hf_checkpoint(hf_dir, plain, quantize=None)
    stored = convert_path(plain, "m9", quantize="8bit", store=store)
    assert stored.read_config()["file_type"] == "8bit"


def test_convert_path_takes_sentence_transformers_folders_as_embedding_models(tmp_path):
    src = tmp_path / "st"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"model_type": "bert"}))
    mx.save_safetensors(str(src / "model.safetensors"), {"w": mx.zeros((2, 2))})
    store = Store(tmp_path / "models")
    with pytest.raises(ManageError) as e:
        convert_path(src, "emb", quantize="q8_0", store=store)
    assert (str(e.value), e.value.status) == ("quantization is not supported for embedding models", 400)
    # the encoder converter's complaint, without the server's path in it
    with pytest.raises(ManageError) as e:
        convert_path(src, "emb", store=store)
    assert e.value.status == 400 and str(e.value) == "tokenizer.json not found"
    assert store.resolve(ModelName.parse("emb")) is None
