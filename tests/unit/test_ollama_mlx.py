"""Ollama `-mlx` tensor layers assembled into an MLX folder: names, quantization config, refusals."""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pytest

from mlxollama.convert.create import ManageError
from mlxollama.convert.ollama_mlx import assemble, check_architecture, plan_tensors
from mlxollama.store import Layer, Store

from ..support import tinyhf as th
from ..support.ollamamlx import JSON, ollama_mlx_layers, tensor_quantization


def _stored(store: Store, layers) -> list[Layer]:
    out = []
    for mt, name, data in layers:
        digest, size = store.write_blob(data)
        out.append(Layer(mt, digest, size, name=name))
    return out


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return th.build_hf_checkpoint(tmp_path_factory.mktemp("hf") / "llama", "llama")


def test_ollama_policy_as_read():
    """The writer's policy is Ollama's GetTensorQuantization (x/create/create.go)."""
    assert tensor_quantization("model.layers.0.self_attn.q_proj.weight", (512, 256), "int4") == "int4"
    assert tensor_quantization("model.layers.0.self_attn.k_proj.weight", (256, 256), "int4") == "int8"
    assert tensor_quantization("model.layers.0.mlp.down_proj.weight", (256, 512), "mxfp4") == "mxfp8"
    assert tensor_quantization("model.layers.0.mlp.down_proj.weight", (256, 512), "mxfp8") == "mxfp8"
    assert tensor_quantization("lm_head.weight", (384, 256), "int4") == "int8"
    assert tensor_quantization("model.embed_tokens.weight", (384, 256), "int4") == ""
    assert tensor_quantization("model.layers.0.input_layernorm.weight", (256,), "int4") == ""
    assert tensor_quantization("model.layers.0.self_attn.q_proj.weight", (16, 16), "int4") == ""  # < 1024
    assert tensor_quantization("model.layers.0.self_attn.q_proj.weight", (64, 96), "int4") == ""  # 96 % 64


def test_assembled_names_and_config(tmp_path, llama):
    store = Store(tmp_path / "store")
    layers, chosen = ollama_mlx_layers(llama, "int4")
    assert {n for mt, n, _ in layers if mt == JSON} >= {"config.json", "tokenizer.json"}
    config = assemble(store, _stored(store, layers), tmp_path / "out")
    q = config["quantization"]
    assert (q["group_size"], q["bits"], q["mode"]) == (64, 4, "affine")
    assert q["model.layers.0.self_attn.v_proj"] == {"group_size": 64, "bits": 8, "mode": "affine"}
    assert q["lm_head"] == {"group_size": 64, "bits": 8, "mode": "affine"}
    assert "model.layers.0.self_attn.q_proj" not in q  # the default type
    weights = mx.load(str(tmp_path / "out" / "model.safetensors"))
    for name in chosen:
        module = name.removesuffix(".weight")
        assert weights[name].dtype == mx.uint32
        assert f"{module}.scales" in weights and f"{module}.biases" in weights
    assert not [k for k in weights if k.endswith((".scale", ".bias"))]
    src = mx.load(str(llama / "model.safetensors"))
    plain = [k for k in src if k not in chosen]
    assert plain and all(mx.array_equal(weights[k], src[k]).item() and weights[k].dtype == src[k].dtype for k in plain)
    assert (tmp_path / "out" / "tokenizer.json").read_bytes() == (llama / "tokenizer.json").read_bytes()


def test_mixed_blob_metadata_and_inferred_affine(tmp_path):
    """Per-tensor quant_type keys win over the blob's; a blob without metadata is read by its shapes."""
    w = mx.random.normal((128, 256))
    q8 = mx.quantize(w, group_size=64, bits=8)
    q4 = mx.quantize(w, group_size=32, bits=4)
    a = tmp_path / "a.safetensors"
    mx.save_safetensors(
        str(a),
        {"x.weight": q8[0], "x.weight.scale": q8[1], "x.weight.bias": q8[2]},
        metadata={"quant_type": "int4", "x.weight.quant_type": "int8", "x.weight.group_size": "64"},
    )
    b = tmp_path / "b.safetensors"
    mx.save_safetensors(str(b), {"y.weight": q4[0], "y.weight.scale": q4[1], "y.weight.bias": q4[2]})
    plan = plan_tensors([a, b])
    assert plan.quant == {"x": (64, 8, "affine"), "y": (32, 4, "affine")}
    assert sorted(p.name for p in plan.pieces) == [
        "x.biases",
        "x.scales",
        "x.weight",
        "y.biases",
        "y.scales",
        "y.weight",
    ]


