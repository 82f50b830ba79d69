#!/bin/bash
# device run 2, part 1: build the committed series (patches/ + cuda/, source pack in .dev) with all
# tools, test-backend-ops (FLASH_ATTN_EXT turbo pairs, TURBO_ROT_ATTN, SET_ROWS), tests/test_sinks.py
# on that build; outputs in $OUT
set -u
export TQ_GGUF_OFFLINE=1 PYTHONUNBUFFERED=1
cd "$(dirname "$0")/../../.."   # the repository root
L=$OUT/log.txt
T0=$(date +%s)
el() { echo $(( $(date +%s) - T0 )); }
t() { echo "[$(el)s] $*" >> $L; }
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader >> $L
(PYTHONPATH=.dev/gguf-py python - > /tmp/model.txt 2>&1 <<'PY'
from tq_gguf import paths, synthmodel
shp = synthmodel.shape("llama-8b")
m = paths.home()/"models"/f"synthetic-{shp.name}-q4_0.gguf"
m.parent.mkdir(parents=True, exist_ok=True)
tmp = m.with_suffix(".part")
synthmodel.write_synthetic_llama(tmp, shp)
tmp.rename(m)
PY
) &
python - > /tmp/build.txt 2>&1 <<'PY'
from pathlib import Path
from tq_gguf import build
cfg = build.BuildConfig(cuda=True, cuda_arch="90", jobs=16, bindings=False, src_pack=Path(".dev/src.tar.xz"))
build.run(cfg)
PY
t "build rc=$?"; tail -3 /tmp/build.txt >> $L
BIN=$HOME/.cache/tq-gguf/build/cuda-sm90/bin
[ -x $BIN/llama-bench ] || { tail -60 /tmp/build.txt; cp /tmp/build.txt $OUT/; exit 1; }
$BIN/llama-cli --version 2>&1 | grep -i "tq-gguf" | head -2 >> $L
timeout 60 $BIN/test-backend-ops -b CUDA0 -o TURBO_ROT_ATTN > $OUT/tbo-rot.txt 2>&1; t "rot rc=$?"
tail -2 $OUT/tbo-rot.txt >> $L; echo "FAIL lines: $(grep -c FAIL $OUT/tbo-rot.txt) OK lines: $(grep -c ' OK' $OUT/tbo-rot.txt)" >> $L
timeout 120 $BIN/test-backend-ops -b CUDA0 -o FLASH_ATTN_EXT -p "type_K=turbo|type_V=turbo" > $OUT/tbo-fa.txt 2>&1; t "fa rc=$?"
tail -2 $OUT/tbo-fa.txt >> $L; echo "FAIL lines: $(grep -c FAIL $OUT/tbo-fa.txt)" >> $L
timeout 60 $BIN/test-backend-ops -b CUDA0 -o SET_ROWS > $OUT/tbo-setrows.txt 2>&1; t "set_rows rc=$?"
tail -2 $OUT/tbo-setrows.txt >> $L
timeout 200 python -m pytest -q -x tests/test_sinks.py > $OUT/pytest-sinks.txt 2>&1; t "pytest test_sinks rc=$?"
tail -3 $OUT/pytest-sinks.txt >> $L
wait; t done
