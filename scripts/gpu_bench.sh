#!/usr/bin/env bash
# The GPU rows of BENCHMARKS.md in one device run (15 minutes of device time in all, machine start
# included, so everything is prepared and checked here first).
#
#   bash scripts/gpu_bench.sh prepare      # here: ComfyUI + wheels into .cache/gpu, checked offline
#   then the device tool's run, carrying .cache/gpu (Flux first: issue 15's figures):
#     command: bash scripts/gpu_bench.sh flux     timeout_s 600   (about 8 minutes on an H200)
#     command: bash scripts/gpu_bench.sh sdxl     timeout_s 330   (only with 5 minutes left)
#   each writes its BENCHMARKS.md section to $OUT/<part>.md and its log to $OUT/<part>.log; paste
#   the section into BENCHMARKS.md (the tables name the card) and update the summary.
#
# The device machine has torch and a fixed set of packages, no network: it gets the ComfyUI source
# tree the tests use (without its tests and API nodes) and the two wheels its samplers import
# that the image lacks. `prepare` runs both benchmarks here on the CPU with everything else made
# unimportable (scripts/device_import_check.py), so a missing package shows up before the
# machine is paid for.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GPU_DIR="$ROOT/.cache/gpu"
WHEELS=("torchsde==0.2.6" "trampoline==0.1.2")
ALLOW="$(IFS=,; echo "${WHEELS[*]%%==*}")"   # their names: importable in the offline check
FLUX_ARGS=(--model flux-dev --methods direct,multidiffusion,cut-overlap,cut-shifted,default --sizes 4x,16x)
SDXL_ARGS=(--model sdxl --methods direct,multidiffusion,default --sizes 4x,16x)

prepare() {
  local venv="$ROOT/.venv"
  [ -x "$venv/bin/python" ] || bash "$ROOT/scripts/setup_env.sh"
  local comfy
  comfy="$(cat "$venv/comfyui-path.txt")"
  rm -rf "$GPU_DIR"
  mkdir -p "$GPU_DIR/wheels"
  # tar keeps the tree's layout; what is left out is nothing the model-management layer imports.
  tar -C "$comfy" --exclude=__pycache__ --exclude='*.pyc' --exclude=./tests --exclude=./tests-unit \
      --exclude=./comfy_api_nodes --exclude=./.git -cf - . | { mkdir -p "$GPU_DIR/comfyui" && tar -C "$GPU_DIR/comfyui" -xf -; }
  "$venv/bin/python" -m pip download --quiet --no-deps --only-binary=:all: -d "$GPU_DIR/wheels" "${WHEELS[@]}"
  for part in flux sdxl; do
    local args=("${FLUX_ARGS[@]}")
    [ "$part" = sdxl ] && args=("${SDXL_ARGS[@]}")
    echo "[gpu_bench] offline check of the $part run on the CPU (2 steps, 2x area)"
    CUTDIFF_COMFYUI="$GPU_DIR/comfyui" OMP_NUM_THREADS=2 "$venv/bin/python" "$ROOT/scripts/device_import_check.py" \
      --allow "$ALLOW" "$ROOT/bench/perf_bench.py" "${args[@]}" --cpu --steps 2 --sizes 2x --repeats 1 \
      --no-memory --no-write >/dev/null
  done
  local tree cache
  tree="$(cd "$ROOT" && git ls-files -z --cached --others --exclude-standard | du -ch --files0-from=- | tail -n 1 | cut -f1)"
  cache="$(du -sh "$GPU_DIR" | cut -f1)"
  echo "[gpu_bench] ready: the working tree ($tree) and .cache/gpu ($cache) travel; the limit is 64 MiB"
}

on_device() {
  local part="$1" budget args
  shift
  case "$part" in
    flux) args=("${FLUX_ARGS[@]}"); budget=500 ;;
    sdxl) args=("${SDXL_ARGS[@]}"); budget=270 ;;
    *) echo "usage: $0 prepare | flux | sdxl" >&2; exit 2 ;;
  esac
  [ -d "$GPU_DIR/comfyui" ] || { echo "[gpu_bench] .cache/gpu is missing: run 'prepare' here and carry .cache/gpu" >&2; exit 2; }
  local out="${OUT:-$ROOT/out/gpu}"
  mkdir -p "$out"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$GPU_DIR"/wheels/*.whl
  export PYTHONPATH="/tmp/site:$ROOT" CUTDIFF_COMFYUI="$GPU_DIR/comfyui" PYTHONUNBUFFERED=1
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/$part.log"
  set -o pipefail
  python3 "$ROOT/bench/perf_bench.py" "${args[@]}" --budget-s "$budget" --output "$out/$part.md" "$@" 2>&1 \
    | tee -a "$out/$part.log"
}

case "${1:-}" in
  prepare) prepare ;;
  *) on_device "$@" ;;   # further arguments go to perf_bench.py (a dry run here: --cpu --steps 2 --sizes 2x)
esac
