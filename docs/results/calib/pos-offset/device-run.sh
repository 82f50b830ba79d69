#!/bin/bash
# device run: does a turbo3 cache with the positional key offset (patch 0011) run on CUDA, and at
# what cost? llama-bench on a synthetic llama-1b (random weights) with a side-car calibration
# (rotation transforms + a random offset), the offset on and off (LLAMA_TURBO_POS=off); outputs in $OUT
set -u
export TQ_GGUF_OFFLINE=1 PYTHONUNBUFFERED=1
cd "$(dirname "$0")/../../../.."   # the repository root
L=$OUT/log.txt
T0=$(date +%s)
t() { echo "[$(( $(date +%s) - T0 ))s] $*" >> $L; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader >> $L
(PYTHONPATH=.dev/gguf-py python - > /tmp/model.txt 2>&1 <<'PY'
import numpy as np
from tq_gguf import synthmodel
from tq_gguf.calib import fit
from tq_gguf.calib.schema import Calibration, write_sidecar
shp = synthmodel.shape("llama-1b")
synthmodel.write_synthetic_llama("/tmp/m.gguf", shp)
rng = np.random.default_rng(0)
layers = fit.default_layers(shp.n_layer, shp.n_head_kv, shp.head_dim)
for lt in layers:
    lt.k_pos = rng.standard_normal((shp.n_head_kv, shp.head_dim))
write_sidecar("/tmp/side.gguf", Calibration("llama", shp.n_layer, layers))
PY
) &
MPID=$!
python - > /tmp/build.txt 2>&1 <<'PY'
from pathlib import Path
from tq_gguf import build
build.run(build.BuildConfig(cuda=True, cuda_arch="90", jobs=16, bindings=False, src_pack=Path(".dev/src.tar.xz"),
                            targets=("llama-bench",)))
PY
t "build rc=$?"; tail -2 /tmp/build.txt >> $L
wait $MPID; t "model rc=$?"; tail -3 /tmp/model.txt >> $L
BIN=$HOME/.cache/tq-gguf/build/cuda-sm90/bin
[ -x $BIN/llama-bench ] || { tail -40 /tmp/build.txt >> $L; exit 1; }
B() { # name, cache, then env
  local name=$1 c=$2; shift 2
  env LLAMA_TURBO_CALIB=/tmp/side.gguf "$@" timeout 120 $BIN/llama-bench -m /tmp/m.gguf -fa 1 -ngl 99 -p 512 -n 32 -d 0,4096 -r 2 \
      -ctk $c -ctv $c -o csv > /tmp/b.csv 2> /tmp/b.err
  t "bench $name rc=$?"
  grep -v build_commit /tmp/b.csv | sed "s/^/$name,/" >> $OUT/bench.csv
  grep -i "offset\|turbo cal\|error\|assert" /tmp/b.err | sort | uniq -c | head -8 >> $L
}
B f16 f16 LLAMA_TURBO_CALIB=off
B turbo3-nopos turbo3 LLAMA_TURBO_POS=off
B turbo3-pos turbo3 X=0
t done
