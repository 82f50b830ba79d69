#!/bin/bash
# device run 2 (same machine, right after run 1): tg128 @ 32768 A B B A (new / TQ_FA_TURBO_OFF=48, the
# kernel as before), then the goal's gpu_speed command; $OUT
set -u
export TQ_GGUF_OFFLINE=1 PYTHONUNBUFFERED=1
cd "$(dirname "$0")/../../.."
L=$OUT/log.txt
T0=$(date +%s)
el() { echo $(( $(date +%s) - T0 )); }
t() { echo "[$(el)s] $*" >> $L; }
BIN=$HOME/.cache/tq-gguf/build/cuda-sm90/bin
MODEL=$HOME/.cache/tq-gguf/models/synthetic-llama-8b-q4_0.gguf
[ -x $BIN/llama-bench ] && [ -f $MODEL ] || { echo "no build or model: the machine went back" >> $L; cat $L; exit 1; }
# a failed test of run 1 with the new layout: measure with it off (the env knob), and say so
if [ "$(cat /tmp/rc-fa2 2>/dev/null)" != "0" ] || [ "$(cat /tmp/rc-fa 2>/dev/null)" != "0" ]; then
  export TQ_FA_TURBO_OFF=32; t "run 1's tests failed: TQ_FA_TURBO_OFF=32 for everything below"
fi
B() { # name, then env; uses CK CV D REPS
  local name=$1; shift
  env "$@" $BIN/llama-bench -m $MODEL -fa 1 -ngl 99 -p 0 -n 128 -d ${D:-32768} -r ${REPS:-2} -ctk $CK -ctv $CV -o csv 2>/dev/null | grep -v build_commit | sed "s/^/$name,/" >> $OUT/bench2.csv
  t "bench $name"
}
CK=turbo3 CV=turbo3 B t3 X=0
CK=turbo3 CV=turbo3 B t3-off48 TQ_FA_TURBO_OFF=48
CK=turbo3 CV=turbo3 B t3-off48 TQ_FA_TURBO_OFF=48
CK=turbo3 CV=turbo3 B t3 X=0
cut -d, -f1,17,18,36-38,42,43 $OUT/bench2.csv >> $L 2>/dev/null
timeout $(( 560 - $(el) )) python scripts/gpu_speed.py --shape llama-8b --depths 0,32768 --caches f16,q8_0,turbo3,turbo2 --reps 2 --no-build --sinks -o $OUT/gpu-speed > $OUT/gpu-speed-stdout.txt 2>&1
t "gpu_speed rc=$?"; grep "^|" $OUT/gpu-speed-stdout.txt | head -40 >> $L
t done
