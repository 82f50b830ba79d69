#!/bin/bash
# device run 4 (same machine, right after run 3): the goal's gpu_speed command (MINB from $1, default
# the build's); $OUT
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
[ -n "${1:-}" ] && export TQ_FA_TURBO_MINB=$1 && t "TQ_FA_TURBO_MINB=$1"
timeout $(( 560 - $(el) )) python scripts/gpu_speed.py --shape llama-8b --depths 0,32768 --caches f16,q8_0,turbo3,turbo2 --reps 2 --no-build --sinks -o $OUT/gpu-speed > $OUT/gpu-speed-stdout.txt 2>&1
t "gpu_speed rc=$?"; grep "^|" $OUT/gpu-speed-stdout.txt | head -40 >> $L
t done
