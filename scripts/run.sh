#!/usr/bin/env bash
# The main job: set up .venv if needed, then run the default calibration (experiment ebm_ncep:
# EBM1D against NCEP R1 1991-2020 zonal means shipped in data/). Arguments are Hydra overrides,
# e.g. `scripts/run.sh optimizer=lbfgs` or `scripts/run.sh experiment=two_layer_hadcrut`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/bootstrap.sh"
cd "$root"
exec "${CLIMGRAD_VENV:-$root/.venv}/bin/climgrad-calibrate" "$@"
