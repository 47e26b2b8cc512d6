"""GGUF import of qwen3.5 MoE (``qwen35moe``) and gemma4 (``gemma4``): tiny random
Qwen3_5MoeForConditionalGeneration / Gemma4ForConditionalGeneration checkpoints
(tests/support/ollamamlx.py) written as GGUF with llama.cpp's converter rules
(tests/support/ggufmoehybrid.py), imported, loaded by mlx-lm and run in float32.

* exact: against the source run with the weights llama.cpp decodes from the file (F16, Q8_0,
  Q4_K; Q5_0 where a Q4_K row is too short), logits within 1e-4 of the largest (float32 sums in another order) and the same 8
  greedy tokens (KV caches, rotating windows, the KV-shared layers' borrowed caches); measured 0 to 1.6e-5.
  Q4_K_M's Q6_K tensors have no exact MLX form (requantized to 8 bits): there every imported
  weight is compared instead, the Q4_K ones bit for bit, the Q6_K ones within 8-bit rounding;
* against the original checkpoint (float32): F16 gives the top-1 token of every prompt position
  and logits within 1e-3 (measured max abs diff 1e-4 qwen3.5 MoE, 0 gemma4); the quantized
  types' own rounding is bounded by correlation (measured max abs diff / correlation: Q8_0
  1.33 / 0.9994 qwen3.5 MoE, 1.99 / 0.982 gemma4 MoE, 0.37 / 0.998 gemma4 dense; Q4_K 23.7 /
  0.85, 3.8 / 0.65, 2.9 / 0.78 -- random weights, logits up to 29 and 5; random tiny models have
  top-1 margins below Q8_0's noise, so their top-1 is compared against the decoded weights).
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import mlx.core as mx
import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT
from mlx.utils import tree_flatten
from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

from mlxollama.convert.gguf import UnsupportedGGUF, gguf_architecture_supported, import_gguf, set_quantized_param_dtype

from ..support import tinyhf as th
from ..support.ggufmoehybrid import MOE_HYBRID_ARCH, make_gemma4_k_eq_v, write_moe_hybrid_gguf, write_ollama_qwen35
from ..support.ollamamlx import build_gemma4, build_qwen3_5
from .test_gguf_tokenizer_corpus import TRAINING, _assert_same_ids, _rebuilt, _write_gpt2_gguf

BUILDERS = {
    "qwen3_5_moe": lambda d: build_qwen3_5(d, moe=True),
    "qwen3_5": lambda d: build_qwen3_5(d, moe=False),
    "gemma4": lambda d: build_gemma4(d, moe=True),
    "gemma4_dense": lambda d: build_gemma4(d, moe=False),
    # the 26B/31B attention: full layers' keys are their values, with their own K/V head count
    "gemma4_k_eq_v": lambda d: make_gemma4_k_eq_v(build_gemma4(d, moe=True)),
}
# the quantized types' correlation with the original's logits (measured values in the docstring)
MIN_CORR = {"Q8_0": 0.97, "Q4_K": 0.6, "Q4_K_M": 0.6}


def _load(model_dir: Path, weights: dict | None = None):
    """mlx-lm's model in float32; ``weights`` (Hugging Face names, float32) through its sanitize."""
    from mlx_lm.utils import load_model

    model, _ = load_model(Path(model_dir))
    if weights is not None:
        arrays = {k: mx.array(v, dtype=mx.float32) for k, v in weights.items()}
        model.load_weights(list(model.sanitize(arrays).items()), strict=True)
    set_quantized_param_dtype(model, mx.float32)
    return model


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """name -> (HF folder, original float32 logits on PROMPT), built once."""
    cache = {}

    def get(name: str):
        if name not in cache:
            d = BUILDERS[name](tmp_path_factory.mktemp(name))
            # every weight in float32 before any sanitize step (qwen3.5's 1 + w norms)
            cache[name] = d, th.logits(_load(d, th.load_hf_weights(d)), th.PROMPT)
        return cache[name]

    return get


def _import(tmp_path: Path, hf_dir: Path, qtype, **kw):
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "model.gguf"
    mix = qtype == "Q4_K_M"
    reference = write_moe_hybrid_gguf(hf_dir, path, QT.Q4_K if mix else qtype, mix=mix, **kw)
    info = import_gguf(path, tmp_path / "mlx")
    return info, tmp_path / "mlx", reference


