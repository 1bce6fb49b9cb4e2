#!/usr/bin/env bash
# The test command (README): builds its own environment from nothing, then runs
# ruff, mypy --strict and pytest. Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests run for real: SoftHSM2 (the PKCS#11 KEK), swtpm with its EK CA
# tools and the tpm2 libraries (the TPM tests).
. scripts/debian-packages.sh softhsm tpm
. scripts/venv.sh "[test]"

echo "== ruff"
"$VENV/bin/ruff" check .
echo "== mypy --strict"
"$VENV/bin/mypy"
echo "== pytest"
"$VENV/bin/pytest" -q "$@"
