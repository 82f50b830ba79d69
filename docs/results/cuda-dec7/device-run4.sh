#!/bin/bash
# device run 4 (prefill with per-head masks: one launch per K/V head, its Q heads folded into the columns): per-head attention masks (patch 0013) with a turbo K or V on CUDA. Build, test-backend-ops
# (the new mask_heads cases and the turbo FLASH_ATTN_EXT set), the positional key offset end to end on a
# synthetic llama-1b with a side-car calibration (rotation + a random offset): logits on the GPU against the
# CPU backend with the offset on and off, and llama-bench with the offset on and off; outputs in $OUT
set -u
export TQ_GGUF_OFFLINE=1 PYTHONUNBUFFERED=1 TQ_GGUF_HOME=/tmp/h-d7
cd "$(dirname "$0")/../../.."
export TQ_GGUF_PATCHES=$PWD/.dev/d7/patches TQ_GGUF_CUDA=$PWD/.dev/d7/cuda
L=$OUT/log.txt
T0=$(date +%s)
el() { echo $(( $(date +%s) - T0 )); }
t() { echo "[$(el)s] $*" >> $L; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader >> $L
(PYTHONPATH=.dev/gguf-py python - > /tmp/model.txt 2>&1 <<'PY'
import numpy as np
from tq_gguf import synthmodel
from tq_gguf.calib import fit
from tq_gguf.calib.schema import Calibration, write_sidecar
shp = synthmodel.shape("llama-1b")
synthmodel.write_synthetic_llama("/tmp/m1b.gguf", shp)
rng = np.random.default_rng(0)
layers = fit.default_layers(shp.n_layer, shp.n_head_kv, shp.head_dim)
for lt in layers:
    lt.k_pos = rng.standard_normal((shp.n_head_kv, shp.head_dim))
write_sidecar("/tmp/side.gguf", Calibration("llama", shp.n_layer, layers))
print(shp)
PY
) &
MPID=$!
python - > /tmp/build.txt 2>&1 <<'PY'
from pathlib import Path
from tq_gguf import build
cfg = build.BuildConfig(cuda=True, cuda_arch="90", jobs=16, bindings=False, src_pack=Path(".dev/d7/src.tar.xz"),
                        targets=("llama-bench", "test-backend-ops", "llama-results"))
build.run(cfg)
PY
t "build rc=$?"; tail -2 /tmp/build.txt >> $L
BIN=$TQ_GGUF_HOME/build/cuda-sm90/bin
[ -x $BIN/llama-bench ] || { tail -80 /tmp/build.txt > $OUT/build.txt; exit 1; }
$BIN/llama-bench --version 2>&1 | grep tq-gguf >> $L
TB() {
  local name=$1; shift
  timeout 200 $BIN/test-backend-ops -b CUDA0 "$@" > /tmp/tbo-$name.txt 2>&1; local rc=$?
  echo "test $name rc=$rc: $(grep -c FAIL /tmp/tbo-$name.txt) FAIL lines, $(grep -o '[0-9]*/[0-9]* tests passed' /tmp/tbo-$name.txt | head -1)" > /tmp/tbo-$name.sum
}
TB heads -o FLASH_ATTN_EXT -p "mask_heads" &
TB fa -o FLASH_ATTN_EXT -p "type_K=turbo|type_V=turbo" &
TB rot -o TURBO_ROT_ATTN &
wait $MPID; t "model rc=$?"; tail -2 /tmp/model.txt >> $L
python -c "
import random; random.seed(1)
w='the of and to in is was for on that with as by at from his her an were which are this be or had not but first one their its new after who they have two all has been other when there more time into can only would about people most'.split()
print(' '.join(random.choice(w) for _ in range(60)))" > /tmp/prompt.txt
R() { # name where(gpu|cpu) pos(on|off) ub
  local name=$1 where=$2 pos=$3 ub=$4
  local e="LLAMA_TURBO_CALIB=/tmp/side.gguf"; [ $pos = off ] && e="$e LLAMA_TURBO_POS=off"
  [ $where = cpu ] && e="$e CUDA_VISIBLE_DEVICES="
  env $e timeout 150 $BIN/llama-results -m /tmp/m1b.gguf -fa on -ngl 99 -c 1024 -b 1024 -ub $ub -ctk turbo3 -ctv turbo3 \
      -f /tmp/prompt.txt -o /tmp/res-$name.gguf > /tmp/res-$name.txt 2>&1; local rc=$?
  t "results $name ($e, -ub $ub) rc=$rc; $(grep -i 'offset\|per-head\|CPU (slow)' /tmp/res-$name.txt | sort -u | head -3 | tr '\n' ' ')"
}
C() { t "compare $1 vs $2: $(PYTHONPATH=.dev/gguf-py python .dev/d7/cmp_results.py /tmp/res-$1.gguf /tmp/res-$2.gguf 2>&1 | tail -1)"; }
for ub in 512 1; do
  R gpu-on-$ub gpu on $ub; R cpu-on-$ub cpu on $ub; R gpu-off-$ub gpu off $ub; R cpu-off-$ub cpu off $ub
  C cpu-on-$ub gpu-on-$ub; C cpu-off-$ub gpu-off-$ub; C gpu-off-$ub gpu-on-$ub; C cpu-off-$ub cpu-on-$ub
done
wait
t "tests done"; cat /tmp/tbo-*.sum >> $L
(for f in /tmp/tbo-*.txt; do echo "=== $f"; grep -v "^  .*OK$" $f | tail -8; done) > $OUT/tests.txt
grep "mask_heads" /tmp/tbo-heads.txt | head -200 > $OUT/tests-mask-heads.txt
B() { # name cache [env]
  local name=$1 c=$2; shift 2
  env LLAMA_TURBO_CALIB=/tmp/side.gguf "$@" timeout 150 $BIN/llama-bench -m /tmp/m1b.gguf -fa 1 -ngl 99 -p 512 -n 32 -d 0,4096 -r 2 \
      -ctk $c -ctv $c -o csv > /tmp/b.csv 2> /tmp/b.err
  t "bench $name rc=$? $(grep -v build_commit /tmp/b.csv | awk -F, '{print $(NF-1)}' | tr '\n' ' ')"
  grep -v build_commit /tmp/b.csv | sed "s/^/$name,/" >> $OUT/bench.csv
}
B f16 f16 LLAMA_TURBO_CALIB=off
B turbo3-nopos turbo3 LLAMA_TURBO_POS=off
B turbo3-pos turbo3 X=0
B turbo3-pos turbo3 X=0
B turbo3-nopos turbo3 LLAMA_TURBO_POS=off
t done
