#!/bin/bash
# device run 3: run 1 on the build with TQ_FA_TURBO_MINB (4 blocks per SM by default): build, registers,
# test-backend-ops (default; TQ_FA_TURBO_OFF=2), ncu with warp-stall ratios at depth 32768 (MINB 4 and 2,
# and the kernel as before), tg128 @ 32768 A B B A rows; $OUT
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
cuobjdump -res-usage $BIN/libggml-cuda.so 2>/dev/null | grep -A1 "mma_turbo" | grep -o "Li[0-9]*EL9ggml_type[0-9]*ELS0_[0-9]*ELi[23]ELi[234]ELi[0-9]ELb[01]ELb[01]\|REG:[0-9]* STACK:[0-9]*" | paste - - > $OUT/registers.txt
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
ST=$(for r in barrier branch_resolving dispatch_stall drain imc_miss lg_throttle long_scoreboard math_pipe_throttle membar mio_throttle misc no_instruction not_selected selected short_scoreboard sleeping tex_throttle wait; do printf "smsp__average_warps_issue_stalled_%s_per_issue_active.ratio," $r; done)
NCU="ncu --cache-control none --clock-control none -k regex:flash_attn_ext_mma_turbo --launch-skip 40 --launch-count 1 --section SpeedOfLight --section WarpStateStats --section SchedulerStats --section Occupancy --section LaunchStats --section InstructionStats --section ComputeWorkloadAnalysis --metrics ${ST}smsp__inst_executed.sum,gpu__time_duration.sum,dram__bytes_read.sum,sm__cycles_active.avg"
for v in minb4:4:0 minb2:2:0 old:2:48; do
  [ $(el) -lt 480 ] || { t "skip ncu ${v%%:*}"; continue; }
  m=${v#*:}; TQ_FA_TURBO_MINB=${m%%:*} TQ_FA_TURBO_OFF=${v##*:} timeout 100 $NCU $BIN/llama-bench -m $MODEL -fa 1 -ngl 99 -p 0 -n 4 -d 32768 -r 1 -ctk turbo3 -ctv turbo3 > $OUT/ncu-${v%%:*}.txt 2>&1
  t "ncu ${v%%:*} rc=$?"
done
B() { # name, then env; uses CK CV D REPS
  local name=$1; shift
  env "$@" $BIN/llama-bench -m $MODEL -fa 1 -ngl 99 -p 0 -n 128 -d ${D:-32768} -r ${REPS:-2} -ctk $CK -ctv $CV -o csv 2>/dev/null | grep -v build_commit | sed "s/^/$name,/" >> $OUT/bench3.csv
  t "bench $name"
}
for r in "turbo3 turbo3 t3-minb4 X=0" "turbo3 turbo3 t3-minb2 TQ_FA_TURBO_MINB=2" "turbo3 turbo3 t3-minb3 TQ_FA_TURBO_MINB=3" "turbo3 turbo3 t3-off48 TQ_FA_TURBO_OFF=48" "turbo3 turbo3 t3-minb2 TQ_FA_TURBO_MINB=2" "turbo3 turbo3 t3-minb4 X=0" "turbo2 turbo2 t2-minb4 X=0" "turbo2 turbo2 t2-minb2 TQ_FA_TURBO_MINB=2" "f16 f16 f16 X=0"; do
  set -- $r
  [ $(el) -lt 575 ] || { t "skip $3"; continue; }
  CK=$1 CV=$2 B $3 $4
done
cut -d, -f1,17,18,36-38,42,43 $OUT/bench3.csv >> $L 2>/dev/null
t done
