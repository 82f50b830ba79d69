#!/bin/bash
# device run 1: build (.dev/src.tar.xz: patches/ + cuda/ of this change), registers, test-backend-ops
# (default, and TQ_FA_TURBO_OFF=2: every case through the long-context instance), ncu of the decode
# kernel at depth 32768 (new; TQ_FA_TURBO_OFF=48: the kernel as before), tg128 @ 32768 A/B rows; $OUT
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
[ -x $BIN/llama-bench ] || { tail -80 /tmp/build.txt; cp /tmp/build.txt $OUT/; exit 1; }
cuobjdump -res-usage $BIN/libggml-cuda.so 2>/dev/null | grep -A1 "mma_turbo" | grep -o "Li[0-9]*EL9ggml_type[0-9]*ELS0_[0-9]*ELi2ELi2ELi[0-9]ELb[01]ELb[01]\|REG:[0-9]* STACK:[0-9]*" | paste - - > $OUT/registers.txt
timeout 60 $BIN/test-backend-ops -b CUDA0 -o TURBO_ROT_ATTN > $OUT/tbo-rot.txt 2>&1; echo $? > /tmp/rc-rot; t "rot rc=$(cat /tmp/rc-rot)"
tail -2 $OUT/tbo-rot.txt >> $L
timeout 90 $BIN/test-backend-ops -b CUDA0 -o FLASH_ATTN_EXT -p "type_K=turbo|type_V=turbo" > $OUT/tbo-fa.txt 2>&1; echo $? > /tmp/rc-fa; t "fa rc=$(cat /tmp/rc-fa)"
tail -2 $OUT/tbo-fa.txt >> $L; echo "FAIL lines: $(grep -c FAIL $OUT/tbo-fa.txt)" >> $L
TQ_FA_TURBO_OFF=2 timeout 90 $BIN/test-backend-ops -b CUDA0 -o FLASH_ATTN_EXT -p "type_K=turbo|type_V=turbo" > /tmp/tbo-fa-off2.txt 2>&1; echo $? > /tmp/rc-fa2; t "fa OFF=2 rc=$(cat /tmp/rc-fa2)"
tail -2 /tmp/tbo-fa-off2.txt >> $L; echo "FAIL lines: $(grep -c FAIL /tmp/tbo-fa-off2.txt)" >> $L; grep FAIL /tmp/tbo-fa-off2.txt | head -5 >> $L
TQ_FA_TURBO_OFF=2 timeout 60 $BIN/test-backend-ops -b CUDA0 -o TURBO_ROT_ATTN > /tmp/tbo-rot-off2.txt 2>&1; echo $? > /tmp/rc-rot2; t "rot OFF=2 rc=$(cat /tmp/rc-rot2)"
tail -2 /tmp/tbo-rot-off2.txt >> $L
(cat /tmp/tbo-fa-off2.txt; echo "=== TURBO_ROT_ATTN, TQ_FA_TURBO_OFF=2"; cat /tmp/tbo-rot-off2.txt) > $OUT/tbo-off2.txt
wait $MPID; t "model rc=$?"
NCU="ncu --cache-control none --clock-control none -k regex:flash_attn_ext_mma_turbo --launch-skip 40 --launch-count 1 --section SpeedOfLight --section WarpStateStats --section SchedulerStats --section Occupancy --section LaunchStats --section InstructionStats --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis --metrics smsp__inst_executed.sum,gpu__time_duration.sum,dram__bytes_read.sum"
for v in new:0 old:48; do
  [ $(el) -lt 470 ] || { t "skip ncu ${v%%:*}"; continue; }
  TQ_FA_TURBO_OFF=${v##*:} timeout 100 $NCU $BIN/llama-bench -m $MODEL -fa 1 -ngl 99 -p 0 -n 4 -d 32768 -r 1 -ctk turbo3 -ctv turbo3 > $OUT/ncu-${v%%:*}.txt 2>&1
  t "ncu ${v%%:*} rc=$?"
done
B() { # name, then env; uses CK CV D REPS
  local name=$1; shift
  env "$@" $BIN/llama-bench -m $MODEL -fa 1 -ngl 99 -p 0 -n 128 -d ${D:-32768} -r ${REPS:-2} -ctk $CK -ctv $CV -o csv 2>/dev/null | grep -v build_commit | sed "s/^/$name,/" >> $OUT/bench1.csv
  t "bench $name"
}
for r in "turbo3 turbo3 t3 X=0" "turbo3 turbo3 t3-off48 TQ_FA_TURBO_OFF=48" "turbo3 turbo3 t3-off32 TQ_FA_TURBO_OFF=32" "turbo3 turbo3 t3-off16 TQ_FA_TURBO_OFF=16" "f16 f16 f16 X=0" "turbo2 turbo2 t2 X=0"; do
  set -- $r
  [ $(el) -lt 570 ] || { t "skip $3"; continue; }
  CK=$1 CV=$2 B $3 $4
done
cut -d, -f1,17,18,36-38,42,43 $OUT/bench1.csv >> $L 2>/dev/null
t done
