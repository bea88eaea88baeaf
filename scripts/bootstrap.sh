#!/usr/bin/env bash
# Create .venv (if missing) and install climgrad into it; cheap when nothing changed.
#
# torch is installed first and on its own, because a bare `torch` requirement resolved by pip
# pulls a multi-GB CUDA build. Override what is installed with:
#   CLIMGRAD_TORCH="torch==2.13.0"              (the default; a CPU build where one lies on disk)
#   CLIMGRAD_TORCH_INDEX=<wheel index URL>      (e.g. PyTorch's CUDA index on a GPU machine)
#   CLIMGRAD_EXTRAS="dev,posterior"             (extras of the project to install; default
#                                                dev,posterior,distributed,launchers, plus rrtmg
#                                                where climt has wheels: CPython 3.11 on x86-64
#                                                Linux)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${CLIMGRAD_VENV:-$root/.venv}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    echo "bootstrap: creating $venv" >&2
    "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --quiet --disable-pip-version-check)

if ! "$venv/bin/python" -c "import torch" >/dev/null 2>&1; then
    spec="${CLIMGRAD_TORCH:-torch==2.13.0}"
    echo "bootstrap: installing $spec" >&2
    if [ -n "${CLIMGRAD_TORCH_INDEX:-}" ]; then
        "${pip[@]}" install "$spec" --index-url "$CLIMGRAD_TORCH_INDEX"
    else
        "${pip[@]}" install "$spec"
    fi
fi

default_extras="dev,posterior,distributed,launchers"
if "$venv/bin/python" -c 'import sys, platform; sys.exit(not (sys.version_info[:2] == (3, 11) and platform.machine() == "x86_64" and sys.platform == "linux"))'; then
    default_extras="dev,posterior,distributed,launchers,rrtmg"
fi
extras="${CLIMGRAD_EXTRAS:-$default_extras}"
stamp="$venv/.climgrad-installed"
# The C extension is rebuilt when its source changes, so the stamp covers it too.
want="$(cat "$root/pyproject.toml" "$root/src/climgrad/_tridiagonal.c" | sha256sum | cut -d' ' -f1) $extras $root"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "bootstrap: installing climgrad[$extras] (editable)" >&2
    "${pip[@]}" install -e "$root[$extras]"
    echo "$want" > "$stamp"
fi
