#!/bin/bash
# device run 2, part 2 (same machine, right after part 1): no graph reallocation in prefill
# (GGML_SCHED_DEBUG_REALLOC=2 aborts at any), pp2048 sink store on/off A B B A at depth 0 and
# 32768, then gpu_speed; outputs in $OUT
set -u
export TQ_GGUF_OFFLINE=1 PYTHONUNBUFFERED=1
cd "$(dirname "$0")/../../.."   # the repository root
L=$OUT/log.txt
T0=$(date +%s)
el() { echo $(( $(date +%s) - T0 )); }
t() { echo "[$(el)s] $*" >> $L; }
BIN=$HOME/.cache/tq-gguf/build/cuda-sm90/bin
MODEL=$HOME/.cache/tq-gguf/models/synthetic-llama-8b-q4_0.gguf
[ -x $BIN/llama-bench ] && [ -f $MODEL ] || { echo "no build or model: the machine went back" >> $L; cat $L; exit 1; }
B() { # name, then env; uses CK CV D REPS
  local name=$1; shift
  env "$@" $BIN/llama-bench -m $MODEL -fa 1 -ngl 99 -p 2048 -n 0 -d ${D:-0} -r ${REPS:-3} -ctk $CK -ctv $CV -o csv 2>/tmp/err-$name.txt | grep -v build_commit | sed "s/^/$name,/" >> $OUT/bench.csv
  t "bench $name rc=${PIPESTATUS[0]}"
}
for D in 0 32768; do
  REPS=2 CK=turbo3 CV=turbo3 B t3-realloc-check-d$D GGML_SCHED_DEBUG_REALLOC=2
  grep -i "abort\|realloc" /tmp/err-t3-realloc-check-d$D.txt | head -3 >> $L
done
for D in 0 32768; do
  CK=turbo3 CV=turbo3 B turbo3 X=0
  CK=turbo3 CV=turbo3 B turbo3-nosink LLAMA_TURBO_SINKS=0
  CK=f16 CV=f16 B f16 X=0
  CK=turbo3 CV=turbo3 B turbo3-nosink LLAMA_TURBO_SINKS=0
  CK=turbo3 CV=turbo3 B turbo3 X=0
  CK=f16 CV=f16 B f16 X=0
done
timeout $(( 580 - $(el) )) python scripts/gpu_speed.py --shape llama-8b --depths 0,32768 --caches f16,q8_0,turbo3,turbo2 --reps 2 --no-build --sinks -o $OUT/gpu-speed > $OUT/gpu-speed-stdout.txt 2>&1
t "gpu_speed rc=$?"; grep "^|" $OUT/gpu-speed-stdout.txt | head -40 >> $L
t done
