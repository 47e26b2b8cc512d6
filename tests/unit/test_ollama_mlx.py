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
from ..support.ollamamlx import JSON, TENSOR, ollama_mlx_layers, tensor_quantization


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


def test_nemotron_h_and_laguna_policies():
    """x/create/nemotron_h.go and laguna.go as read: what each keeps, promotes and demotes."""
    from ..support.ollamamlx import laguna_quantization, nemotron_h_quantization

    nem = "backbone.layers.{}.mixer.{}.weight"
    assert nemotron_h_quantization("backbone.embeddings.weight", (384, 256), "int4", 6) == "int8"
    assert nemotron_h_quantization(nem.format(2, "gate"), (4, 256), "int4", 6) == ""  # router
    assert nemotron_h_quantization(nem.format(0, "conv1d"), (384, 1, 4), "mxfp4", 6) == ""
    assert nemotron_h_quantization(nem.format(0, "in_proj"), (648, 256), "int4", 6) == "int4"
    assert nemotron_h_quantization(nem.format(1, "q_proj"), (256, 256), "nvfp4", 6) == "mxfp8"  # attention always
    assert nemotron_h_quantization(nem.format(0, "out_proj"), (256, 256), "mxfp4", 6) == "mxfp4"
    assert nemotron_h_quantization(nem.format(5, "down_proj"), (256, 512), "mxfp4", 6) == "mxfp8"  # last eighth
    assert nemotron_h_quantization(nem.format(2, "experts.down_proj"), (4, 256, 128), "mxfp4", 6) == "mxfp8"
    assert nemotron_h_quantization(nem.format(4, "experts.down_proj"), (4, 256, 128), "mxfp4", 6) == "mxfp4"
    assert nemotron_h_quantization(nem.format(4, "experts.down_proj"), (4, 256, 128), "int4", 6) == "int8"

    lag = "model.layers.{}.{}.weight"
    dense = {0}
    assert laguna_quantization(lag.format(1, "mlp.experts.down_proj"), (4, 256, 128), "int4", dense, 3) == "int8"
    assert laguna_quantization("model.embed_tokens.weight", (384, 256), "mxfp4", dense, 3) == "mxfp8"
    assert laguna_quantization("model.embed_tokens.weight", (384, 256), "int4", dense, 3) == ""
    assert laguna_quantization(lag.format(1, "mlp.gate"), (4, 256), "nvfp4", dense, 3) == ""
    assert laguna_quantization(lag.format(1, "self_attn.v_proj"), (128, 256), "mxfp4", dense, 3) == "mxfp4"
    assert laguna_quantization(lag.format(1, "self_attn.g_proj"), (4, 256), "mxfp8", dense, 3) == ""
    assert laguna_quantization(lag.format(0, "mlp.down_proj"), (256, 512), "nvfp4", dense, 3) == "nvfp4"
    assert laguna_quantization(lag.format(2, "mlp.shared_expert.down_proj"), (256, 128), "mxfp4", dense, 3) == "mxfp8"
    assert laguna_quantization(lag.format(1, "mlp.shared_expert.down_proj"), (256, 128), "mxfp4", dense, 3) == "mxfp4"
    assert laguna_quantization(lag.format(1, "mlp.shared_expert.down_proj"), (256, 128), "mxfp8", dense, 3) == ""
    assert laguna_quantization(lag.format(2, "mlp.experts.down_proj"), (4, 256, 128), "mxfp8", dense, 3) == ""
    assert laguna_quantization(lag.format(1, "mlp.experts.down_proj"), (4, 256, 128), "mxfp8", dense, 3) == "mxfp8"


