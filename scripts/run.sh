#!/usr/bin/env bash
# The main job: set up .venv if needed, then run it. Arguments are passed on.
# Until the calibration app lands, the main job is the gradient-verification demo of the
# autograd bridge (scripts/examples/bridge_demo.py).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/bootstrap.sh"
exec "${CLIMGRAD_VENV:-$root/.venv}/bin/python" "$root/scripts/examples/bridge_demo.py" "$@"
