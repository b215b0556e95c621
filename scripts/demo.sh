#!/usr/bin/env bash
# Sets up the project-local ComfyUI runtime (first run: a few minutes), then runs the demo:
# the embedded tiny model through the example workflow in ComfyUI's executor. Outputs: out/demo/.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
exec "${CUTDIFF_VENV:-$ROOT/.venv}/bin/python" scripts/run_demo.py "$@"
