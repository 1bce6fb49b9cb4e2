#!/usr/bin/env bash
# The demo command (README): installs keybroker into its own environment and runs
# `keybroker demo` on embedded defaults (simulator TEE, SQLite files, generated keys).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${KEYBROKER_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet -e .
exec "$VENV/bin/keybroker" demo "$@"
