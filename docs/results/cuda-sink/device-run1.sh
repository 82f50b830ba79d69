#!/bin/bash
# device run 1 (diagnosis): build llama-bench (+ the temporary tq-trace patch 0012), then pp2048 with
# the sink store on and off under TQ_TRACE (per-ubatch host times, graph reallocations),
# TQ_TRACE=2 (a sync after every ubatch) and TQ_PROF=1 (per-node GPU times, CUDA graphs off)
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
wait $MPID; t "model rc=$?"
TR=$OUT/trace.txt
B() { # name, then env; uses CK CV D P REPS
  local name=$1; shift
  echo "=== $name D=${D:-0} $*" >> $TR
  env "$@" $BIN/llama-bench -m $MODEL -fa 1 -ngl 99 -p ${P:-2048} -n 0 -d ${D:-0} -r ${REPS:-3} -ctk $CK -ctv $CV -o csv 2>/tmp/err.txt | grep -v build_commit | sed "s/^/$name,/" >> $OUT/bench.csv
  grep "TQT\|TQP\|sched_reserve: graph\|compute buffer size" /tmp/err.txt >> $TR
  t "bench $name"
}
CK=turbo3 CV=turbo3 B t3-trace1 TQ_TRACE=1
CK=turbo3 CV=turbo3 B t3-nosink-trace1 TQ_TRACE=1 LLAMA_TURBO_SINKS=0
CK=turbo3 CV=turbo3 B t3-trace2 TQ_TRACE=2
CK=turbo3 CV=turbo3 B t3-nosink-trace2 TQ_TRACE=2 LLAMA_TURBO_SINKS=0
REPS=2 CK=turbo3 CV=turbo3 B t3-prof TQ_PROF=1 GGML_CUDA_DISABLE_GRAPHS=1
REPS=2 CK=turbo3 CV=turbo3 B t3-nosink-prof TQ_PROF=1 GGML_CUDA_DISABLE_GRAPHS=1 LLAMA_TURBO_SINKS=0
D=32768 REPS=3 CK=turbo3 CV=turbo3 B t3-trace1 TQ_TRACE=1
D=32768 REPS=3 CK=turbo3 CV=turbo3 B t3-nosink-trace1 TQ_TRACE=1 LLAMA_TURBO_SINKS=0
D=32768 REPS=2 CK=turbo3 CV=turbo3 B t3-trace2 TQ_TRACE=2
D=32768 REPS=2 CK=turbo3 CV=turbo3 B t3-nosink-trace2 TQ_TRACE=2 LLAMA_TURBO_SINKS=0
t done
