"""EmbeddingGemma into the folder engine/encoder_gemma.py runs, from a sentence-transformers
folder (google/embeddinggemma-300m) or from a GGUF.

GGUF spellings: llama.cpp's ``gemma-embedding`` (convert_hf_to_gguf.py EmbeddingGemma: the
Dense heads as ``dense_2`` / ``dense_3``, weights only, their sizes in
``{arch}.dense_2_feat_in`` ...; the sliding window as config.json stores it, 512;
``pooling_type`` from the Pooling module) and Ollama's (``gemma3`` with a
``gemma3.pooling_type``, the heads as ``dense.0`` / ``dense.1``). Both converters add 1 to
every Gemma norm weight and drop the padded vocabulary rows; the import takes the 1 back
off (mlx-lm's Gemma norms apply 1 + w) and sizes the vocabulary from token_embd.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Mapping

import gguf
import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from ..engine.encoder import POOLING_MODES, PoolingConfig, UnsupportedEncoder, _pooling_mode
from ..engine.encoder_gemma import (
    DENSE_ACTIVATIONS,
    DenseHead,
    GemmaEmbeddingConfig,
    GemmaEncoder,
    check_gemma_weights,
    read_gemma_max_length,
)

# general.architecture values that hold an EmbeddingGemma
GGUF_ARCHITECTURES = ("gemma-embedding",)
_PLAIN_FILES = (
    "tokenizer_config.json",
    "special_tokens_map.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",  # its prompts are not applied (Ollama does not)
)


# --------------------------------------------------------------------------- sentence-transformers


def read_modules(src_dir: Path) -> tuple[PoolingConfig, list[tuple[DenseHead, Path]]]:
    """Pooling, Dense heads (with their folders) and Normalize from modules.json, in order:
    Transformer -> Pooling -> Dense* -> Normalize?; anything else is refused by name."""
    modules_path = src_dir / "modules.json"
    if not modules_path.is_file():
        return PoolingConfig("mean", False), []
    mode, normalize, dense = None, False, []
    for m in json.loads(modules_path.read_text()):
        kind = str(m.get("type", "")).rsplit(".", 1)[-1]
        path = src_dir / str(m.get("path") or "")
        if kind == "Transformer":
            continue
        if kind == "Pooling" and mode is None:
            mode = _pooling_mode(path / "config.json")
        elif kind == "Dense" and mode is not None and not normalize:
            if not (path / "config.json").is_file():
                raise UnsupportedEncoder(f"Dense module {m.get('path')!r} has no config.json")
            cfg = json.loads((path / "config.json").read_text())
            act = DENSE_ACTIVATIONS.get(str(cfg.get("activation_function", "torch.nn.modules.activation.Tanh")))
            if act is None:
                raise UnsupportedEncoder(f"unsupported Dense activation {cfg.get('activation_function')!r}")
            if not (path / "model.safetensors").is_file():
                raise UnsupportedEncoder(f"Dense module {m.get('path')!r} has no model.safetensors")
            head = DenseHead(int(cfg["in_features"]), int(cfg["out_features"]), bool(cfg.get("bias", True)), act)
            dense.append((head, path))
        elif kind == "Normalize" and mode is not None:
            normalize = True
        else:
            raise UnsupportedEncoder(f"unsupported sentence-transformers module {m.get('type')!r} in modules.json")
    mode = mode or "mean"
    if mode not in POOLING_MODES:
        raise UnsupportedEncoder(f"unsupported pooling mode {mode!r}")
    return PoolingConfig(mode, normalize), dense


def _tokenizer_json(src_dir: Path) -> str:
    """tokenizer.json with BOS/EOS added as tokenizer_config.json asks: Gemma's fast tokenizer
    rebuilds its post-processor from add_bos_token / add_eos_token when loaded, so the file's
    own template is not what sentence-transformers runs."""
    raw = json.loads((src_dir / "tokenizer.json").read_text())
    tc_path = src_dir / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text()) if tc_path.is_file() else {}
    if "add_bos_token" not in tc and "add_eos_token" not in tc:
        return json.dumps(raw, ensure_ascii=False)

    def token(name: str) -> str | None:
        t = tc.get(name)
        return t.get("content") if isinstance(t, dict) else t

    ids = {t["content"]: t["id"] for t in raw.get("added_tokens", [])}
    ids.update(raw.get("model", {}).get("vocab", {}) if isinstance(raw.get("model", {}).get("vocab"), dict) else {})
    bos, eos = token("bos_token"), token("eos_token")
    add_bos = bool(tc.get("add_bos_token", True)) and bos in ids
    add_eos = bool(tc.get("add_eos_token", False)) and eos in ids
    single = ([f"{bos}:0"] if add_bos else []) + ["$A:0"] + ([f"{eos}:0"] if add_eos else [])
    pair = single + ([f"{bos}:1"] if add_bos else []) + ["$B:1"] + ([f"{eos}:1"] if add_eos else [])
    specials = {}
    for flag, tok in ((add_bos, bos), (add_eos, eos)):
        if flag:
            specials[tok] = {"id": tok, "ids": [ids[tok]], "tokens": [tok]}

    def piece(item: str) -> dict:
        name, type_id = item.rsplit(":", 1)
        if name in ("$A", "$B"):
            return {"Sequence": {"id": name[1], "type_id": int(type_id)}}
        return {"SpecialToken": {"id": name, "type_id": int(type_id)}}

    raw["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [piece(x) for x in single],
        "pair": [piece(x) for x in pair],
        "special_tokens": specials,
    }
    return json.dumps(raw, ensure_ascii=False)


def _strip_prefix(name: str) -> str:
    return name[len("model.") :] if name.startswith("model.") else name


def convert_gemma_folder(src_dir: Path, out_dir: Path):
    """A sentence-transformers EmbeddingGemma folder -> our folder. Returns hf_encoder.EncoderImport."""
    from .hf_encoder import EncoderImport, EncoderImportError

    raw = json.loads((src_dir / "config.json").read_text())
    try:
        cfg = GemmaEmbeddingConfig.from_dict(raw)
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, UnsupportedEncoder):
            raise
        raise EncoderImportError(f"{src_dir}: malformed model configuration ({e!r})") from e
    pooling, dense = read_modules(src_dir)
    weights: dict[str, mx.array] = {}
    for f in sorted(src_dir.glob("*.safetensors")):
        weights.update({_strip_prefix(k): v for k, v in mx.load(str(f)).items()})
    weights.pop("lm_head.weight", None)  # a tied copy some exports carry
    for i, (head, path) in enumerate(dense):
        for k, v in mx.load(str(path / "model.safetensors")).items():
            weights[f"dense.{i}.{k}"] = v  # sentence-transformers names them linear.weight / linear.bias
    heads = [h for h, _ in dense]
    module = GemmaEncoder(cfg, heads)
    try:
        check_gemma_weights(module, weights)
    except UnsupportedEncoder:
        raise
    except ValueError as e:
        raise EncoderImportError(f"{src_dir}: {e}") from e
    target = mx.float16 if {v.dtype for v in weights.values()} == {mx.float16} else mx.float32
    weights = {k: v.astype(target) for k, v in weights.items()}
    file_type = "F16" if target == mx.float16 else "F32"

    out_dir.mkdir(parents=True, exist_ok=True)
    files = _write_common(out_dir, raw, weights, heads, pooling)
    (out_dir / "tokenizer.json").write_text(_tokenizer_json(src_dir))
    files.append("tokenizer.json")
    for name in _PLAIN_FILES:
        if (src_dir / name).is_file():
            shutil.copyfile(src_dir / name, out_dir / name)
            files.append(name)
    parameter_count = int(sum(v.size for v in weights.values()))
    info = _model_info(cfg, heads, pooling, parameter_count, file_type)
    (out_dir / "model_info.json").write_text(json.dumps(info, indent=2) + "\n")
    files.append("model_info.json")
    return EncoderImport(
        architecture="gemma3",
        parameter_count=parameter_count,
        context_length=cfg.max_position_embeddings,
        embedding_length=heads[-1].out_features if heads else cfg.hidden_size,
        file_type=file_type,
        files=files,
        max_length=read_gemma_max_length(src_dir, cfg),
        pooling=pooling.mode,
        normalize=pooling.normalize,
        model_info=info,
    )


def _write_common(
    out_dir: Path, config: dict, weights: dict[str, mx.array], heads: list[DenseHead], pooling: PoolingConfig
) -> list[str]:
    for stale in out_dir.glob("*.safetensors"):
        stale.unlink()
    mx.save_safetensors(str(out_dir / "model.safetensors"), weights, metadata={"format": "mlx"})
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out_dir / "dense.json").write_text(json.dumps([h.as_dict() for h in heads], indent=2) + "\n")
    (out_dir / "pooling.json").write_text(json.dumps({"mode": pooling.mode, "normalize": pooling.normalize}) + "\n")
    return ["model.safetensors", "config.json", "dense.json", "pooling.json"]


def _model_info(
    cfg: GemmaEmbeddingConfig, heads: list[DenseHead], pooling: PoolingConfig, parameter_count: int, file_type: str
) -> dict[str, Any]:
    """What Ollama's /api/show reports for its embeddinggemma (arch gemma3 with a pooling type)."""
    arch = "gemma3"
    return {
        "general.architecture": arch,
        "general.file_type": 1 if file_type == "F16" else 0,
        "general.parameter_count": parameter_count,
        f"{arch}.attention.head_count": cfg.num_attention_heads,
        f"{arch}.attention.head_count_kv": cfg.num_key_value_heads,
        f"{arch}.attention.key_length": cfg.head_dim,
        f"{arch}.attention.value_length": cfg.head_dim,
        f"{arch}.attention.layer_norm_rms_epsilon": cfg.rms_norm_eps,
        f"{arch}.attention.sliding_window": cfg.sliding_window,
        f"{arch}.block_count": cfg.num_hidden_layers,
        f"{arch}.context_length": cfg.max_position_embeddings,
        f"{arch}.embedding_length": cfg.hidden_size,
        f"{arch}.feed_forward_length": cfg.intermediate_size,
        f"{arch}.pooling_type": pooling.ollama_pooling_type,
        f"{arch}.rope.freq_base": cfg.rope_theta,
        f"{arch}.rope.local.freq_base": cfg.rope_local_base_freq,
    }


