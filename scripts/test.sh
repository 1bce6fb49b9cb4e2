#!/usr/bin/env bash
# The test command (README): builds its own environment from nothing, then runs
# ruff, mypy --strict and pytest. Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests run for real: SoftHSM2 (the PKCS#11 KEK), swtpm with its EK CA
# tools (the TPM tests), the tpm2 libraries tpm2-pytss builds against. `apt-get update` once,
# then only what is missing.
missing=()
command -v softhsm2-util >/dev/null 2>&1 || missing+=(softhsm2)
command -v swtpm >/dev/null 2>&1 || missing+=(swtpm)
command -v swtpm_setup >/dev/null 2>&1 || missing+=(swtpm-tools)
pkg-config --exists tss2-esys tss2-tctildr 2>/dev/null || missing+=(libtss2-dev pkg-config)
if [ ${#missing[@]} -gt 0 ]; then
  echo "== apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
. scripts/venv.sh "[test]"

echo "== ruff"
"$VENV/bin/ruff" check .
echo "== mypy --strict"
"$VENV/bin/mypy"
echo "== pytest"
"$VENV/bin/pytest" -q "$@"