def _check_exact(out: Path, hf_dir: Path, reference: dict) -> np.ndarray:
    model, ref = _load(out), _load(hf_dir, reference)
    got, want = th.logits(model, th.PROMPT), th.logits(ref, th.PROMPT)
    rel = float(np.abs(got - want).max() / np.abs(want).max())
    assert rel <= 1e-4, rel
    assert th.greedy(model, th.PROMPT) == th.greedy(ref, th.PROMPT)
    return got


def _dequantized_params(model, config: dict) -> dict[str, np.ndarray]:
    """Every weight of a loaded model as float32, quantized ones dequantized, named without
    the multimodal class's "language_model." prefix."""
    params = dict(tree_flatten(model.parameters()))
    quant = config.get("quantization") or {}
    out = {}
    for name, w in params.items():
        if name.endswith((".scales", ".biases")):
            continue
        module = name.removesuffix(".weight")
        if f"{module}.scales" in params:
            q = quant.get(module, quant)
            w = mx.dequantize(w, params[f"{module}.scales"], params.get(f"{module}.biases"), q["group_size"], q["bits"])
        out[name.removeprefix("language_model.")] = np.array(w.astype(mx.float32))
    return out


def _check_q4_k_m(out: Path, hf_dir: Path, reference: dict) -> np.ndarray:
    """Q4_K (and Q5_0) weights bit for bit, Q6_K ones within the 8-bit requantization's rounding
    (half a step of their 32-group's range)."""
    config = json.loads((out / "config.json").read_text())
    model = _load(out)
    got_w = _dequantized_params(model, config)
    want_w = _dequantized_params(_load(hf_dir, reference), {})
    assert got_w.keys() == want_w.keys()
    requantized = 0
    for name, want in want_w.items():
        got = got_w[name]
        module, quant = name.removesuffix(".weight"), config["quantization"]
        entry = quant.get(module) or quant.get(f"language_model.{module}") or {}
        if entry.get("bits") == 8:  # a Q6_K tensor
            groups = want.reshape(*want.shape[:-1], -1, 32)
            step = (groups.max(-1) - groups.min(-1)) / 255
            err = np.abs(got - want).reshape(groups.shape).max(-1)
            assert (err <= step * 0.51 + 1e-3 * np.abs(groups).max(-1)).all(), name
            requantized += 1
        else:
            assert np.array_equal(got, want), name
    assert requantized, "no Q6_K tensor in the Q4_K_M mix"
    return th.logits(model, th.PROMPT)


@pytest.mark.e2e  # the per-architecture conversion matrix (~0.5 s a case): whole suite only, not the fast subset
@pytest.mark.parametrize("qtype", [QT.F16, QT.Q8_0, QT.Q4_K, "Q4_K_M"], ids=lambda q: getattr(q, "name", q))
@pytest.mark.parametrize("name", ["qwen3_5_moe", "gemma4", "gemma4_dense"])
def test_import_matches_source(tmp_path, checkpoints, name, qtype):
    hf_dir, src_logits = checkpoints(name)
    info, out, reference = _import(tmp_path, hf_dir, qtype)
    mt = json.loads((hf_dir / "config.json").read_text())["model_type"]
    assert info.architecture == MOE_HYBRID_ARCH[mt]
    assert json.loads((out / "config.json").read_text())["model_type"] == {"gemma4": "gemma4_text"}.get(mt, mt)
    label = getattr(qtype, "name", qtype)
    got = _check_q4_k_m(out, hf_dir, reference) if label == "Q4_K_M" else _check_exact(out, hf_dir, reference)
    diff = float(np.abs(got - src_logits).max())
    if label == "F16":
        assert (got.argmax(-1) == src_logits.argmax(-1)).all(), "F16: top-1 differs from the original"
        assert diff <= 1e-3, f"F16: max abs logit diff {diff} to the original"
    else:
        corr = np.corrcoef(got.ravel(), src_logits.ravel())[0, 1]
        assert corr > MIN_CORR[label], (
            f"{label}: correlation {corr:.4f} (max abs logit diff {diff:.3f}) to the original"
        )


