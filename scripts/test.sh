#!/usr/bin/env bash
# The test command (README): builds its own environment from nothing, then runs
# ruff, mypy --strict and pytest. Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests run for real: SoftHSM2 (the PKCS#11 KEK), swtpm with its EK CA
# tools and the tpm2 libraries (the TPM tests), the PostgreSQL server (the store tests run on
# SQLite and on a throwaway PostgreSQL cluster).
. scripts/debian-packages.sh softhsm tpm postgres
. scripts/venv.sh "[test]"

echo "== ruff"
"$VENV/bin/ruff" check .
echo "== mypy --strict"
"$VENV/bin/mypy"
echo "== pytest"
if [ $# -gt 0 ]; then
  exec "$VENV/bin/pytest" -q "$@"
fi
# The whole suite as two pytest runs side by side, one per core: the process-level tests
# (tests/integration, in order, mostly waiting on the processes they start) and the
# in-process ones. Each run starts its own throwaway PostgreSQL cluster and SoftHSM2 token.
logs=$(mktemp -d)
"$VENV/bin/pytest" -q -p no:cacheprovider tests/integration > "$logs/integration.log" 2>&1 &
integration=$!
unit_rc=0
"$VENV/bin/pytest" -q tests/unit tests/vectors || unit_rc=$?
integration_rc=0
wait "$integration" || integration_rc=$?
echo "== pytest tests/integration"
cat "$logs/integration.log"
rm -rf "$logs"
[ "$unit_rc" -eq 0 ] && [ "$integration_rc" -eq 0 ]
