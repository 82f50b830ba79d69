#!/bin/bash
# device run 2 (one call: build, tests, A/B, goal command, traces; $OUT): tiles of the long-context
# instance taken from a per-head counter, blocks' (y, z) remapped so each head has blocks of both
# dispatch ranks (TQ_FA_TURBO_OFF=128 = rows fixed per warp, as before).
# The goal's gpu_speed command runs with the configuration whose turbo3 A/B rows were fastest.
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
cuobjdump -res-usage $BIN/libggml-cuda.so 2>/dev/null | grep -A1 "mma_turbo" | grep -o "Li128EL9ggml_type[0-9]*ELS0_[0-9]*ELi[0-9]ELi[0-9]ELi[0-9]ELb[01]ELb[01]ELb[01]\|REG:[0-9]* STACK:[0-9]*" | paste - - > $OUT/registers.txt
TB() { # name, env, then test-backend-ops args
  local name=$1 envs=$2; shift 2
  env $envs timeout 90 $BIN/test-backend-ops -b CUDA0 "$@" > /tmp/tbo-$name.txt 2>&1; local rc=$?
  t "test $name ($envs) rc=$rc: $(grep -c FAIL /tmp/tbo-$name.txt) FAIL lines, $(grep -o '[0-9]*/[0-9]* tests passed' /tmp/tbo-$name.txt | head -1)"
  grep FAIL /tmp/tbo-$name.txt | head -3 >> $L
}
TB fa X=0 -o FLASH_ATTN_EXT -p "type_K=turbo|type_V=turbo"
TB fa-off2 TQ_FA_TURBO_OFF=2 -o FLASH_ATTN_EXT -p "type_K=turbo|type_V=turbo"
TB rot X=0 -o TURBO_ROT_ATTN
TB rot-off2 TQ_FA_TURBO_OFF=2 -o TURBO_ROT_ATTN
TB rot-off130 TQ_FA_TURBO_OFF=130 -o TURBO_ROT_ATTN
TB fa-again X=0 -o FLASH_ATTN_EXT -p "type_K=turbo|type_V=turbo"
(for f in /tmp/tbo-*.txt; do echo "=== $f"; grep -v "^  .*OK$" $f | tail -8; done) > $OUT/tests.txt
wait $MPID; t "model rc=$?"
B() { # name, then env; uses CK CV D REPS
  local name=$1; shift
  env "$@" $BIN/llama-bench -m $MODEL -fa 1 -ngl 99 -p 0 -n 128 -d ${D:-32768} -r ${REPS:-2} -ctk $CK -ctv $CV -o csv 2>/dev/null | grep -v build_commit | sed "s/^/$name,/" >> $OUT/bench2.csv
  t "bench $name $(tail -1 $OUT/bench2.csv | cut -d, -f37)"
}
for r in "turbo3 t3-steal X=0" "turbo3 t3-fixed TQ_FA_TURBO_OFF=128" "turbo3 t3-fixed TQ_FA_TURBO_OFF=128" "turbo3 t3-steal X=0"; do
  set -- $r; CK=$1 CV=$1 B $2 ${@:3}
done
# the configuration for the goal's command: the faster of the two (mean of its rows)
WIN=$(python3 - $OUT/bench2.csv <<'PY'
import csv, sys, collections
m = collections.defaultdict(list)
for row in csv.reader(open(sys.argv[1])):
    m[row[0]].append(float(row[-2]))
print("X=0" if sum(m["t3-steal"])/len(m["t3-steal"]) >= sum(m["t3-fixed"])/len(m["t3-fixed"]) else "TQ_FA_TURBO_OFF=128")
PY
)
t "goal command env: $WIN"
env $WIN timeout 200 python scripts/gpu_speed.py --shape llama-8b --depths 0,32768 --caches f16,q8_0,turbo3,turbo2 --reps 2 --no-build -o $OUT/gpu-speed > $OUT/gpu-speed-stdout.txt 2>&1
t "gpu_speed rc=$?"; grep "^|" $OUT/gpu-speed-stdout.txt | grep tg128 >> $L
for r in "turbo2 t2-steal X=0" "turbo2 t2-fixed TQ_FA_TURBO_OFF=128" "turbo3 t3-steal X=0" "turbo3 t3-fixed TQ_FA_TURBO_OFF=128" "turbo2 t2-fixed TQ_FA_TURBO_OFF=128" "turbo2 t2-steal X=0" "f16 f16 X=0"; do
  set -- $r
  [ $(el) -lt 530 ] || { t "skip $2"; continue; }
  CK=$1 CV=$1 B $2 ${@:3}
done
for v in steal:0 fixed:128; do
  [ $(el) -lt 565 ] || { t "skip trace ${v%%:*}"; continue; }
  TQ_FA_TURBO_OFF=${v##*:} TQ_FA_TURBO_PROBE=trace timeout 25 $BIN/llama-bench -m $MODEL -fa 1 -ngl 99 -p 0 -n 4 -d 32768 -r 1 -ctk turbo3 -ctv turbo3 2>&1 | grep "TQTRACE\|tg4" | gzip > /tmp/trace-${v%%:*}.txt.gz
  t "trace ${v%%:*}: $(zcat /tmp/trace-${v%%:*}.txt.gz | grep -c TQTRACE) lines"
done
tar cf $OUT/traces.tar -C /tmp trace-steal.txt.gz trace-fixed.txt.gz 2>/dev/null
cut -d, -f1,17,18,36-38,42,43 $OUT/bench2.csv >> $L 2>/dev/null
t done
cat $L
