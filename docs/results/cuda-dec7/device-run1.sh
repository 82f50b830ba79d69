#!/bin/bash
# device run 1: the decode kernel's dry pass before the PDL wait. Build, tests, logits dry vs nodry (bits),
# tg128 at depth 0 and 32768 A B B A: dry (default), nodry (TQ_FA_TURBO_PROBE=nodry: instances built without
# it, as committed before), dry off at run time (TQ_FA_TURBO_OFF=128), f16; outputs in $OUT
set -u
export TQ_GGUF_OFFLINE=1 PYTHONUNBUFFERED=1 TQ_GGUF_HOME=/tmp/h-d7
cd "$(dirname "$0")/../../.."
export TQ_GGUF_PATCHES=$PWD/.dev/d7/patches TQ_GGUF_CUDA=$PWD/.dev/d7/cuda
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
if not m.exists():
    tmp = m.with_suffix(".part")
    synthmodel.write_synthetic_llama(tmp, shp)
    tmp.rename(m)
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
  local name=$1; local envs=$2; shift 2
  env $envs timeout 150 $BIN/test-backend-ops -b CUDA0 "$@" > /tmp/tbo-$name.txt 2>&1; local rc=$?
  echo "test $name ($envs) rc=$rc: $(grep -c FAIL /tmp/tbo-$name.txt) FAIL lines, $(grep -o '[0-9]*/[0-9]* tests passed' /tmp/tbo-$name.txt | head -1)" > /tmp/tbo-$name.sum
}
TB fa X=0 -o FLASH_ATTN_EXT -p "type_K=turbo|type_V=turbo" &
TB fa-nopdl GGML_CUDA_PDL=0 -o FLASH_ATTN_EXT -p "type_K=turbo|type_V=turbo" &
TB rot X=0 -o TURBO_ROT_ATTN &
wait $MPID; t "model rc=$? $(ls -la $MODEL | awk '{print $5}')"
python -c "
import random; random.seed(1)
w='the of and to in is was for on that with as by at from his her an were which are this be or had not but first one their its new after who they have two all has been other when there more time into can only would about people most'.split()
print(' '.join(random.choice(w) for _ in range(60)))" > /tmp/prompt.txt
R() { # name ctk ub ctx: logits dry (default) against nodry
  local name=$1 ck=$2 ub=$3 c=$4
  for v in nodry dry; do
    local e=X=0; [ $v = nodry ] && e=TQ_FA_TURBO_PROBE=nodry
    env $e timeout 60 $BIN/llama-results -m $MODEL -fa on -ngl 99 -c $c -b 1024 -ub $ub -ctk $ck -ctv $ck \
        -f /tmp/prompt.txt -o /tmp/res-$name-$v.gguf > /tmp/res-$name-$v.txt 2>&1 || echo "results $name $v failed" >> $L
  done
  cmp -s /tmp/res-$name-nodry.gguf /tmp/res-$name-dry.gguf && r=identical || r=DIFFER
  t "results $name (-ctk/-ctv $ck -ub $ub -c $c): files $r; $(PYTHONPATH=.dev/gguf-py python .dev/d7/cmp_results.py /tmp/res-$name-nodry.gguf /tmp/res-$name-dry.gguf 2>&1 | tail -1)"
}
R t3-ub1 turbo3 1 1024
R t3-ub1-c8k turbo3 1 8192
wait
t "tests done"; cat /tmp/tbo-*.sum >> $L
(for f in /tmp/tbo-*.txt; do echo "=== $f"; grep -v "^  .*OK$" $f | tail -8; done) > $OUT/tests.txt
B() { # name ck depth reps [env]
  local name=$1 ck=$2 d=$3 r=$4; shift 4
  env X=0 "$@" $BIN/llama-bench -m $MODEL -fa 1 -ngl 99 -p 0 -n 128 -d $d -r $r -ctk $ck -ctv $ck -o csv 2>/dev/null | grep -v build_commit | sed "s/^/$name,/" >> $OUT/bench.csv
  t "bench $name $(tail -1 $OUT/bench.csv | awk -F, '{print $(NF-1)}')"
}
for i in 1 2; do
  B f16-d0 f16 0 3; B t3-d0 turbo3 0 3; B t3nodry-d0 turbo3 0 3 TQ_FA_TURBO_PROBE=nodry; B t3off-d0 turbo3 0 3 TQ_FA_TURBO_OFF=128
  B t3off-d0 turbo3 0 3 TQ_FA_TURBO_OFF=128; B t3nodry-d0 turbo3 0 3 TQ_FA_TURBO_PROBE=nodry; B t3-d0 turbo3 0 3; B f16-d0 f16 0 3
done
B t2-d0 turbo2 0 3
for x in t3 t3nodry t3nodry t3; do
  [ $(el) -gt 520 ] && break
  case $x in t3) B t3-d32k turbo3 32768 2;; t3nodry) B t3nodry-d32k turbo3 32768 2 TQ_FA_TURBO_PROBE=nodry;; esac
done
[ $(el) -lt 540 ] && B f16-d32k f16 32768 2
t done
