#!/bin/bash
# device run 1: build (.dev/src.tar.xz), test-backend-ops with the experiment knobs, a timestamp trace
# of one decode launch per token (TQ_FA_TURBO_PROBE=trace), tg128 @ 32768 rows for the knobs, ncu; $OUT
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
cuobjdump -res-usage $BIN/libggml-cuda.so 2>/dev/null | grep -A1 "mma_turbo" | grep -o "Li128EL9ggml_type[0-9]*ELS0_[0-9]*ELi[0-9]ELi[0-9]ELi[0-9]ELb[01]ELb[01]\|REG:[0-9]* STACK:[0-9]*" | paste - - > /tmp/registers.txt
TB() { # name, then env, then test-backend-ops args
  local name=$1 envs=$2; shift 2
  env $envs timeout 90 $BIN/test-backend-ops -b CUDA0 "$@" > /tmp/tbo-$name.txt 2>&1; local rc=$?
  t "test $name ($envs) rc=$rc: $(grep -c FAIL /tmp/tbo-$name.txt) FAIL lines, $(grep -o '[0-9]*/[0-9]* tests passed' /tmp/tbo-$name.txt | head -1)"
  grep FAIL /tmp/tbo-$name.txt | head -3 >> $L
}
TB fa X=0 -o FLASH_ATTN_EXT -p "type_K=turbo|type_V=turbo"
TB fa-exp3 "TQ_FA_TURBO_OFF=2 TQ_FA_TURBO_EXP=3" -o FLASH_ATTN_EXT -p "type_K=turbo|type_V=turbo"
TB fa-st3 "TQ_FA_TURBO_OFF=2 TQ_FA_TURBO_EXP=3 TQ_FA_TURBO_STAGES=3" -o FLASH_ATTN_EXT -p "type_K=turbo|type_V=turbo"
TB rot X=0 -o TURBO_ROT_ATTN
TB rot-exp3 "TQ_FA_TURBO_OFF=2 TQ_FA_TURBO_EXP=3 TQ_FA_TURBO_STAGES=4" -o TURBO_ROT_ATTN
(for f in /tmp/tbo-*.txt; do echo "=== $f"; grep -v "^  .*OK$" $f | tail -8; done; echo; cat /tmp/registers.txt) > $OUT/tests.txt
wait $MPID; t "model rc=$?"
# trace: layer 5 of every token, tg4 at depth 32768 (as built, then with work stealing)
for v in base:0 steal:1 mst:2; do
  TQ_FA_TURBO_PROBE=trace TQ_FA_TURBO_EXP=${v##*:} timeout 60 $BIN/llama-bench -m $MODEL -fa 1 -ngl 99 -p 0 -n 4 -d 32768 -r 1 -ctk turbo3 -ctv turbo3 2>&1 | grep "TQTRACE\|tg4" > /tmp/trace-${v%%:*}.txt
  t "trace ${v%%:*}: $(grep -c TQTRACE /tmp/trace-${v%%:*}.txt) lines"
done
tar czf $OUT/traces.tgz -C /tmp trace-base.txt trace-steal.txt trace-mst.txt
B() { # name, then env; uses CK CV D REPS
  local name=$1; shift
  env "$@" $BIN/llama-bench -m $MODEL -fa 1 -ngl 99 -p 0 -n 128 -d ${D:-32768} -r ${REPS:-2} -ctk $CK -ctv $CV -o csv 2>/dev/null | grep -v build_commit | sed "s/^/$name,/" >> $OUT/bench1.csv
  t "bench $name"
}
for r in "turbo3 t3 X=0" "turbo3 t3-exp2 TQ_FA_TURBO_EXP=2" "turbo3 t3-st3 TQ_FA_TURBO_STAGES=3" "turbo3 t3-st4 TQ_FA_TURBO_STAGES=4" "turbo3 t3-exp1 TQ_FA_TURBO_EXP=1" "turbo3 t3-exp3-st3 TQ_FA_TURBO_EXP=3 TQ_FA_TURBO_STAGES=3" "f16 f16 X=0" "turbo3 t3-exp3-st4 TQ_FA_TURBO_EXP=3 TQ_FA_TURBO_STAGES=4" "turbo3 t3 X=0"; do
  set -- $r
  [ $(el) -lt 545 ] || { t "skip $2"; continue; }
  CK=$1 CV=$1 B $2 ${@:3}
done
cut -d, -f1,17,18,36-38,42,43 $OUT/bench1.csv >> $L 2>/dev/null
NCU="ncu --cache-control none --clock-control none -k regex:flash_attn_ext_mma_turbo --launch-skip 40 --launch-count 1 --section SpeedOfLight --section SchedulerStats --section WarpStateStats --metrics smsp__inst_executed.sum,gpu__time_duration.sum,dram__bytes_read.sum,sm__cycles_active.avg,sm__cycles_active.min,sm__cycles_active.max,smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio,smsp__average_warps_issue_stalled_wait_per_issue_active.ratio,lts__t_bytes.sum"
for v in base:0:2 exp3st3:3:3; do
  [ $(el) -lt 565 ] || { t "skip ncu ${v%%:*}"; continue; }
  e=${v#*:}; TQ_FA_TURBO_EXP=${e%%:*} TQ_FA_TURBO_STAGES=${v##*:} timeout 30 $NCU $BIN/llama-bench -m $MODEL -fa 1 -ngl 99 -p 0 -n 4 -d 32768 -r 1 -ctk turbo3 -ctv turbo3 > $OUT/ncu-${v%%:*}.txt 2>&1
  t "ncu ${v%%:*} rc=$?"
done
cp $L $OUT/log-copy.txt 2>/dev/null
t done
cat $L
