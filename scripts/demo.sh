#!/usr/bin/env bash
# The demo command (README): installs keybroker into its own environment and runs
# `keybroker demo` on embedded defaults (simulator TEE, SQLite files, generated keys).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh
exec "$VENV/bin/keybroker" demo "$@"
