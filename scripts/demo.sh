#!/usr/bin/env bash
# The demo command (README): installs keybroker into its own environment and runs
# `keybroker demo` on embedded defaults (simulator TEE, SQLite files, generated keys).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh ""   # no extras (an explicit argument, so ours are not passed on)
exec "$VENV/bin/keybroker" demo "$@"
