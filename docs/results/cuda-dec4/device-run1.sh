#!/bin/bash
# device run 1 (one call; $OUT): build; the warp quantizer checked against the block quantizer on the
# device (quant_check.cu); tests; per-kernel time of decode tokens (nsys, else ncu) for f16 and turbo3;
# tg128 A B B A at depth 0 and 32768: the K and V writes in one launch with the shared-memory quantizer
# (default) against TQ_FA_TURBO_OFF=384 (two launches, the shuffle quantizer), 128 (two launches),
# 256 (shuffle quantizer); the goal's gpu_speed command.
set -u
export TQ_GGUF_OFFLINE=1 PYTHONUNBUFFERED=1
cd "$(dirname "$0")/../../.."   # the repository root
L=$OUT/log.txt
T0=$(date +%s)
el() { echo $(( $(date +%s) - T0 )); }
t() { echo "[$(el)s] $*" >> $L; }
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader >> $L
t "nsys: $(which nsys) ncu: $(which ncu)"
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
(nvcc -std=c++17 -arch=sm_90 -O3 -I cuda docs/results/cuda-dec4/quant_check.cu -o /tmp/qc > /tmp/qc-build.txt 2>&1) &
QPID=$!
python - > /tmp/build.txt 2>&1 <<'PY'
from pathlib import Path
from tq_gguf import build
cfg = build.BuildConfig(cuda=True, cuda_arch="90", jobs=16, bindings=False, src_pack=Path(".dev/src.tar.xz"),
                        targets=("llama-bench", "test-backend-ops"))
build.run(cfg)
PY
t "build rc=$?"; tail -3 /tmp/build.txt >> $L
wait $QPID; /tmp/qc > $OUT/quant-check.txt 2>&1; t "quant_check rc=$? $(tail -1 $OUT/quant-check.txt)"; cat /tmp/qc-build.txt >> $OUT/quant-check.txt
BIN=$HOME/.cache/tq-gguf/build/cuda-sm90/bin
[ -x $BIN/llama-bench ] || { tail -80 /tmp/build.txt; cp /tmp/build.txt $OUT/; exit 1; }
cuobjdump -res-usage $BIN/libggml-cuda.so 2>/dev/null | grep -A1 "tq_rot_set_rows" > $OUT/registers.txt
TB() { # name, env, then test-backend-ops args
  local name=$1 envs=$2; shift 2
  env $envs timeout 90 $BIN/test-backend-ops -b CUDA0 "$@" > /tmp/tbo-$name.txt 2>&1; local rc=$?
  t "test $name ($envs) rc=$rc: $(grep -c FAIL /tmp/tbo-$name.txt) FAIL lines, $(grep -o '[0-9]*/[0-9]* tests passed' /tmp/tbo-$name.txt | head -1)"
  grep FAIL /tmp/tbo-$name.txt | head -3 >> $L
}
TB rot X=0 -o TURBO_ROT_ATTN
TB rot-off384 TQ_FA_TURBO_OFF=384 -o TURBO_ROT_ATTN
TB setrows X=0 -o SET_ROWS -p turbo
TB cpy X=0 -o CPY -p turbo
TB fa X=0 -o FLASH_ATTN_EXT -p "type_K=turbo|type_V=turbo"
(for f in /tmp/tbo-*.txt; do echo "=== $f"; grep -v "^  .*OK$" $f | tail -8; done) > $OUT/tests.txt
wait $MPID; t "model rc=$?"
B() { # name, then env; uses CK CV D REPS
  local name=$1; shift
  env "$@" $BIN/llama-bench -m $MODEL -fa 1 -ngl 99 -p 0 -n 128 -d ${D:-0} -r ${REPS:-2} -ctk $CK -ctv $CV -o csv 2>/dev/null | grep -v build_commit | sed "s/^/$name,/" >> $OUT/bench.csv
  t "bench $name $(tail -1 $OUT/bench.csv | cut -d, -f37-)"
}
# per-kernel time of decode tokens at depth 0 (32 tokens)
PROF() { # name, cache, depth, env
  [ $(el) -lt ${4:-480} ] || { t "skip prof $1"; return; }
  if which nsys > /dev/null 2>&1; then
    env $5 timeout 60 nsys profile -t cuda --cuda-graph-trace=node -s none --cpuctxsw=none -f true -o /tmp/ns-$1 $BIN/llama-bench -m $MODEL -fa 1 -ngl 99 -p 0 -n 32 -d $3 -r 1 -ctk $2 -ctv $2 > /tmp/ns-$1.txt 2>&1
    t "nsys $1 rc=$?"
    timeout 60 nsys stats -q -r cuda_gpu_trace -f csv -o /tmp/ns-$1 /tmp/ns-$1.nsys-rep > /dev/null 2>&1
    t "nsys stats $1 rc=$? $(ls /tmp/ns-$1*.csv 2>/dev/null)"
    for f in /tmp/ns-$1*.csv; do [ -f $f ] && gzip -c $f > $OUT/$(basename $f).gz; done
  else
    env $5 timeout 60 ncu --cache-control none --clock-control none --metrics gpu__time_duration.sum --csv $BIN/llama-bench -m $MODEL -fa 1 -ngl 99 -p 0 -n 2 -d $3 -r 1 -ctk $2 -ctv $2 2>/dev/null | gzip > $OUT/ncu-$1.csv.gz
    t "ncu $1"
  fi
}
PROF f16-d0 f16 0 480 X=0
PROF t3-d0 turbo3 0 480 X=0
PROF t3old-d0 turbo3 0 480 TQ_FA_TURBO_OFF=384
for r in "turbo3 t3-new X=0" "turbo3 t3-old TQ_FA_TURBO_OFF=384" "turbo3 t3-old TQ_FA_TURBO_OFF=384" "turbo3 t3-new X=0" "turbo3 t3-nopair TQ_FA_TURBO_OFF=128" "turbo3 t3-shfl TQ_FA_TURBO_OFF=256" "f16 f16 X=0"; do
  set -- $r; CK=$1 CV=$1 D=0 B $2-d0 ${@:3}
done
[ $(el) -lt 470 ] && { timeout 120 python scripts/gpu_speed.py --shape llama-8b --depths 0,32768 --caches f16,q8_0,turbo3,turbo2 --reps 2 --no-build -o $OUT/gpu-speed > $OUT/gpu-speed-stdout.txt 2>&1
  t "gpu_speed rc=$?"; grep "^|" $OUT/gpu-speed-stdout.txt | grep tg128 >> $L; }
for r in "turbo3 t3-new X=0" "turbo3 t3-old TQ_FA_TURBO_OFF=384" "turbo3 t3-old TQ_FA_TURBO_OFF=384" "turbo3 t3-new X=0"; do
  set -- $r
  [ $(el) -lt 545 ] || { t "skip $2"; continue; }
  CK=$1 CV=$1 D=32768 B $2-d32k ${@:3}
done
PROF t3-d32k turbo3 32768 540 X=0
cut -d, -f1,17,18,36- $OUT/bench.csv >> $L 2>/dev/null
t done
cat $L
