#!/bin/bash
# device run: build llama-bench + test-backend-ops from a source pack in .dev/ (series: .dev/patches,
# the committed patches, and this checkout's cuda/), the conversion micro-benchmark, the tests, the
# prefill A/B, then gpu_speed with the time left; outputs in $OUT
set -u
export TQ_GGUF_OFFLINE=1 PYTHONUNBUFFERED=1
cd "$(dirname "$0")/../../.."   # the repository root
export TQ_GGUF_PATCHES=$PWD/.dev/patches
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
[ -x $BIN/llama-bench ] || { tail -60 /tmp/build.txt; cp /tmp/build.txt $OUT/; exit 1; }
SRC=$HOME/.cache/tq-gguf/src/vendor/llama.cpp
cuobjdump -res-usage $BIN/libggml-cuda.so 2>/dev/null | grep -A1 "turbo_to_f16\|tq_rot_set_rows\|side_scatter" | grep -o "Function [^ ]*\|REG:[0-9]* STACK:[0-9]*" | paste - - | sort -u >> $L
# the converter: same bits as the thread kernel, and its time
nvcc -std=c++17 -arch=sm_90 -O3 -I$SRC/ggml/include -I$SRC/ggml/src -I$SRC/ggml/src/ggml-cuda docs/results/cuda-pp/conv_bench.cu \
    -o /tmp/conv_bench -L$BIN -lggml-cuda -lggml-base -Xlinker -rpath=$BIN > /tmp/cb.txt 2>&1; t "conv_bench build rc=$?"
timeout 60 /tmp/conv_bench > $OUT/conv-bench.txt 2>&1; t "conv_bench rc=$?"; cat /tmp/cb.txt | tail -5 >> $L
timeout 60 $BIN/test-backend-ops -b CUDA0 -o TURBO_ROT_ATTN > $OUT/tbo-rot.txt 2>&1; t "rot rc=$?"
tail -2 $OUT/tbo-rot.txt >> $L; echo "FAIL lines: $(grep -c FAIL $OUT/tbo-rot.txt)" >> $L
timeout 90 $BIN/test-backend-ops -b CUDA0 -o FLASH_ATTN_EXT -p "type_K=turbo|type_V=turbo" > $OUT/tbo-fa.txt 2>&1; t "fa rc=$?"
tail -2 $OUT/tbo-fa.txt >> $L; echo "FAIL lines: $(grep -c FAIL $OUT/tbo-fa.txt)" >> $L
wait $MPID; t "model rc=$?"
B() { # name, then env; uses CK CV D P N
  local name=$1; shift
  env "$@" $BIN/llama-bench -m $MODEL -fa 1 -ngl 99 -p ${P:-2048} -n ${N:-0} -d ${D:-32768} -r ${REPS:-3} -ctk $CK -ctv $CV -o csv 2>/dev/null | grep -v build_commit | sed "s/^/$name,/" >> $OUT/bench.csv
  t "bench $name"
}
# prefill at 32768, A B B A: this change against TQ_FA_TURBO_OFF=12 (4: the thread converter,
# 8: launch_fattn converts and scatters: the code before this change)
D=32768
CK=turbo3 CV=turbo3 B turbo3 X=0
CK=turbo3 CV=turbo3 B turbo3-off12 TQ_FA_TURBO_OFF=12
CK=f16 CV=f16 B f16 X=0
CK=turbo3 CV=turbo3 B turbo3-off12 TQ_FA_TURBO_OFF=12
CK=turbo3 CV=turbo3 B turbo3 X=0
CK=f16 CV=f16 B f16 X=0
# prefill at depth 0: the sink store and CUDA graphs (GGML_CUDA_DISABLE_GRAPHS=1), for the gap's account
D=0
for g in X=0 GGML_CUDA_DISABLE_GRAPHS=1; do   # (any value of GGML_CUDA_DISABLE_GRAPHS disables them)
  n=${g%%=*}; n=${n/X/graphs}; n=${n/GGML_CUDA_DISABLE_GRAPHS/nographs}
  CK=f16 CV=f16 B f16-$n $g
  CK=turbo3 CV=turbo3 B turbo3-$n $g
  CK=turbo3 CV=turbo3 B turbo3-nosink-$n LLAMA_TURBO_SINKS=0 $g
done
unset D
timeout $(( 570 - $(el) )) python scripts/gpu_speed.py --shape llama-8b --depths 0,32768 --caches f16,q8_0,turbo3,turbo2 --reps 2 --no-build --sinks -o $OUT/gpu-speed > /tmp/gs.txt 2>&1
t "gpu_speed rc=$?"; grep "^|" /tmp/gs.txt >> $L
t done
