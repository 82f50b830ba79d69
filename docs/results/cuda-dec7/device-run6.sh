#!/bin/bash
# device run 6: the committed per-head-mask code. test-backend-ops (mask_heads, now with GQA 4 and two
# streams; the turbo FLASH_ATTN_EXT set; TURBO_ROT_ATTN), and the positional offset on a synthetic
# llama-8b (random offset on every layer, side-car calibration): llama-bench at depth 0 and 32768, offset
# on and off; outputs in $OUT
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
shp = synthmodel.shape("llama-8b")
synthmodel.write_synthetic_llama("/tmp/m8b.gguf", shp)
rng = np.random.default_rng(0)
layers = fit.default_layers(shp.n_layer, shp.n_head_kv, shp.head_dim)
for lt in layers:
    lt.k_pos = rng.standard_normal((shp.n_head_kv, shp.head_dim))
write_sidecar("/tmp/side8b.gguf", Calibration("llama", shp.n_layer, layers))
print(shp)
PY
) &
MPID=$!
python - > /tmp/build.txt 2>&1 <<'PY'
from pathlib import Path
from tq_gguf import build
cfg = build.BuildConfig(cuda=True, cuda_arch="90", jobs=16, bindings=False, src_pack=Path(".dev/d7/src.tar.xz"),
                        targets=("llama-bench", "test-backend-ops"))
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
wait
t "tests done"; cat /tmp/tbo-*.sum >> $L
(for f in /tmp/tbo-*.txt; do echo "=== $f"; grep -v "^  .*OK$" $f | tail -8; done) > $OUT/tests.txt
grep "mask_heads" /tmp/tbo-heads.txt > $OUT/tests-mask-heads.txt
t "model: $(tail -1 /tmp/model.txt)"
B() { # name cache depth [env]
  local name=$1 c=$2 d=$3; shift 3
  env LLAMA_TURBO_CALIB=/tmp/side8b.gguf "$@" timeout 150 $BIN/llama-bench -m /tmp/m8b.gguf -fa 1 -ngl 99 -p 512 -n 64 -d $d -r 1 \
      -ctk $c -ctv $c -o csv > /tmp/b.csv 2> /tmp/b.err
  t "bench $name d$d rc=$? $(grep -v build_commit /tmp/b.csv | awk -F, '{print $(NF-1)}' | tr '\n' ' ')"
  grep -v build_commit /tmp/b.csv | sed "s/^/$name,/" >> $OUT/bench.csv
}
for d in 0 32768; do
  B f16 f16 $d LLAMA_TURBO_CALIB=off
  B turbo3-nopos turbo3 $d LLAMA_TURBO_POS=off
  B turbo3-pos turbo3 $d X=0
  B turbo3-nopos turbo3 $d LLAMA_TURBO_POS=off
  B turbo3-pos turbo3 $d X=0
done
t done
