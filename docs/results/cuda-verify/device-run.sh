#!/bin/bash
# One call ($OUT): the committed tree (974b8f5's kernels, b65c3d6's patch 0011) built for sm_90 from a
# source pack made without building; test-backend-ops of the turbo cases; the issue's goal command.
set -u
export TQ_GGUF_OFFLINE=1 PYTHONUNBUFFERED=1
cd "$(dirname "$0")/../../.."
L=$OUT/log.txt
T0=$(date +%s)
t() { echo "[$(( $(date +%s) - T0 ))s] $*" >> $L; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader >> $L
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
MPID=$!
python - > /tmp/build.txt 2>&1 <<'PY'
from pathlib import Path
from tq_gguf import build
cfg = build.BuildConfig(cuda=True, cuda_arch="90", jobs=16, bindings=False, src_pack=Path(".dev/src.tar.xz"),
                        targets=("llama-bench", "test-backend-ops"))
build.run(cfg)
PY
t "build rc=$?"; tail -3 /tmp/build.txt >> $L
BIN=$HOME/.cache/tq-gguf/build/cuda-sm90/bin
[ -x $BIN/llama-bench ] || { tail -80 /tmp/build.txt > $OUT/build.txt; exit 1; }
$BIN/llama-bench --version 2>&1 | grep tq-gguf >> $L
TB() {
  local name=$1; shift
  timeout 120 $BIN/test-backend-ops -b CUDA0 "$@" > /tmp/tbo-$name.txt 2>&1; local rc=$?
  t "test $name rc=$rc: $(grep -c FAIL /tmp/tbo-$name.txt) FAIL lines, $(grep -o '[0-9]*/[0-9]* tests passed' /tmp/tbo-$name.txt | head -1)"
}
TB rot -o TURBO_ROT_ATTN
TB setrows -o SET_ROWS -p turbo
TB cpy -o CPY -p turbo
TB getrows -o GET_ROWS -p turbo
TB fa -o FLASH_ATTN_EXT -p "type_K=turbo|type_V=turbo"
(for f in /tmp/tbo-*.txt; do echo "=== $f"; grep -v "^  .*OK$" $f | tail -6; done) > $OUT/tests.txt
wait $MPID; t "model rc=$?"
timeout 300 python scripts/gpu_speed.py --shape llama-8b --depths 0,32768 --caches f16,q8_0,turbo3,turbo2 --reps 2 --no-build \
    -o $OUT/gpu-speed > $OUT/gpu-speed-stdout.txt 2>&1
t "gpu_speed rc=$?"
grep "^|" $OUT/gpu-speed-stdout.txt >> $L
