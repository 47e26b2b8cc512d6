"""Pulls of `hf.co/ORG/REPO[:TAG]` (or `huggingface.co/...`) through huggingface_hub.

`huggingface_hub.snapshot_download` does the transfer (it honours HF_ENDPOINT, HF_TOKEN and
resumes `.incomplete` files in its download folder, which we keep until the pull succeeds).
What the repository holds decides the rest:
  * GGUF files: TAG picks the file whose name carries it (`:Q4_K_M`, any case; `latest` prefers
    Q4_K_M); it is converted like an Ollama GGUF and not kept. An `mmproj` GGUF beside it is the
    model's projector, as in Ollama's hf.co pulls (its F16 one first): a vision model.
  * an MLX repository (config.json has `quantization`, or mlx-community): stored as it is.
  * a Hugging Face safetensors checkpoint: converted to MLX; a TAG other than `latest` is a
    quantization (`:4bit`, `:8bit`, `:q4_K_M`, `:bf16`, ...).
"""

from __future__ import annotations

import io
import re
import shutil
import threading
import time
from pathlib import Path

from ..store import ModelName, Store
from .create import (
    SOURCE_KEY,
    Emit,
    LayerSet,
    ManageError,
    _sha256_file,
    convert_checkpoint,
    find_converted,
    import_ollama_model,
    is_mlx_checkpoint,
    work_dir,
    write_model,
)
from .quantize import QUANTIZE_ERROR, QuantizeError, parse_quantize

HF_HOSTS = frozenset({"hf.co", "huggingface.co", "www.huggingface.co"})
GGUF_PREFERENCE = ("Q4_K_M", "Q4_K_S", "Q4_0", "Q5_K_M", "Q8_0", "Q6_K", "F16", "BF16")
CHECKPOINT_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.jinja", "*.txt", "*.tiktoken"]
DOWNLOADS = ".mlxollama-downloads"


def is_hf_name(name: ModelName) -> bool:
    return name.host.lower() in HF_HOSTS


def _download_dir(store: Store, repo: str) -> Path:
    return store.root / DOWNLOADS / "hf" / repo.replace("/", "--")


class _Bytes:
    """Progress from huggingface_hub's tqdm bars (any bar counting bytes), throttled."""

    def __init__(self, emit: Emit, status: str, total: int, digest: str | None):
        self.emit, self.status, self.total, self.digest = emit, status, total, digest
        self.bars: list = []
        self.lock = threading.Lock()
        self.last = 0.0

    def report(self, force: bool = False) -> None:
        with self.lock:
            done = max((int(getattr(b, "n", 0) or 0) for b in self.bars), default=0)
            now = time.monotonic()
            if not force and now - self.last < 0.06:
                return
            self.last = now
        out = {"status": self.status, "total": self.total}
        if self.digest:
            out["digest"] = self.digest
        done = min(done, self.total) if self.total else done
        if done:
            out["completed"] = done
        self.emit(out)

    def tqdm_class(self):
        from tqdm.std import tqdm

        tracker = self

        class Progress(tqdm):
            def __init__(self, *args, **kwargs):
                kwargs.pop("name", None)
                kwargs["file"] = io.StringIO()  # never draw
                kwargs["disable"] = False
                super().__init__(*args, **kwargs)
                if self.unit == "B":
                    with tracker.lock:
                        tracker.bars.append(self)

            def update(self, n=1):
                out = super().update(n)
                if self.unit == "B":
                    tracker.report()
                return out

        return Progress


def _hf_error(e: Exception, repo: str) -> ManageError:
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    if isinstance(e, GatedRepoError):
        return ManageError(f"pull model manifest: 401: access to hf.co/{repo} is restricted; set HF_TOKEN")
    if isinstance(e, (RepositoryNotFoundError, RevisionNotFoundError)):
        return ManageError("pull model manifest: file does not exist")
    return ManageError(f"pull model manifest: {e}")


def _quant_of(filename: str) -> str:
    stem = Path(filename).name[: -len(".gguf")]
    m = re.search(r"(?i)(?:^|[-_.])((?:I?Q\d[A-Z0-9_]*?)|F16|BF16|F32)(?:-\d{5}-of-\d{5})?$", stem)
    return m.group(1).upper() if m else stem