@pytest.mark.parametrize("qtype", [QT.F16, QT.Q8_0], ids=lambda q: q.name)
def test_qwen35moe_fused_gate_up_experts(tmp_path, checkpoints, qtype):
    """--fuse-gate-up-exps files: one ffn_gate_up_exps per layer, split exactly (quantized rows moved)."""
    hf_dir, _ = checkpoints("qwen3_5_moe")
    info, out, reference = _import(tmp_path, hf_dir, qtype, fused_gate_up=True)
    names = [t.name for t in gguf.GGUFReader(str(tmp_path / "model.gguf")).tensors]
    assert "blk.0.ffn_gate_up_exps.weight" in names and "blk.0.ffn_gate_exps.weight" not in names
    _check_exact(out, hf_dir, reference)


@pytest.mark.parametrize("qtype", [QT.F16, QT.Q8_0], ids=lambda q: q.name)
@pytest.mark.parametrize("name", ["qwen3_5", "qwen3_5_moe"])
def test_ollama_qwen35_layout(tmp_path, checkpoints, name, qtype):
    """qwen3.5, dense and MoE, as Ollama's own converter writes it (fused ssm_ba, value heads in
    Hugging Face's order, per-layer K/V heads, its key names): read by the entries' Ollama
    variant, exact against the decoded weights, F16's top-1 the original's at every position."""
    hf_dir, src_logits = checkpoints(name)
    path = tmp_path / "model.gguf"
    reference = write_ollama_qwen35(hf_dir, path, qtype)
    names = [t.name for t in gguf.GGUFReader(str(path)).tensors]
    assert "blk.0.ssm_ba.weight" in names and "blk.0.ssm_dt" in names
    info = import_gguf(path, tmp_path / "mlx")
    assert info.architecture == ("qwen35moe" if name == "qwen3_5_moe" else "qwen35")
    cfg = json.loads((tmp_path / "mlx" / "config.json").read_text())
    assert cfg["full_attention_interval"] == 4 and cfg["num_key_value_heads"] == 2
    got = _check_exact(tmp_path / "mlx", hf_dir, reference)
    if qtype == QT.F16:
        assert (got.argmax(-1) == src_logits.argmax(-1)).all()
        assert float(np.abs(got - src_logits).max()) <= 1e-3


def test_config_details(tmp_path, checkpoints):
    """What the GGUF says per layer (kinds, head sizes, K/V heads, MLP widths, rope) lands on
    gemma4_text's fields; qwen35moe's experts and shared expert on qwen3_5_moe's."""
    hf_dir, _ = checkpoints("gemma4")
    src = json.loads((hf_dir / "config.json").read_text())["text_config"]
    _, out, _ = _import(tmp_path / "g", hf_dir, QT.F16)
    cfg = json.loads((out / "config.json").read_text())
    for key in (
        "layer_types",
        "head_dim",
        "global_head_dim",
        "num_key_value_heads",
        "num_kv_shared_layers",
        "hidden_size_per_layer_input",
        "sliding_window",
        "final_logit_softcapping",
        "use_double_wide_mlp",
        "enable_moe_block",
        "num_experts",
        "top_k_experts",
        "moe_intermediate_size",
        "intermediate_size",
    ):
        assert cfg[key] == src[key], key
    assert cfg["rope_parameters"]["full_attention"] == {**src["rope_parameters"]["full_attention"]}
    assert cfg["rope_parameters"]["sliding_attention"] == src["rope_parameters"]["sliding_attention"]
    assert cfg["attention_k_eq_v"] is False and cfg["tie_word_embeddings"] is True
    names = [t.name for t in gguf.GGUFReader(str(tmp_path / "g" / "model.gguf")).tensors]
    assert "blk.3.attn_k.weight" in names  # the KV-shared layer's own projections: left out

    hf_dir, _ = checkpoints("qwen3_5_moe")
    src = json.loads((hf_dir / "config.json").read_text())["text_config"]
    _, out, _ = _import(tmp_path / "q", hf_dir, QT.F16)
    cfg = json.loads((out / "config.json").read_text())
    for key in ("num_experts", "num_experts_per_tok", "moe_intermediate_size", "shared_expert_intermediate_size"):
        assert cfg[key] == src[key], key
    assert cfg["norm_topk_prob"] is True


