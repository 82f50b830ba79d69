#!/bin/bash
# device run 4 (same machine, right after run 3): the goal's gpu_speed command with the environment given as
# arguments (the configuration chosen from run 3, made the default afterwards), then tg128 @ 32768 A B B A
# rows against the kernel of the last section (TQ_FA_TURBO_OFF=64 and no new knob) and a trace; $OUT
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
for e in "$@"; do export "$e"; done
t "env: $*"
timeout 300 python scripts/gpu_speed.py --shape llama-8b --depths 0,32768 --caches f16,q8_0,turbo3,turbo2 --reps 2 --no-build --sinks -o $OUT/gpu-speed > $OUT/gpu-speed-stdout.txt 2>&1
t "gpu_speed rc=$?"; grep "^|" $OUT/gpu-speed-stdout.txt | head -40 >> $L
B() { # name, then env; uses CK CV D REPS
  local name=$1; shift
  env "$@" $BIN/llama-bench -m $MODEL -fa 1 -ngl 99 -p 0 -n 128 -d ${D:-32768} -r ${REPS:-2} -ctk $CK -ctv $CV -o csv 2>/dev/null | grep -v build_commit | sed "s/^/$name,/" >> $OUT/bench4.csv
  t "bench $name"
}
OLD="TQ_FA_TURBO_OFF=64 TQ_FA_TURBO_KTROLL=0 TQ_FA_TURBO_EXP=0"
for r in "turbo3 t3-new X=0" "turbo3 t3-old $OLD" "turbo3 t3-old $OLD" "turbo3 t3-new X=0" "turbo2 t2-new X=0" "turbo2 t2-old $OLD" "turbo2 t2-old $OLD" "turbo2 t2-new X=0" "turbo3 t3-new X=0" "turbo3 t3-old $OLD"; do
  set -- $r
  [ $(el) -lt 520 ] || { t "skip $2"; continue; }
  CK=$1 CV=$1 B $2 ${@:3}
done
cut -d, -f1,17,18,36-38,42,43 $OUT/bench4.csv >> $L 2>/dev/null
if [ $(el) -lt 560 ]; then
  TQ_FA_TURBO_PROBE=trace timeout 30 $BIN/llama-bench -m $MODEL -fa 1 -ngl 99 -p 0 -n 4 -d 32768 -r 1 -ctk turbo3 -ctv turbo3 2>&1 | grep "TQTRACE\|tg4" > $OUT/trace-new.txt
  t "trace: $(grep -c TQTRACE $OUT/trace-new.txt) lines"
fi
t done
cat $L
