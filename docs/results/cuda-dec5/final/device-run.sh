#!/bin/bash
# The committed tree (series 20ece5495d42: K's RoPE in the fused store) on an H100: build, the issue's full speed table
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
timeout $(( 590 - $(el) )) python scripts/gpu_speed.py --shape llama-8b --depths 0,8192,32768 --prompt 2048 --gen 128 --reps 2 \
    --caches f16,q8_0,q4_0,turbo3,turbo2,q8_0/turbo3 --no-build -o $OUT/gpu-speed > $OUT/gpu-speed-stdout.txt 2>&1
t "gpu_speed rc=$?"; grep "^|" $OUT/gpu-speed-stdout.txt >> $L