@pytest.mark.parametrize("qtype", [QT.F16, QT.Q8_0], ids=lambda q: q.name)
def test_gemma4_keys_as_values(tmp_path, checkpoints, qtype):
    """gemma4's 26B/31B full layers (no attn_v, their own K/V head count in the per-layer
    head_count_kv): attention_k_eq_v and num_global_key_value_heads come back from the file."""
    hf_dir, src_logits = checkpoints("gemma4_k_eq_v")
    _, out, reference = _import(tmp_path, hf_dir, qtype)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["attention_k_eq_v"] is True
    assert (cfg["num_key_value_heads"], cfg["num_global_key_value_heads"]) == (2, 1)
    names = [t.name for t in gguf.GGUFReader(str(tmp_path / "model.gguf")).tensors]
    assert "blk.1.attn_v.weight" not in names and "blk.0.attn_v.weight" in names
    _check_exact(out, hf_dir, reference)


def test_gemma4_towers_in_the_file_are_left_out(tmp_path, checkpoints):
    """Ollama's gemma4 tags keep the vision tower (v.*), its projector (mm.*) and the audio tower
    (a.*, mm.a.*) in the model's GGUF: the text model is imported as from a text-only file."""
    hf_dir, _ = checkpoints("gemma4")
    _, plain, _ = _import(tmp_path / "plain", hf_dir, QT.F16)
    extra = {
        "v.blk.0.attn_q.weight": np.ones((64, 64), np.float32),
        "v.clamp_data": np.ones(32, np.float32),
        "mm.input_projection.weight": np.ones((256, 64), np.float32),
        "a.blk.0.attn_q.weight": np.ones((64, 64), np.float32),
        "mm.a.fc.weight": np.ones((256, 64), np.float32),
    }
    path = _rewrite(tmp_path / "plain" / "model.gguf", tmp_path / "towers.gguf", {}, extra)
    import_gguf(path, tmp_path / "out")
    got, want = (th.logits(_load(d), th.PROMPT) for d in (tmp_path / "out", plain))
    assert np.array_equal(got, want)


def test_architectures_admitted():
    assert gguf_architecture_supported("qwen35moe") and gguf_architecture_supported("gemma4")


def _rewrite(src: Path, dst: Path, kv: dict, tensors: dict | None = None) -> Path:
    """``src`` with key/values replaced (name -> (value, type[, item type])) or dropped (None), tensors added."""
    reader = gguf.GGUFReader(str(src))
    w = gguf.GGUFWriter(str(dst), "gemma4")
    for name, f in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture" or name in kv:
            continue
        if f.types[0] == gguf.GGUFValueType.ARRAY:
            w.add_key_value(name, f.contents(), f.types[0], sub_type=f.types[-1])
        else:
            w.add_key_value(name, f.contents(), f.types[0])
    for name, value in kv.items():
        if value is not None:
            w.add_key_value(name, value[0], value[1], sub_type=value[2] if len(value) > 2 else None)
    for t in reader.tensors:
        w.add_tensor(t.name, np.asarray(t.data), raw_shape=[int(x) for x in reversed(t.shape)], raw_dtype=t.tensor_type)
    for name, array in (tensors or {}).items():
        w.add_tensor(name, array)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


@pytest.mark.parametrize(
    "kv,message",
    [
        ({"gemma4.attention.sliding_window_pattern": None}, "sliding_window_pattern"),
        ({"gemma4.rope.dimension_count_swa": (32, gguf.GGUFValueType.UINT32)}, "partial rotary"),
        (
            {
                "gemma4.feed_forward_length": (
                    [512, 640, 512, 1024],
                    gguf.GGUFValueType.ARRAY,
                    gguf.GGUFValueType.UINT32,
                )
            },
            "MLP widths",
        ),
    ],
    ids=["no-layer-pattern", "partial-sliding-rope", "uneven-mlp"],
)
def test_gemma4_layouts_mlx_lm_lacks_are_refused(tmp_path, checkpoints, kv, message):
    hf_dir, _ = checkpoints("gemma4_dense")
    write_moe_hybrid_gguf(hf_dir, tmp_path / "a.gguf", QT.F16)
    path = _rewrite(tmp_path / "a.gguf", tmp_path / "b.gguf", kv)
    with pytest.raises(UnsupportedGGUF, match=message):
        import_gguf(path, tmp_path / "out")


