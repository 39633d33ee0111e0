#!/usr/bin/env bash
# The one place the Python environment is installed. `make`, CI (.ci/run) and the Dockerfiles all
# run this script, so the image cannot drift from what the tests prove.
#
#   VENV=.venv            where to create the virtual environment ("" = install into the current python)
#   TORCH_SPEC=...        the torch requirement; the default takes the CPU wheel. On a GPU host use e.g.
#                         TORCH_SPEC="torch==2.5.1 --index-url <your CUDA wheel index>"
#   EXTRAS=dev            extras of the prunesearch package to install (dev, vision, postgres)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV-.venv}
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
EXTRAS=${EXTRAS:-dev}

if [ -n "$VENV" ]; then
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  PIP=("$VENV/bin/python" -m pip)
else
  PIP=("$PYTHON" -m pip)
fi
"${PIP[@]}" install -q --upgrade pip
# torch first and on its own: a bare "torch" requirement elsewhere would otherwise pull a CUDA build.
# shellcheck disable=SC2086
"${PIP[@]}" install -q $TORCH_SPEC
"${PIP[@]}" install -q -e ".[${EXTRAS}]"
