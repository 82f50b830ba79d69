#!/bin/bash
# The committed tree (series 20ece5495d42) on an H100: depth-0 decode with the attention kernel emptied
# (TQ_FA_TURBO_PROBE=none: wrong results, measurement only) against f16 and turbo3: the ceiling for 0.97x
set -u
export TQ_GGUF_OFFLINE=1 PYTHONUNBUFFERED=1 TQ_GGUF_HOME=/tmp/h-final
cd "$(dirname "$0")/../.."
L=$OUT/log.txt; T0=$(date +%s)
el() { echo $(( $(date +%s) - T0 )); }
t() { echo "[$(el)s] $*" >> $L; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader >> $L
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
cfg = build.BuildConfig(cuda=True, cuda_arch="90", jobs=16, bindings=False, src_pack=Path(".dev/a/src.tar.xz"),
                        targets=("llama-bench",))
build.run(cfg)
PY
t "build rc=$?"; tail -2 /tmp/build.txt >> $L
BIN=$TQ_GGUF_HOME/build/cuda-sm90/bin
[ -x $BIN/llama-bench ] || { tail -80 /tmp/build.txt > $OUT/build.txt; exit 1; }
$BIN/llama-bench --version 2>&1 | grep tq-gguf >> $L
wait $MPID; t "model rc=$?"
MODEL=$TQ_GGUF_HOME/models/synthetic-llama-8b-q4_0.gguf
B() { # name ck depth [env]
  local name=$1 ck=$2 d=$3; shift 3
  env X=0 "$@" $BIN/llama-bench -m $MODEL -fa 1 -ngl 99 -p 0 -n 128 -d $d -r 3 -ctk $ck -ctv $ck -o csv 2>/dev/null | grep -v build_commit | sed "s/^/$name,/" >> $OUT/bench.csv
  t "bench $name $(tail -1 $OUT/bench.csv | awk -F, '{print $(NF-1)}')"
}
for i in 1 2; do
  B f16-d0 f16 0; B t3-d0 turbo3 0; B t3none-d0 turbo3 0 TQ_FA_TURBO_PROBE=none; B t3notile-d0 turbo3 0 TQ_FA_TURBO_PROBE=notile
  B t3notile-d0 turbo3 0 TQ_FA_TURBO_PROBE=notile; B t3none-d0 turbo3 0 TQ_FA_TURBO_PROBE=none; B t3-d0 turbo3 0; B f16-d0 f16 0
done
B t3-d32k turbo3 32768; B t3none-d32k turbo3 32768 TQ_FA_TURBO_PROBE=none
t done
