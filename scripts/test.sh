#!/usr/bin/env bash
# The test command (README): builds its own environment from nothing, then runs
# ruff, mypy --strict and pytest. Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: none are needed yet (swtpm, SoftHSM2 and PostgreSQL arrive with the
# issues that use them; they are installed here with apt-get when they do).
. scripts/venv.sh "[test]"

echo "== ruff"
"$VENV/bin/ruff" check .
echo "== mypy --strict"
"$VENV/bin/mypy"
echo "== pytest"
"$VENV/bin/pytest" -q "$@"
