#!/bin/bash
# device run 2 (one call; $OUT): build; quant_check.cu; tests; tg128 A B B A at depth 0 and 32768 of the
# store as committed in 3f5a7ae (TQ_FA_TURBO_OFF=1024) against the new one (K and V in one launch, a warp
# per block at decode, the shared-memory quantizer with its chains rolled by 8), 4 warps per block (512),
# K and V in two launches (128); ncu of the store and attention kernels; the goal's gpu_speed command.
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
TB rot-off1024 TQ_FA_TURBO_OFF=1024 -o TURBO_ROT_ATTN
TB rot-off512 TQ_FA_TURBO_OFF=512 -o TURBO_ROT_ATTN
TB rot-off128 TQ_FA_TURBO_OFF=128 -o TURBO_ROT_ATTN
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
for r in "turbo3 t3-new X=0" "turbo3 t3-v0 TQ_FA_TURBO_OFF=1024" "turbo3 t3-v0 TQ_FA_TURBO_OFF=1024" "turbo3 t3-new X=0" "turbo3 t3-w4 TQ_FA_TURBO_OFF=512" "turbo3 t3-nopair TQ_FA_TURBO_OFF=128" "turbo3 t3-nopair TQ_FA_TURBO_OFF=128" "turbo3 t3-w4 TQ_FA_TURBO_OFF=512" "turbo2 t2-new X=0" "turbo2 t2-v0 TQ_FA_TURBO_OFF=1024" "f16 f16 X=0"; do
  set -- $r; CK=$1 CV=$1 D=0 B $2-d0 ${@:3}
done
for r in "turbo3 t3-new X=0" "turbo3 t3-v0 TQ_FA_TURBO_OFF=1024" "turbo3 t3-v0 TQ_FA_TURBO_OFF=1024" "turbo3 t3-new X=0"; do
  set -- $r
  [ $(el) -lt 500 ] || { t "skip $2"; continue; }
  CK=$1 CV=$1 D=32768 B $2-d32k ${@:3}
done
for v in new:0 v0:1024 w4:512; do
  [ $(el) -lt 470 ] || { t "skip ncu ${v%%:*}"; continue; }
  TQ_FA_TURBO_OFF=${v##*:} timeout 40 ncu --cache-control none --clock-control none -k "regex:tq_rot|flash_attn" --metrics gpu__time_duration.sum,smsp__inst_executed.sum --csv $BIN/llama-bench -m $MODEL -fa 1 -ngl 99 -p 0 -n 2 -d 0 -r 1 -ctk turbo3 -ctv turbo3 2>/dev/null | grep '^"' | gzip > /tmp/ncu-${v%%:*}.csv.gz
  t "ncu ${v%%:*} rc=$?"
done
cp /tmp/ncu-*.csv.gz $OUT/ 2>/dev/null
[ $(el) -lt 510 ] && { timeout 85 python scripts/gpu_speed.py --shape llama-8b --depths 0,32768 --caches f16,q8_0,turbo3,turbo2 --reps 2 --no-build -o $OUT/gpu-speed > $OUT/gpu-speed-stdout.txt 2>&1
  t "gpu_speed rc=$?"; grep "^|" $OUT/gpu-speed-stdout.txt | grep tg128 >> $L; }
cat $OUT/quant-check.txt >> $L
cut -d, -f1,17,18,36- $OUT/bench.csv >> $L 2>/dev/null
(cd $OUT && tar cf misc.tar tests.txt quant-check.txt registers.txt ncu-*.csv.gz && rm -f tests.txt quant-check.txt registers.txt ncu-*.csv.gz)
t done
cat $L
