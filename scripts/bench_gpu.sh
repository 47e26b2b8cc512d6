#!/usr/bin/env bash
# GPU figures in one run (see scripts/bench_gpu.py): makes its own venv with mlx[cuda13], this
# project and mlx-lm, then builds a random-weight 4-bit Qwen3-4B-shaped model and measures decode
# against the bandwidth bound, 1/4/8/16 streams vs sequential vs mlx_lm.server, and TTFT cold/warm.
#
#   scripts/bench_gpu.sh [options] [bench_gpu.py options, e.g. --shape tiny --bandwidth-gbs 4800]
#     --cpu             mlx[cpu] instead of mlx[cuda13] (a smoke run on a machine without a GPU)
#     --venv DIR        the venv to make and use (default .bench-venv, git-ignored)
#     --reuse-venv DIR  use an existing venv as it is, installing nothing (e.g. .venv)
#     --wheels DIR      install offline from DIR only (pip --no-index --find-links DIR); repeatable;
#                       wheels split by --split-mb (NAME.whl.part-aa, -ab...) are joined first
#     --python PY       the interpreter the venv is made from (default: $PYTHON or python3)
#     --inherit-site    let the venv see PY's own site-packages (and the CUDA libraries in it), so a
#                       machine image that already holds nvidia-cublas, -cudnn-cu13... needs no copy
#     --download DIR    on a machine with network: fetch into DIR the wheels an offline run needs
#                       (manylinux x86_64, CPython 3.12; mlx-cuda-13, or mlx-cpu with --cpu), then
#                       stop; with --with-cuda-libs also the NVIDIA CUDA 13 library wheels (several
#                       GB) for an image that lacks them
#       --exclude "A B"   ...less these packages (ones the target machine already has)
#       --split-mb N      ...and wheels over N MB cut into parts, to travel in pieces of a size limit
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

VENV="$ROOT/.bench-venv"; REUSE=""; WHEELS=(); DOWNLOAD=""; CUDA_LIBS=0; INHERIT=0; EXCLUDE=""; SPLIT_MB=0
MLX_EXTRA="cuda13"; BASE_PY="${PYTHON:-python3}"
BENCH_ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu) MLX_EXTRA="cpu" ;;
    --venv) VENV="$(realpath -m "$2")"; shift ;;
    --reuse-venv) REUSE="$(realpath "$2")"; shift ;;
    --wheels) WHEELS+=("$(realpath "$2")"); shift ;;
    --python) BASE_PY="$2"; shift ;;
    --inherit-site) INHERIT=1 ;;
    --download) DOWNLOAD="$(realpath -m "$2")"; shift ;;
    --with-cuda-libs) CUDA_LIBS=1 ;;
    --exclude) EXCLUDE="$2"; shift ;;
    --split-mb) SPLIT_MB="$2"; shift ;;
    -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "$0"; exit 0 ;;
    *) BENCH_ARGS+=("$1") ;;
  esac
  shift
done

# What the benchmark imports beyond the project's own dependencies: httpx (the client, and
# tests/support/liveserver.py), setuptools for the editable install when offline.
EXTRA_REQS=(httpx "setuptools>=68" wheel)