def pick_gguf(files: list[str], tag: str) -> str:
    ggufs = sorted(f for f in files if f.lower().endswith(".gguf") and "mmproj" not in f.lower())
    if tag.lower() == "latest":
        if len(ggufs) == 1:
            return ggufs[0]
        by_quant = {_quant_of(f): f for f in ggufs}
        for q in GGUF_PREFERENCE:
            if q in by_quant:
                return by_quant[q]
        return ggufs[0]
    pattern = re.compile(rf"(?i)(?:^|[-_./]){re.escape(tag)}(?:[-_.]|$)")
    matches = [f for f in ggufs if pattern.search(Path(f).name[: -len(".gguf")] + ".")]
    if not matches:
        available = ", ".join(sorted({_quant_of(f) for f in ggufs}))
        raise ManageError(f'pull model manifest: no GGUF file for tag "{tag}" (available: {available})')
    if any(re.search(r"-\d{5}-of-\d{5}\.gguf$", f) for f in matches) or len(matches) > 1:
        raise ManageError(f"pull model manifest: split GGUF files cannot be converted: {', '.join(matches)}", 400)
    return matches[0]


def pick_projector(files: list[str]) -> str | None:
    """The mmproj GGUF to pull with the model (Hugging Face's Ollama manifests pick the F16 one)."""
    projectors = sorted(f for f in files if f.lower().endswith(".gguf") and "mmproj" in Path(f).name.lower())
    for q in ("F16", "BF16", "F32", "Q8_0"):
        found = [f for f in projectors if _quant_of(f) == q or q.lower() in Path(f).name.lower()]
        if found:
            return found[0]
    return projectors[0] if projectors else None


def _find_hf_conversion(store: Store, digest: str | None, proj_digest: str | None, proj_file: str | None):
    """An earlier conversion of this repo's GGUF: with its projector when it has one, else the GGUF
    alone (the text model of a family whose projector is not converted)."""
    from .gguf_vision import VISION_FAMILIES, vision_source_key

    if not digest:
        return None
    if proj_file and proj_digest:
        reuse = find_converted(store, vision_source_key(digest, proj_digest))
        if reuse is not None:
            return reuse
    plain = find_converted(store, digest)
    if plain is not None and proj_file and plain.read_config().get("model_family") in VISION_FAMILIES:
        return None  # converted without the projector this pull brings
    return plain


