"""The README's "Supported models" table is a claim about the code: every row is checked here.

GGUF column: the architecture is admitted by the importers and by the pull's pre-download check
(``check_gguf_architecture``), and a supported one is exercised by the GGUF import tests; a
"+ vision" row (the Ollama library's multimodal tags, vision tower in the same file) is imported
with a vision tensor added; "partial" (a decoder embedder) is imported with its pooling metadata.
`-mlx` column: a manifest of Ollama tensor layers for that architecture is pulled from a loopback
registry. Hugging Face column: mlx-lm's model class for the model_type (what ``mlxollama convert``
checks), or our encoder's model types, whose converted folders are labelled with the GGUF
architecture of the row. A claim the code does not back fails, and so does a refusal it does not make.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT

from mlxollama.convert.create import ManageError, check_gguf_architecture
from mlxollama.convert.gguf import (
    SUPPORTED_GGUF_ARCHITECTURES,
    UnsupportedGGUF,
    gguf_architecture_supported,
    import_gguf,
)
from mlxollama.convert.gguf_encoder import ENCODER_ARCHITECTURES, is_encoder_architecture
from mlxollama.convert.hf import UnsupportedCheckpoint, check_supported
from mlxollama.convert.hf_encoder import convert_sentence_transformers, is_decoder_embedder
from mlxollama.convert.registry import pull_registry
from mlxollama.engine.encoder import SUPPORTED_MODEL_TYPES, read_pooling
from mlxollama.store import ModelName, Store

from ..support import tinyhf as th
from ..support.fakeregistry import FakeRegistry
from ..support.ggufwriter import GGUF_ARCH, write_gguf
from ..support.ollamamlx import JSON, TENSOR, ollama_config, ollama_mlx_layers, serve, tiny_checkpoint
from ..support.tinybert import build_encoder_checkpoint

README = Path(__file__).resolve().parents[2] / "README.md"
STATUSES = ("supported", "refused", "partial")
# GGUF architectures whose import tests are not test_gguf_archs' per-model_type ones
OTHER_IMPORT_TESTS = {"gptoss"}  # test_gguf_archs.test_ollama_gptoss
OTHER_IMPORT_TESTS |= {"granitehybrid", "gemma3n"}  # test_gguf_hybrid.test_import_matches_source
OTHER_IMPORT_TESTS |= {"qwen35moe", "gemma4"}  # test_gguf_moe_hybrid.test_import_matches_source
# tiny checkpoints (tests/support/tinyhf.py) for the "+ vision" rows' text models
TINY_FOR_ARCH = {"gemma3": "gemma3", "mistral3": "ministral3", "llama4": "llama4"}


@dataclass(frozen=True)
class Row:
    family: str
    gguf_arch: str
    vision: bool  # the library's GGUF holds a vision tower next to the text model
    hf_type: str
    gguf: str
    mlx: str
    hf: str
    embedder: bool

    def __str__(self) -> str:
        return self.family


def _section() -> str:
    text = README.read_text(encoding="utf-8")
    assert "\n## Supported models\n" in text, "README has no 'Supported models' section"
    return text.split("\n## Supported models\n", 1)[1].split("\n## ", 1)[0]


def _status(cell: str, row: str) -> str:
    m = re.match(r"(\w+)", cell)
    assert m and m.group(1) in STATUSES, f"{row}: {cell!r} is not one of {STATUSES}"
    return m.group(1)


def _rows() -> list[Row]:
    rows, embedder = [], False
    for line in _section().splitlines():
        if not line.startswith("|") or set(line) <= set("|-: "):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] in ("Family", "*embedders*"):
            embedder = embedder or cells[0] == "*embedders*"
            continue
        assert len(cells) == 6, line
        family, arch, hf_type, g, m, h = cells
        vision = arch.endswith(" + vision")
        rows.append(
            Row(
                family,
                arch.removesuffix(" + vision"),
                vision,
                hf_type,
                _status(g, family),
                _status(m, family),
                _status(h, family),
                embedder,
            )
        )
    return rows


ROWS = _rows()


def test_table_counts_and_summary():
    decoders = [r for r in ROWS if not r.embedder and r.gguf == "supported"]
    embedders = [r for r in ROWS if r.embedder and r.gguf == "supported"]
    assert len(decoders) >= 25 and len(embedders) >= 5
    assert len({r.family for r in ROWS}) == len(ROWS), "a family is listed twice"
    m = re.search(r"Supported today: (\d+) chat/code families and (\d+) embedders from GGUF", _section())
    assert m, "the summary sentence under the table is missing"
    assert (int(m.group(1)), int(m.group(2))) == (len(decoders), len(embedders))
    hf_refused = sorted(r.family for r in ROWS if r.hf != "supported")
    assert f"every row but {', '.join(hf_refused)} from Hugging Face" in " ".join(_section().split())
    # every architecture the importers take is in the table
    claimed = {r.gguf_arch for r in ROWS if r.gguf == "supported"}
    assert set(SUPPORTED_GGUF_ARCHITECTURES) | set(ENCODER_ARCHITECTURES) <= claimed


def _admitted(arch: str) -> bool:
    """Both gates agree: the importers' and the pull's check before the weights download."""
    importable = gguf_architecture_supported(arch) or is_encoder_architecture(arch)
    try:
        check_gguf_architecture(arch)
        pull_admits = True
    except ManageError as e:
        assert e.status == 400 and f'"{arch}"' in str(e)
        pull_admits = False
    assert importable == pull_admits, arch
    return importable


def _copy_gguf(src: Path, dst: Path, *, extra_kv: dict | None = None, extra_tensors: dict | None = None) -> Path:
    """``src`` rewritten with more key/values (name -> (value, type)) and tensors (float32 arrays)."""
    reader = gguf.GGUFReader(str(src))
    w = gguf.GGUFWriter(str(dst), str(reader.fields["general.architecture"].contents()))
    for name, f in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        if f.types[0] == gguf.GGUFValueType.ARRAY:
            w.add_key_value(name, f.contents(), f.types[0], sub_type=f.types[-1])
        else:
            w.add_key_value(name, f.contents(), f.types[0])
    for name, (value, vtype) in (extra_kv or {}).items():
        w.add_key_value(name, value, vtype)
    for t in reader.tensors:
        w.add_tensor(
            t.name, np.asarray(t.data), raw_shape=list(reversed([int(x) for x in t.shape])), raw_dtype=t.tensor_type
        )
    for name, array in (extra_tensors or {}).items():
        w.add_tensor(name, array)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


def _tiny_gguf(tmp_path: Path, tiny_arch: str) -> Path:
    hf = th.build_hf_checkpoint(tmp_path / "hf", tiny_arch)
    path = tmp_path / "plain.gguf"
    write_gguf(hf, path, QT.F16)
    return path


@pytest.mark.parametrize("row", ROWS, ids=str)
def test_gguf_column(row, tmp_path):
    admitted = _admitted(row.gguf_arch)
    if row.vision:
        # The Ollama library writes the vision tower into the model's GGUF (v.*, mm.* tensors).
        assert admitted, f"{row}: the text architecture {row.gguf_arch!r} is not even admitted"
        path = _copy_gguf(
            _tiny_gguf(tmp_path, TINY_FOR_ARCH[row.gguf_arch]),
            tmp_path / "vision.gguf",
            extra_tensors={"v.patch_embd.weight": np.zeros((16, 32), np.float32)},
        )
        try:
            import_gguf(path, tmp_path / "out")
            imported = True
        except UnsupportedGGUF as e:
            assert "v.patch_embd" in str(e)
            imported = False
        assert imported == (row.gguf == "supported"), f"{row}: README says GGUF {row.gguf}"
    elif row.embedder and admitted and not is_encoder_architecture(row.gguf_arch):
        # A decoder embedder (Qwen3-Embedding, pooling_type last token): supported only if the
        # import carries that pooling; "partial" while it is served mean-pooled.
        assert row.gguf_arch == "qwen3", f"{row}: no tiny checkpoint to check it with"
        path = _copy_gguf(
            _tiny_gguf(tmp_path, "qwen3"),
            tmp_path / "embed.gguf",
            extra_kv={"qwen3.pooling_type": (3, gguf.GGUFValueType.UINT32)},
        )
        import_gguf(path, tmp_path / "out")
        info = json.loads((tmp_path / "out" / "model_info.json").read_text())
        assert info.get("qwen3.pooling_type") == 3  # served as an embedding model
        last_token = read_pooling(tmp_path / "out").mode == "lasttoken"
        assert row.gguf == ("supported" if last_token else "partial"), f"{row}: README says GGUF {row.gguf}"
    else:
        assert admitted == (row.gguf == "supported"), f"{row}: README says GGUF {row.gguf}"
        if admitted:  # and a test imports it: a tiny file of that architecture against its source
            assert row.gguf_arch in (
                ENCODER_ARCHITECTURES if row.embedder else set(GGUF_ARCH.values()) | OTHER_IMPORT_TESTS
            ), row


def _hf_supported(row: Row) -> bool:
    if row.embedder:
        return row.hf_type in SUPPORTED_MODEL_TYPES or is_decoder_embedder(row.hf_type)
    try:
        check_supported({"model_type": row.hf_type})
        return True
    except UnsupportedCheckpoint:
        return False


@pytest.mark.parametrize("row", ROWS, ids=str)
def test_hugging_face_column(row):
    assert _hf_supported(row) == (row.hf == "supported"), f"{row}: README says Hugging Face {row.hf}"


@pytest.mark.parametrize(
    "model_type",
    sorted({r.hf_type for r in ROWS if r.embedder and r.hf == "supported" and r.hf_type in SUPPORTED_MODEL_TYPES}),
)
def test_converted_encoders_carry_the_rows_architecture(model_type, tmp_path):
    """A sentence-transformers folder reports the general.architecture Ollama shows for the same model."""
    arches = {r.gguf_arch for r in ROWS if r.embedder and r.hf_type == model_type}
    hf = build_encoder_checkpoint(tmp_path / "hf", model_type, hidden=32, layers=1)
    result = convert_sentence_transformers(hf, tmp_path / "out")
    assert {result.architecture} == arches
    info = json.loads((tmp_path / "out" / "model_info.json").read_text())
    assert info["general.architecture"] == result.architecture
    assert f"{result.architecture}.block_count" in info


def _mlx_tag(hf_type: str, root: Path) -> list[tuple[str, str, bytes]]:
    """An Ollama `-mlx` tag of that model_type: a tiny checkpoint's where tests/support has one,
    else its config.json beside a tensor layer (enough for the refusal, which comes first)."""
    hf = tiny_checkpoint(hf_type, root / hf_type)
    if hf is not None:
        return ollama_mlx_layers(hf)[0]
    return [(JSON, "config.json", json.dumps({"model_type": hf_type}).encode()), (TENSOR, "x.weight", b"\0" * 64)]


@pytest.mark.e2e  # a loopback registry and a real conversion per model type: ~25 s, so not in the fast subset
def test_mlx_column(tmp_path):
    """Each row's Hugging Face model_type as an Ollama `-mlx` tag (tensor layers plus config.json),
    pulled from a loopback registry: "supported" when it converts, "refused" when the pull names
    the architecture before any tensor layer downloads; an embedder whose decoder converts is
    "partial" (the tag carries no pooling metadata)."""
    registry = FakeRegistry()
    store = Store(tmp_path / "store")

    async def pull(hf_type: str) -> bool:
        model = "x-" + re.sub(r"[^a-z0-9]+", "-", hf_type)
        manifest = serve(registry, f"library/{model}", "latest", _mlx_tag(hf_type, tmp_path), ollama_config())
        seen = len(registry.requests("GET"))  # tiny checkpoints share some blobs (norms of ones)
        try:
            await pull_registry(
                store,
                ModelName.parse(f"http://{registry.host}/library/{model}:latest"),
                insecure=True,
                emit=lambda _: None,
            )
        except ManageError as e:
            if e.status == 400 and str(e).startswith(f'unsupported model architecture "{hf_type}"'):
                tensors = [l["digest"] for l in manifest["layers"] if l["mediaType"] == TENSOR]
                gets = [r.path for r in registry.requests("GET")[seen:]]
                assert not [d for d in tensors if any(d in p for p in gets)], f"{hf_type}: refused after download"
                return False
            raise
        return True

    try:
        pulled = {t: asyncio.run(pull(t)) for t in sorted({r.hf_type for r in ROWS})}
    finally:
        registry.close()

    def expected(r: Row) -> str:
        if not pulled[r.hf_type]:
            return "refused"
        return "partial" if r.embedder else "supported"

    wrong = [f"{r} (README: {r.mlx}, code: {expected(r)})" for r in ROWS if expected(r) != r.mlx]
    assert not wrong, wrong