if [ -n "$DOWNLOAD" ]; then
  mkdir -p "$DOWNLOAD"
  TARGET=(--only-binary=:all: --python-version 3.12 --implementation cp --abi cp312
          --platform manylinux_2_35_x86_64 --platform manylinux_2_28_x86_64
          --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
  # The project's dependencies with theirs; mlx itself has none on Linux without an extra.
  mapfile -t DEPS < <("$BASE_PY" -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))')
  [ "${#DEPS[@]}" -gt 0 ] || { echo "could not read pyproject.toml's dependencies with $BASE_PY" >&2; exit 1; }
  "$BASE_PY" -m pip download --disable-pip-version-check -d "$DOWNLOAD" "${TARGET[@]}" "${DEPS[@]}" "${EXTRA_REQS[@]}"
  MLX_VERSION="$(ls "$DOWNLOAD" | sed -n 's/^mlx-\([0-9][0-9.]*\)-.*\.whl$/\1/p' | sort -V | tail -1)"
  # The backend build of libmlx pinned to the same mlx: mlx-cuda-13 (~90 MB), or mlx-cpu with
  # --cpu. The NVIDIA library wheels only on request, since GPU images usually carry them (see
  # --inherit-site).
  if [ "$CUDA_LIBS" = 1 ]; then
    "$BASE_PY" -m pip download --disable-pip-version-check -d "$DOWNLOAD" "${TARGET[@]}" "mlx[$MLX_EXTRA]==$MLX_VERSION"
  else
    "$BASE_PY" -m pip download --disable-pip-version-check -d "$DOWNLOAD" "${TARGET[@]}" --no-deps \
      "mlx-${MLX_EXTRA/cuda13/cuda-13}==$MLX_VERSION"
  fi
  for name in ${EXCLUDE//,/ }; do  # wheel file names spell a project with underscores
    find "$DOWNLOAD" -maxdepth 1 -iname "${name//-/_}-*.whl" -print -delete | sed 's|.*/|    left out: |'
  done
  if [ "$SPLIT_MB" -gt 0 ]; then
    find "$DOWNLOAD" -maxdepth 1 -name '*.whl' -size +"${SPLIT_MB}M" | while read -r whl; do
      split -b "${SPLIT_MB}M" -a 2 "$whl" "$whl.part-" && rm "$whl"
      echo "    split: $(basename "$whl") -> $(ls "$whl".part-* | wc -l) parts"
    done
  fi
  echo "==> wheels for an offline run are in $DOWNLOAD ($(du -sh "$DOWNLOAD" | cut -f1))"
  exit 0
fi

if [ -n "$REUSE" ]; then
  VPY="$REUSE/bin/python"
  [ -x "$VPY" ] || { echo "no python in $REUSE" >&2; exit 1; }
else
  VPY="$VENV/bin/python"
  # An interpreter without ensurepip (a distribution's python3 lacking its venv package) still
  # makes a venv without pip; pip then comes from the inherited site or from the base interpreter.
  [ -x "$VPY" ] || "$BASE_PY" -m venv "$VENV" || { rm -rf "$VENV"; "$BASE_PY" -m venv --without-pip "$VENV"; }
  if [ "$INHERIT" = 1 ]; then
    # A .pth line puts the base interpreter's site-packages after the venv's own: what the venv
    # installs wins, what it lacks (CUDA libraries, numpy...) comes from the image. pip sees
    # those as installed, so an offline install needs no copy of them.
    BASE_SITE="$("$BASE_PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    VENV_SITE="$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    echo "$BASE_SITE" > "$VENV_SITE/zz-bench-inherited-site.pth"
    # libmlx finds the NVIDIA libraries by an rpath relative to its own site-packages.
    for d in "$BASE_SITE"/nvidia/*/lib; do
      [ -d "$d" ] && LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    done
    export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}"
  fi
  PIP=("$VPY" -m pip install --quiet --disable-pip-version-check)
  "$VPY" -m pip --version >/dev/null 2>&1 || PIP=("$BASE_PY" -m pip --python "$VPY" install --quiet --disable-pip-version-check)
  if [ "${#WHEELS[@]}" -gt 0 ]; then
    PIP+=(--no-index)
    for d in "${WHEELS[@]}"; do PIP+=(--find-links "$d"); done
    # Join wheels that travelled in parts (download --split-mb), parts in name order.
    PARTS="$(find "${WHEELS[@]}" -maxdepth 1 -name '*.whl.part-*' -printf '%f\t%p\n' | sort)"
    if [ -n "$PARTS" ]; then
      JOINED="$(mktemp -d)"
      while IFS=$'\t' read -r file path; do cat "$path" >> "$JOINED/${file%.part-*}"; done <<< "$PARTS"
      PIP+=(--find-links "$JOINED")
    fi
  fi
  echo "==> installing mlx[$MLX_EXTRA], mlxollama and mlx-lm into $VENV${WHEELS:+ (offline, from ${WHEELS[*]})}"
  "${PIP[@]}" "mlx[$MLX_EXTRA]" -e . "${EXTRA_REQS[@]}"
  [ -z "${JOINED:-}" ] || rm -rf "$JOINED"
fi

# The benchmark must measure the backend it was asked for, not fall back silently.
"$VPY" - "$MLX_EXTRA" <<'EOF'
import sys
import mlx.core as mx
want_gpu = sys.argv[1] != "cpu"
if want_gpu and not (hasattr(mx, "cuda") and mx.cuda.is_available()):
    sys.exit("bench_gpu: mlx[cuda13] is installed but MLX sees no CUDA device (driver? LD_LIBRARY_PATH?)")
print(f"==> mlx {mx.__version__}, default device {mx.default_device()}")
EOF
exec env PYTHONUNBUFFERED=1 "$VPY" "$ROOT/scripts/bench_gpu.py" "${BENCH_ARGS[@]}"