def test_unknown_quant_type_is_refused(tmp_path):
    w = mx.quantize(mx.random.normal((64, 256)), group_size=64, bits=4)
    a = tmp_path / "a.safetensors"
    mx.save_safetensors(str(a), {"x.weight": w[0], "x.weight.scale": w[1]}, metadata={"quant_type": "q3"})
    with pytest.raises(ManageError) as e:
        plan_tensors([a])
    assert e.value.status == 400 and '"q3"' in str(e.value)


def test_architecture_gate():
    assert check_architecture(json.loads(json.dumps(th.CONFIGS["qwen3"]))) == "qwen3"
    with pytest.raises(ManageError) as e:
        check_architecture({"model_type": "falcon", "architectures": ["FalconForCausalLM"]})
    assert e.value.status == 400 and '"falcon"' in str(e.value) and "mlx-lm" in str(e.value)
    with pytest.raises(ManageError) as e:
        check_architecture(json.loads(json.dumps(th.CONFIGS["phi3"])))
    assert e.value.status == 400 and '"phi3"' in str(e.value) and "llama" in str(e.value)


def test_gemma4_policy():
    from ..support.ollamamlx import gemma4_quantization

    # x/create/gemma4.go: embedding 8-bit; v/down 8-bit in the first/last eighth and every third layer
    name = "model.language_model.{}"
    assert gemma4_quantization(name.format("embed_tokens.weight"), (384, 256), "int4", 32, 0) == "int8"
    assert gemma4_quantization(name.format("embed_tokens_per_layer.weight"), (384, 256), "int4", 32, 0) == ""
    assert gemma4_quantization(name.format("layers.0.self_attn.v_proj.weight"), (128, 256), "mxfp4", 32, 0) == "mxfp8"
    assert gemma4_quantization(name.format("layers.6.self_attn.v_proj.weight"), (128, 256), "int4", 32, 0) == "int8"
    assert gemma4_quantization(name.format("layers.5.self_attn.v_proj.weight"), (128, 256), "int4", 32, 0) == "int4"
    assert gemma4_quantization(name.format("layers.0.self_attn.k_proj.weight"), (128, 256), "int4", 32, 0) == "int4"
    assert gemma4_quantization(name.format("layers.0.self_attn.k_proj.weight"), (128, 256), "int4", 32, 8) == "int8"


def test_missing_tokenizer_is_refused(tmp_path, llama):
    store = Store(tmp_path / "store")
    layers, _ = ollama_mlx_layers(llama)
    layers = [l for l in layers if l[1] != "tokenizer.json"]
    with pytest.raises(ManageError) as e:
        assemble(store, _stored(store, layers), tmp_path / "out")
    assert e.value.status == 400 and "tokenizer.json" in str(e.value)


def test_assembly_streams_tensor_bytes(tmp_path):
    """A tensor layer is copied in chunks, never held whole: peak Python memory stays below the
    tensor's size while its bytes arrive intact."""
    import tracemalloc

    from mlxollama.convert.ollama_mlx import _write_shards

    rows, cols = 6144, 4096  # 48 MiB of float16
    header = json.dumps({"big.weight": {"dtype": "F16", "shape": [rows, cols], "data_offsets": [0, rows * cols * 2]}})
    blob = tmp_path / "blob"
    rng = np.random.default_rng(0)
    with open(blob, "wb") as f:
        f.write(len(header).to_bytes(8, "little") + header.encode())
        for _ in range(rows // 512):
            f.write(rng.standard_normal((512, cols)).astype(np.float16).tobytes())
    (out := tmp_path / "out").mkdir()
    plan = plan_tensors([blob])
    tracemalloc.start()
    _write_shards(plan.pieces, out)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 12 << 20, peak  # one 8 MiB copy buffer
    got = mx.load(str(out / "model.safetensors"))["big.weight"]
    with open(blob, "rb") as f:
        f.seek(8 + len(header) + 2 * cols * 100)
        row = np.frombuffer(f.read(2 * cols), np.float16)
    assert got.shape == (rows, cols) and np.array_equal(np.array(got[100]), row)
