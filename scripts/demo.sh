#!/usr/bin/env bash
# The demo command (README): installs keybroker into its own environment and runs
# `keybroker demo` on embedded defaults (simulator TEE, SQLite files, generated keys).
set -euo pipefail
cd "$(dirname "$0")/.."
extras=""   # an explicit argument, so ours are not passed on to venv.sh
case " $* " in
  *" --tee tpm "*|*" --tee=tpm "*)   # real swtpm machines: Debian packages and tpm2-pytss
    . scripts/debian-packages.sh tpm
    extras="[tpm]" ;;
esac
. scripts/venv.sh "$extras"
exec "$VENV/bin/keybroker" demo "$@"
