#!/usr/bin/env bash
# Sets up the project-local ComfyUI runtime (first run: a few minutes) and runs the test suite.
# Extra arguments go to pytest, e.g. `scripts/test.sh -k exactness -x`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
exec "${CUTDIFF_VENV:-$ROOT/.venv}/bin/python" -m pytest -c tests/pytest.ini -q "$@"