def _gemma4_original(out: Path) -> Path:
    """A Gemma-4-style Hugging Face tokenizer: BPE over raw characters (no byte map) with byte
    fallback to <0xXX> pieces, spaces as \u2581 (no prefix), newline runs kept apart, BOS first,
    its turn markers special; trained here on the multilingual corpus."""

    def pipeline(tok):
        tok.normalizer = normalizers.Replace(" ", "\u2581")
        tok.pre_tokenizer = pre_tokenizers.Split(Regex("[^\\n]+|[\\n]+"), behavior="isolated")
        return tok

    trained = pipeline(Tokenizer(models.BPE()))
    trained.train_from_iterator(TRAINING, trainers.BpeTrainer(vocab_size=900, show_progress=False))
    model = json.loads(trained.to_str())["model"]
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<|turn>", "<turn|>"]
    pieces = specials + [f"<0x{b:02X}>" for b in range(256)]
    pieces += [p for p, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1]) if p not in pieces]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in model["merges"]]
    tok = pipeline(Tokenizer(models.BPE({p: i for i, p in enumerate(pieces)}, merges, byte_fallback=True)))
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    out.mkdir(parents=True)
    tok.save(str(out / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<bos>", "eos_token": "<eos>"}
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    return out


@pytest.mark.parametrize("model", ["gemma4", "llama"], ids=["llama.cpp", "ollama"])
def test_gemma4_tokenizer(tmp_path, model):
    """tokenizer.ggml.model "gemma4" as Gemma4Model.set_vocab writes it (pieces in id order,
    <0xXX> pieces BYTE, specials CONTROL, merges, add_space_prefix false, add_bos true) rebuilt by
    the importer gives the original's ids on the multilingual / code / emoji corpus (unseen
    characters through byte fallback); so does Ollama's converter's spelling of the same
    vocabulary (model "llama", pre-tokenizer "gemma4", with the merges)."""
    from transformers import AutoTokenizer

    hf = _gemma4_original(tmp_path / "hf")
    tj = json.loads((hf / "tokenizer.json").read_text())
    vocab = tj["model"]["vocab"]
    specials = {t["content"] for t in tj["added_tokens"]}
    pieces = [p for p, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    types = [
        gguf.TokenType.CONTROL
        if p in specials
        else gguf.TokenType.BYTE
        if p.startswith("<0x")
        else gguf.TokenType.NORMAL
        for p in pieces
    ]
    w = gguf.GGUFWriter(str(tmp_path / "t.gguf"), "gemma4")
    w.add_tokenizer_model(model)
    if model == "llama":
        w.add_tokenizer_pre("gemma4")
    w.add_token_list(pieces)
    w.add_token_scores([-1000.0] * len(pieces))
    w.add_token_types(types)
    gguf.SpecialVocab(hf, load_merges=True, n_vocab=len(pieces)).add_to_gguf(w, quiet=True)
    w.add_add_space_prefix(False)
    w.add_add_bos_token(True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    original = AutoTokenizer.from_pretrained(str(hf))
    rebuilt = _rebuilt(tmp_path / "t.gguf", tmp_path / "ours")
    _assert_same_ids(rebuilt, original.encode, "gemma4")
    text = "<|turn>user\nhi there<turn|>\n"
    assert rebuilt.encode(text) == original.encode(text)
    assert rebuilt.decode(original.encode("Grüße 🦜 ok")[1:]) == "Grüße 🦜 ok"


def test_qwen35_pre_tokenizer(tmp_path):
    """tokenizer.ggml.pre "qwen35" (qwen3.5's files, dense and MoE): Qwen2's split with combining
    marks kept in words, after NFC, as Qwen's tokenizer.json does; the decomposed line of the
    corpus is where it differs from qwen2's."""
    from transformers import AutoTokenizer

    split = (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
        r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    )
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=700,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TRAINING, trainer)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    hf = tmp_path / "hf"
    hf.mkdir()
    tok.save(str(hf / "tokenizer.json"))
    (hf / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
    _write_gpt2_gguf(hf, tmp_path / "t.gguf", "qwen35")
    _assert_same_ids(
        _rebuilt(tmp_path / "t.gguf", tmp_path / "ours"), AutoTokenizer.from_pretrained(str(hf)).encode, "qwen35"
    )
