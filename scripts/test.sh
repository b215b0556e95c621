#!/usr/bin/env bash
# Sets up the project-local ComfyUI runtime (first run: a few minutes) and runs the test suite.
# Extra arguments go to pytest, e.g. `scripts/test.sh -k exactness -x`.
# CUTDIFF_COMFYUI=/path/to/ComfyUI runs it against that ComfyUI instead of the vendored 0.3.75,
# in its own venv (.venv-comfyui-<version>; see scripts/setup_env.sh).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -n "${CUTDIFF_COMFYUI:-}" ]; then
  # Absolute, so the harness and the server it starts (other working folders) find the same one.
  CUTDIFF_COMFYUI="$(cd "$CUTDIFF_COMFYUI" && pwd)"
  export CUTDIFF_COMFYUI
fi
bash "$ROOT/scripts/setup_env.sh"
VENV="$(bash "$ROOT/scripts/setup_env.sh" --print-venv)"
cd "$ROOT"
exec "$VENV/bin/python" -m pytest -c tests/pytest.ini -q "$@"
