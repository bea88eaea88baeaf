#!/usr/bin/env bash
# The test command: set up .venv if needed, then lint, format check, type check and the test suite.
# Extra arguments go to pytest, e.g. `scripts/test.sh -m slow` or `scripts/test.sh tests/autograd`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/bootstrap.sh"
cd "$root"
bin="${CLIMGRAD_VENV:-$root/.venv}/bin"
echo "== ruff check" && "$bin/ruff" check src tests scripts
echo "== ruff format --check" && "$bin/ruff" format --check src tests scripts
echo "== mypy" && "$bin/mypy"
echo "== pytest" && "$bin/python" -m pytest "$@"
