#!/bin/bash
# the final device run (run 5): build llama-bench + test-backend-ops from a source pack in .dev/, tests, gpu_speed, tg128 A/B; outputs in $OUT
set -u
export TQ_GGUF_OFFLINE=1 PYTHONUNBUFFERED=1
cd "$(dirname "$0")/../../.."   # the repository root
L=$OUT/log.txt
T0=$(date +%s)
el() { echo $(( $(date +%s) - T0 )); }
t() { echo "[$(el)s] $*" >> $L; }
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader >> $L
MODEL=$HOME/.cache/tq-gguf/models/synthetic-llama-8b-q4_0.gguf
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
[ -x $BIN/llama-bench ] || { tail -60 /tmp/build.txt; exit 1; }
cuobjdump -res-usage $BIN/libggml-cuda.so 2>/dev/null | grep -A1 "mma_turbo" | grep -o "Li[0-9]*EL9ggml_type[0-9]*ELS0_[0-9]*ELi2ELi[23]ELi[0-9]ELb[01]\|REG:[0-9]* STACK:[0-9]*" | paste - - >> $L
timeout 60 $BIN/test-backend-ops -b CUDA0 -o TURBO_ROT_ATTN > $OUT/tbo-rot.txt 2>&1; t "rot rc=$?"
tail -2 $OUT/tbo-rot.txt >> $L
timeout 90 $BIN/test-backend-ops -b CUDA0 -o FLASH_ATTN_EXT -p "type_K=turbo|type_V=turbo" > $OUT/tbo-fa.txt 2>&1; t "fa rc=$?"
tail -2 $OUT/tbo-fa.txt >> $L; echo "FAIL lines: $(grep -c FAIL $OUT/tbo-fa.txt)" >> $L
wait $MPID; t "model rc=$?"
B() { # name, then env; uses CK CV D
  local name=$1; shift
  env "$@" $BIN/llama-bench -m $MODEL -fa 1 -ngl 99 -p 0 -n 128 -d ${D:-0} -r ${REPS:-3} -ctk $CK -ctv $CV -o csv 2>/dev/null | grep -v build_commit | sed "s/^/$name,/" >> $OUT/bench.csv
  t "bench $name"
}



















timeout $(( 420 - $(el) )) python scripts/gpu_speed.py --shape llama-8b --depths 0,32768 --caches f16,q8_0,turbo3,turbo2 --reps 2 --no-build -o $OUT/gpu-speed > /tmp/gs.txt 2>&1
t "gpu_speed rc=$?"; grep "^|" /tmp/gs.txt | head -24 >> $L
CK=turbo3 CV=turbo3 B turbo3 X=0
CK=turbo3 CV=turbo3 B turbo3-noroll TQ_FA_TURBO_OFF=2
CK=turbo3 CV=turbo3 B turbo3-noroll-noskip TQ_FA_TURBO_OFF=3
CK=turbo3 CV=turbo3 B turbo3-noroll TQ_FA_TURBO_OFF=2
CK=turbo3 CV=turbo3 B turbo3 X=0
CK=f16 CV=f16 B f16 X=0
t done