def pull_hf(store: Store, name: ModelName, emit: Emit, *, noprune: bool = False):
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    repo = f"{name.namespace}/{name.model}"
    emit({"status": "pulling manifest"})
    try:
        info = HfApi().model_info(repo, revision="main", files_metadata=True)
    except (HfHubHTTPError, OSError, ValueError) as e:
        raise _hf_error(e, repo) from e
    except Exception as e:  # httpx transport errors surface under their own classes
        raise ManageError(f"pull model manifest: {e}") from e
    siblings = {s.rfilename: s for s in (info.siblings or [])}
    revision = info.sha or "main"
    dl = _download_dir(store, repo)
    dl.mkdir(parents=True, exist_ok=True)

    def download(patterns: list[str], status: str, total: int, digest: str | None) -> None:
        tracker = _Bytes(emit, status, total, digest)
        tracker.report(force=True)
        try:
            snapshot_download(
                repo,
                revision=revision,
                local_dir=dl,
                allow_patterns=patterns,
                tqdm_class=tracker.tqdm_class(),
                max_workers=4,
            )
        except (HfHubHTTPError, OSError, ValueError) as e:
            raise (
                _hf_error(e, repo) if isinstance(e, HfHubHTTPError) else ManageError(f"max retries exceeded: {e}")
            ) from e
        tracker.report(force=True)
        if total:
            emit(
                {k: v for k, v in {"status": status, "digest": digest, "total": total, "completed": total}.items() if v}
            )

    ggufs = [f for f in siblings if f.lower().endswith(".gguf")]
    if ggufs:
        chosen = pick_gguf(ggufs, name.tag)
        sib = siblings[chosen]
        sha = getattr(sib.lfs, "sha256", None) if sib.lfs else None
        digest = f"sha256:{sha}" if sha else None
        size = int(sib.size or (sib.lfs.size if sib.lfs else 0) or 0)
        status = f"pulling {sha[:12]}" if sha else f"pulling {chosen}"
        from .gguf_vision import PROJECTOR_FAMILIES, architecture_of, vision_source_key

        proj_file = pick_projector(ggufs)
        proj_sib = siblings[proj_file] if proj_file else None
        proj_sha = getattr(proj_sib.lfs, "sha256", None) if proj_sib is not None and proj_sib.lfs else None
        proj_digest = f"sha256:{proj_sha}" if proj_sha else None
        reuse = _find_hf_conversion(store, digest, proj_digest, proj_file)
        projector, source = None, digest
        if reuse is None:
            download([chosen], status, size, digest)
            path = dl / chosen
            # the projector comes along for a family whose vision models convert; for another one the
            # text model is imported alone, as before
            arch = architecture_of(path)
            if proj_file and arch in PROJECTOR_FAMILIES:
                proj_size = int(proj_sib.size or (proj_sib.lfs.size if proj_sib.lfs else 0) or 0)
                proj_status = f"pulling {proj_sha[:12]}" if proj_sha else f"pulling {proj_file}"
                download([proj_file], proj_status, proj_size, proj_digest)
                projector = dl / proj_file
            elif proj_file:
                emit({"status": f"skipping projector {proj_file}: images are not supported for {arch}"})
            emit({"status": "verifying sha256 digest"})
            for file, want in ((path, digest), (projector, proj_digest)):
                if file is None:
                    continue
                actual = _sha256_file(file)
                if want and actual != want:
                    file.unlink(missing_ok=True)
                    raise ManageError(f"digest mismatch, file must be downloaded again: want {want}, got {actual}")
                if file is path:
                    digest = actual
                else:
                    proj_digest = actual
            source = vision_source_key(digest, proj_digest) if projector else digest
        else:
            emit({k: v for k, v in {"status": status, "digest": digest, "total": size, "completed": size}.items() if v})
            emit({"status": "verifying sha256 digest"})
            path = None
            source = reuse.read_config().get(SOURCE_KEY) or digest
        stored = import_ollama_model(
            store,
            name,
            gguf_path=path,
            gguf_digest=digest,
            text_layers=[],
            original_config={},
            emit=emit,
            noprune=noprune,
            projector_path=projector,
            source_key=source,
        )
        shutil.rmtree(dl, ignore_errors=True)
        return stored

    if "config.json" not in siblings or not any(f.endswith(".safetensors") for f in siblings):
        raise ManageError(f"pull model manifest: hf.co/{repo} has no GGUF or safetensors model files", 400)
    try:
        spec = None if name.tag.lower() == "latest" else parse_quantize(name.tag)
    except QuantizeError as e:
        raise ManageError(str(e), e.status) from e
    # top-level files, and sentence-transformers module folders (1_Pooling/, 2_Dense/ ...): an
    # embedder's pooling mode and Dense heads live there
    wanted = sorted(
        f
        for f in siblings
        if ("/" not in f or re.fullmatch(r"\d+_[A-Za-z]+/[^/]+", f))
        and any(Path(f).match(p) for p in CHECKPOINT_PATTERNS)
    )
    total = sum(int(siblings[f].size or 0) for f in wanted)
    download(wanted, "pulling model", total, None)
    emit({"status": "verifying sha256 digest"})
    for f in wanted:
        sib = siblings[f]
        sha = getattr(sib.lfs, "sha256", None) if sib.lfs else None
        if sha and (dl / f).is_file():
            actual = _sha256_file(dl / f)
            if actual != f"sha256:{sha}":
                (dl / f).unlink(missing_ok=True)
                raise ManageError(f"digest mismatch, file must be downloaded again: want sha256:{sha}, got {actual}")
    shutil.rmtree(dl / ".cache", ignore_errors=True)
    mlx = name.namespace.lower() == "mlx-community" or is_mlx_checkpoint(dl)
    if spec is not None and is_mlx_checkpoint(dl):
        raise ManageError(QUANTIZE_ERROR, 500)
    with work_dir(store, "hf") as work:
        conv = convert_checkpoint(dl, work, emit, quantize=spec, mlx_layout=mlx)
        ls = LayerSet()
        ls.add_dir(store, conv.model_dir, move=True)  # the download folder is ours either way
        stored = write_model(
            store, name, ls, conv.config, emit, noprune=noprune, print_statuses=False, announce_prune=True
        )
    shutil.rmtree(dl, ignore_errors=True)
    return stored