# --------------------------------------------------------------------------- GGUF


def is_gemma_embedding_gguf(meta_arch: str, pooling_type: Any) -> bool:
    """llama.cpp's gemma-embedding, or Ollama's gemma3 with a pooling type (its embeddinggemma)."""
    return meta_arch in GGUF_ARCHITECTURES or (meta_arch == "gemma3" and pooling_type is not None)


def _layer_types(meta: Mapping[str, Any], arch: str, layers: int) -> list[str]:
    pattern = meta.get(f"{arch}.attention.sliding_window_pattern")
    if isinstance(pattern, list) and len(pattern) == layers:  # Ollama: one bool per layer, true = sliding
        return ["sliding_attention" if p else "full_attention" for p in pattern]
    period = int(pattern) if isinstance(pattern, (int, np.integer)) and int(pattern) > 0 else 6  # llama.cpp: 6
    return ["full_attention" if (i + 1) % period == 0 else "sliding_attention" for i in range(layers)]


def gguf_config(arch: str, meta: Mapping[str, Any], vocab: int) -> dict[str, Any]:
    def need(key: str) -> Any:
        v = meta.get(f"{arch}.{key}")
        if v is None:
            raise UnsupportedEncoder(f"{arch}: metadata {arch}.{key} is missing")
        return v

    layers = int(need("block_count"))
    heads = int(need("attention.head_count"))
    hidden = int(need("embedding_length"))
    head_dim = int(meta.get(f"{arch}.attention.key_length") or hidden // heads)
    eps = float(str(np.float32(meta.get(f"{arch}.attention.layer_norm_rms_epsilon", 1e-6))))
    return {
        "architectures": ["Gemma3TextModel"],
        "model_type": "gemma3_text",
        "use_bidirectional_attention": True,
        "hidden_activation": "gelu_pytorch_tanh",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "intermediate_size": int(need("feed_forward_length")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(meta.get(f"{arch}.attention.head_count_kv") or heads),
        "head_dim": head_dim,
        # llama.cpp scales queries by 1/sqrt(head_dim) (EmbeddingGemma's query_pre_attn_scalar)
        "query_pre_attn_scalar": head_dim,
        "rms_norm_eps": eps,
        "rope_theta": float(meta.get(f"{arch}.rope.freq_base", 1_000_000.0)),
        "rope_local_base_freq": float(meta.get(f"{arch}.rope.local.freq_base", 10_000.0)),
        "sliding_window": int(meta.get(f"{arch}.attention.sliding_window") or 512),
        "layer_types": _layer_types(meta, arch, layers),
        "max_position_embeddings": int(meta.get(f"{arch}.context_length") or 2048),
        "pad_token_id": int(meta.get("tokenizer.ggml.padding_token_id") or 0),
        "attn_logit_softcapping": None,
        "final_logit_softcapping": None,
    }


def _gguf_names(arch_name: str, layers: int, ours: list[str]) -> dict[str, str]:
    """Our parameter name -> GGUF tensor name, through gguf-py's TensorNameMap (the table
    llama.cpp's converter names tensors with), the Dense heads as either converter spells them."""
    names = gguf.TensorNameMap(gguf.MODEL_ARCH.GEMMA_EMBEDDING, layers)
    out: dict[str, str] = {}
    for name in ours:
        if name.startswith("dense."):
            continue
        g = names.get_name(f"model.{name}", try_suffixes=(".weight", ".bias"))
        if g is None:
            raise UnsupportedEncoder(f"{arch_name}: no GGUF name for {name}")
        out[name] = g
    return out


def import_gemma_gguf(reader: gguf.GGUFReader, meta: Mapping[str, Any], out: Path, tensor_array, write_safetensors):
    """``reader`` (a gemma-embedding / gemma3-with-pooling GGUF) -> our folder at ``out``.
    Returns (config dict, dense heads, pooling, parameter count). ``tensor_array`` decodes one
    GGUF tensor to numpy in HF shape; ``write_safetensors`` streams (name, shape, dtype, producer)."""
    arch = str(meta.get("general.architecture", ""))
    tensors = {t.name: t for t in reader.tensors}
    embd = tensors.get("token_embd.weight")
    if embd is None:
        raise UnsupportedEncoder(f"{arch}: tensor token_embd.weight is missing")
    config = gguf_config(arch, meta, int(embd.shape[-1]))
    cfg = GemmaEmbeddingConfig.from_dict(config)
    kind = meta.get(f"{arch}.pooling_type")
    mode = {1: "mean", 2: "cls", 3: "lasttoken"}.get(int(kind) if kind is not None else 1)
    if mode is None:
        raise UnsupportedEncoder(f"{arch}: pooling_type {kind} is not supported")

    # Dense heads: llama.cpp's dense_2 / dense_3, Ollama's dense.0 / dense.1 (weights [out, in])
    spellings = [("dense_2", "dense_3"), ("dense.0", "dense.1")]
    head_names = next(
        ([n for n in s if f"{n}.weight" in tensors] for s in spellings if f"{s[0]}.weight" in tensors), []
    )
    heads = []
    for n in head_names:
        rows, cols = (int(x) for x in reversed(tensors[f"{n}.weight"].shape))
        heads.append(
            DenseHead(cols, rows, f"{n}.bias" in tensors, "identity")
        )  # llama.cpp runs them without activation

    module = GemmaEncoder(cfg, heads)
    expected = {k: tuple(v.shape) for k, v in tree_flatten(module.parameters())}
    to_gguf = _gguf_names(arch, cfg.num_hidden_layers, list(expected))
    for i, n in enumerate(head_names):
        to_gguf[f"dense.{i}.linear.weight"] = f"{n}.weight"
        if heads[i].bias:
            to_gguf[f"dense.{i}.linear.bias"] = f"{n}.bias"
    used = set(to_gguf.values())
    unknown = sorted(set(tensors) - used - {"output.weight"})  # a tied output copy is not needed
    if unknown:
        raise UnsupportedEncoder(f"{arch}: tensor {unknown[0]} has no place in the encoder")

    plan = []
    for name, shape in expected.items():
        t = tensors.get(to_gguf[name])
        if t is None:
            raise UnsupportedEncoder(f"{arch}: the file lacks tensor {to_gguf[name]}")
        if int(np.prod(shape)) != int(t.n_elements):
            stored = [int(x) for x in reversed(t.shape)]
            raise UnsupportedEncoder(f"{arch}: tensor {t.name} has shape {stored}, the encoder expects {list(shape)}")
        plan.append((name, t, shape))

    def produce(name: str, t: Any, shape: tuple[int, ...]):
        def run() -> np.ndarray:
            w = tensor_array(t).astype(np.float32).reshape(shape)
            # both converters stored 1 + w for Gemma's norms; mlx-lm's RMSNorm adds the 1 itself
            return w - 1.0 if name.endswith("norm.weight") else w

        return run

    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.safetensors"):
        stale.unlink()
    write_safetensors(out / "model.safetensors", [(n, s, "F32", produce(n, t, s)) for n, t, s in plan])
    # Ollama's gemma3 embedder always L2-normalises; llama.cpp's pooled output is normalised by its server
    pooling = PoolingConfig(mode, True)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "dense.json").write_text(json.dumps([h.as_dict() for h in heads], indent=2) + "\n")
    (out / "pooling.json").write_text(json.dumps({"mode": pooling.mode, "normalize": pooling.normalize}) + "\n")
    parameter_count = sum(int(t.n_elements) for t in reader.tensors if t.name != "output.weight")
    return config, heads, pooling, parameter_count
