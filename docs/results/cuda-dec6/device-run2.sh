#!/bin/bash
# h24-attn-fixed device run 2 ($OUT): default = sink rows in the last parallel block, both rotations'
# signs before the grid dependency wait, mask values staged with the rows in the short-context
# instance; old = TQ_FA_TURBO_OFF=45056 (the committed kernel); single bits; the goal command.
set -u
export TQ_GGUF_OFFLINE=1 PYTHONUNBUFFERED=1 TQ_GGUF_HOME=/tmp/h-b
cd "$(dirname "$0")/../.."   # the repository root
cp -r .dev/b/cuda/. cuda/     # this branch's cuda/ (the pack's series hash is computed from it)
L=$OUT/log.txt
T0=$(date +%s)
el() { echo $(( $(date +%s) - T0 )); }
t() { echo "[$(el)s] $*" >> $L; }
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader >> $L
MODEL=$TQ_GGUF_HOME/models/synthetic-llama-8b-q4_0.gguf
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
cfg = build.BuildConfig(cuda=True, cuda_arch="90", jobs=16, bindings=False, src_pack=Path(".dev/b/src.tar.xz"),
                        targets=("llama-bench", "test-backend-ops"))
build.run(cfg)
PY
t "build rc=$?"; tail -3 /tmp/build.txt >> $L
BIN=$TQ_GGUF_HOME/build/cuda-sm90/bin
[ -x $BIN/llama-bench ] || { tail -60 /tmp/build.txt; cp /tmp/build.txt $OUT/; exit 1; }
$BIN/llama-bench --version 2>&1 | grep tq-gguf >> $L
TB() { # name, env, then test-backend-ops args
  local name=$1 envs=$2; shift 2
  env $envs timeout 90 $BIN/test-backend-ops -b CUDA0 "$@" > /tmp/tbo-$name.txt 2>&1; local rc=$?
  t "test $name ($envs) rc=$rc: $(grep -c FAIL /tmp/tbo-$name.txt) FAIL lines, $(grep -o '[0-9]*/[0-9]* tests passed' /tmp/tbo-$name.txt | head -1)"
  grep FAIL /tmp/tbo-$name.txt | head -3 >> $L
}
TB rot X=0 -o TURBO_ROT_ATTN
TB fa X=0 -o FLASH_ATTN_EXT -p "type_K=turbo|type_V=turbo"
TB setrows X=0 -o SET_ROWS -p turbo
TB cpy X=0 -o CPY -p turbo
(for f in /tmp/tbo-*.txt; do echo "=== $f"; grep -v "^  .*OK$" $f | tail -8; done) > $OUT/tests.txt
wait $MPID; t "model rc=$?"
B() { # name, then env; uses CK D
  local name=$1; shift
  env "$@" $BIN/llama-bench -m $MODEL -fa 1 -ngl 99 -p 0 -n 128 -d ${D:-0} -r 2 -ctk $CK -ctv $CK -o csv 2>/dev/null | grep -v build_commit | sed "s/^/$name,/" >> $OUT/bench.csv
  t "bench $name $(tail -1 $OUT/bench.csv | cut -d, -f37-)"
}
OLD=TQ_FA_TURBO_OFF=45056
for r in "turbo3 t3-new X=0" "turbo3 t3-old $OLD" "turbo3 t3-old $OLD" "turbo3 t3-new X=0" \
         "turbo3 t3-sink0 TQ_FA_TURBO_OFF=4096" "turbo3 t3-nopresign TQ_FA_TURBO_OFF=8192" "turbo3 t3-nomstage TQ_FA_TURBO_OFF=32768" \
         "turbo3 t3-pb1 TQ_FA_TURBO_OFF=16384" "turbo3 t3-new X=0" "turbo3 t3-old $OLD" \
         "turbo2 t2-new X=0" "turbo2 t2-old $OLD" "turbo2 t2-new X=0" "f16 f16 X=0"; do
  set -- $r; CK=$1 D=0 B $2-d0 ${@:3}
done
for r in "turbo3 t3-new X=0" "turbo3 t3-old $OLD" "turbo3 t3-new X=0" "turbo3 t3-old $OLD"; do
  set -- $r
  [ $(el) -lt 405 ] || { t "skip $2"; continue; }
  CK=$1 D=32768 B $2-d32k ${@:3}
done
if [ $(el) -lt 392 ]; then
  timeout $(( 445 - $(el) )) python scripts/gpu_speed.py --shape llama-8b --depths 0,32768 --caches f16,q8_0,turbo3,turbo2 --reps 2 --no-build \
    -o $OUT/gpu-speed > $OUT/gpu-speed-stdout.txt 2>&1
  t "gpu_speed rc=$?"; grep "^|" $OUT/gpu-speed-stdout.txt >> $L
else
  t "skip gpu_speed"
fi
cut -d, -f1,17,18,36- $OUT/bench.csv >> $L 2>/dev/null
t done
cat $L
