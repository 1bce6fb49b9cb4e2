#!/usr/bin/env bash
# The test command (README): builds its own environment from nothing, then runs
# ruff, mypy --strict and pytest. Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${KEYBROKER_VENV:-.venv}

# Debian packages: none are needed yet (swtpm, SoftHSM2 and PostgreSQL arrive with the
# issues that use them; they are installed here with apt-get when they do).

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# Editable install: the build hook compiles proto/ into keybroker/v1 (gitignored).
"$VENV/bin/python" -m pip install --quiet -e '.[test]'

echo "== ruff"
"$VENV/bin/ruff" check .
echo "== mypy --strict"
"$VENV/bin/mypy"
echo "== pytest"
"$VENV/bin/pytest" -q "$@"
