"""Tiny random-weight models in Hugging Face / MLX layout, built in milliseconds for protocol tests."""

from __future__ import annotations

import json
from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_CORPUS = [
    "The quick brown fox jumps over the lazy dog. Why is the sky blue? Paris is the capital of France.",
    "Hello world! 12345 67890. Ünïcödé text, emoji 🙂 and CJK 你好 in one line.",
    "def add(a, b):\n    return a + b\n\nprint(add(1, 2))",
] * 20


def build_tokenizer(out: Path, vocab_size: int = 384) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": None,
                "eos_token": "<|im_end|>",
                "pad_token": "<|endoftext|>",
                "unk_token": None,
                "chat_template": CHATML_TEMPLATE,
                "model_max_length": 2048,
            }
        )
    )
    (out / "special_tokens_map.json").write_text(json.dumps({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}))


def build_tiny_llama(out: Path, *, seed: int = 0, hidden: int = 64, layers: int = 2, context: int = 2048) -> Path:
    """A llama-architecture MLX model with random weights that never emits EOS on its own."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models import llama

    out.mkdir(parents=True, exist_ok=True)
    build_tokenizer(out)
    vocab = json.loads((out / "tokenizer.json").read_text())["model"]["vocab"]
    vocab_size = max(vocab.values()) + 1
    config = {
        "model_type": "llama",
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "intermediate_size": hidden * 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5,
        "vocab_size": vocab_size,
        "rope_theta": 10000.0,
        "max_position_embeddings": context,
        # Untied: a random output projection makes greedy output depend on the whole prompt
        # instead of echoing the largest embedding.
        "tie_word_embeddings": False,
        "eos_token_id": vocab["<|im_end|>"],
    }
    mx.random.seed(seed)
    model = llama.Model(llama.ModelArgs.from_dict(config))
    weights = dict(tree_flatten(model.parameters()))
    # A zero output row gives the end token logit 0 while others spread both ways, so greedy
    # decoding does not stop early and num_predict / stop tests are in control.
    eos = vocab["<|im_end|>"]
    mask = mx.ones((vocab_size, 1)).at[eos].multiply(0.0)
    head = mx.random.normal((vocab_size, hidden)) * 0.5
    weights["lm_head.weight"] = head * mask
    weights = {k: v.astype(mx.float16) for k, v in weights.items()}
    mx.save_safetensors(str(out / "model.safetensors"), weights)
    (out / "config.json").write_text(json.dumps(config))
    (out / "model_info.json").write_text(
        json.dumps(
            {
                "general.architecture": "llama",
                "general.parameter_count": sum(int(v.size) for v in weights.values()),
                "llama.context_length": context,
                "llama.embedding_length": hidden,
                "llama.block_count": layers,
            }
        )
    )
    return out
