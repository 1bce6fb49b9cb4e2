# Sourced by test.sh and demo.sh: create the virtual environment if missing and install
# keybroker into it (editable; the build hook compiles proto/ into keybroker/v1).
# Usage: . scripts/venv.sh [EXTRAS]   (e.g. "[test]"); sets VENV.
PYTHON=${PYTHON:-python3}
VENV=${KEYBROKER_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet -e ".${1:-}"