def test_stacked_experts_land_on_mlx_lm_modules(tmp_path):
    """Ollama's stacked Nemotron-H experts (`mixer.experts.up_proj` [experts, out, in]) become mlx-lm's
    `mixer.switch_mlp.fc1` / `fc2`, quantization and all; the rest keeps Hugging Face's layout."""
    from ..support.ollamamlx import build_nemotron_h

    hf = build_nemotron_h(tmp_path / "hf")
    store = Store(tmp_path / "store")
    layers, chosen = ollama_mlx_layers(hf, "int4")
    names = {n for mt, n, _ in layers if mt == TENSOR}
    assert "backbone.layers.2.mixer.experts.up_proj.weight" in names  # int4 and int8 (down): a blob each
    assert not [n for n in names if ".experts.0." in n]
    config = assemble(store, _stored(store, layers), tmp_path / "out")
    q = config["quantization"]
    assert (q["group_size"], q["bits"], q["mode"]) == (64, 4, "affine")
    assert q["backbone.layers.2.mixer.switch_mlp.fc2"] == {"group_size": 64, "bits": 8, "mode": "affine"}
    assert q["backbone.embeddings"] == {"group_size": 64, "bits": 8, "mode": "affine"}
    weights = mx.load(str(tmp_path / "out" / "model.safetensors"))
    assert weights["backbone.layers.2.mixer.switch_mlp.fc1.weight"].dtype == mx.uint32
    assert weights["backbone.layers.2.mixer.switch_mlp.fc1.scales"].shape[0] == 4
    assert not [k for k in weights if ".experts." in k]
    assert weights["backbone.layers.0.mixer.conv1d.weight"].shape == (384, 1, 4)  # mlx-lm's sanitize moves it
    assert weights["backbone.layers.0.mixer.A_log"].dtype == mx.float32
    assert "backbone.layers.2.mixer.gate.weight" not in chosen


def test_mla_kv_b_proj_is_dequantized(tmp_path):
    """GLM-4.7-Flash's kv_b_proj comes back as the plain weight Ollama's runtime dequantizes it to,
    whatever its type (mlx-lm's sanitize splits only float or affine ones); nothing else changes."""
    from ..support.ollamamlx import QUANT, build_glm4_moe_lite

    hf = build_glm4_moe_lite(tmp_path / "hf")
    store = Store(tmp_path / "store")
    layers, chosen = ollama_mlx_layers(hf, "mxfp4")
    name = "model.layers.1.self_attn.kv_b_proj.weight"
    assert chosen[name] == "mxfp4"
    config = assemble(store, _stored(store, layers), tmp_path / "out")
    assert not [k for k in config["quantization"] if "kv_b_proj" in k]
    assert "model.layers.1.mlp.switch_mlp.gate_proj" not in config["quantization"]  # the default type: mxfp4
    weights = mx.load(str(tmp_path / "out" / "model.safetensors"))
    assert "model.layers.1.self_attn.kv_b_proj.scales" not in weights
    src = mx.load(str(hf / "model.safetensors"))[name]
    group, bits, mode = QUANT["mxfp4"]
    want = mx.dequantize(
        *mx.quantize(src, group_size=group, bits=bits, mode=mode), group_size=group, bits=bits, mode=mode
    )
    assert weights[name].shape == src.shape and mx.array_equal(weights[name], want).item()
    assert weights["model.layers.1.mlp.switch_mlp.gate_proj.weight"].dtype == mx.uint32
    assert "model.layers.3.eh_proj.weight" in weights  # the MTP layer travels; mlx-lm drops it
    assert not list(tmp_path.glob(".dequantized-*"))  # the scratch files are gone


@pytest.mark.parametrize("model_type", ["glm4_moe_lite", "nemotron_h", "laguna"])
def test_admitted_by_name(model_type):
    from ..support import ollamamlx

    config = {"glm4_moe_lite": ollamamlx.GLM4_MOE_LITE_CONFIG, "nemotron_h": ollamamlx.NEMOTRON_H_CONFIG}.get(
        model_type, ollamamlx.LAGUNA_CONFIG
    )
    assert check_architecture(json.loads(json.dumps(config))) == model_type


def test_cohere2_moe_refused_by_name():
    with pytest.raises(ManageError) as e:
        check_architecture({"model_type": "cohere2_moe", "architectures": ["Cohere2MoeForCausalLM"]})
    assert e.value.status == 400 and '"cohere2_moe"' in str(e.value)
