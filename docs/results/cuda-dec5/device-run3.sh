#!/bin/bash
# device run 3 (engineer a): K's RoPE in the fused turbo store, lean (norm/neox over the whole head, angles from
# the graph inputs before the PDL wait), the store in the PDL chain. Build, tests, ncu (during the tests),
# llama-results logits new vs old (bit comparison), tg128 A B B A, the goal command; outputs in $OUT
set -u
export TQ_GGUF_OFFLINE=1 PYTHONUNBUFFERED=1 TQ_GGUF_HOME=/tmp/h-a
cd "$(dirname "$0")/../.."
export TQ_GGUF_PATCHES=$PWD/.dev/a/patches TQ_GGUF_CUDA=$PWD/.dev/a/cuda
cd "$(dirname "$0")/../.."
L=$OUT/log.txt
T0=$(date +%s)
el() { echo $(( $(date +%s) - T0 )); }
t() { echo "[$(el)s] $*" >> $L; }
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader >> $L
MODEL=$TQ_GGUF_HOME/models/synthetic-llama-8b-q4_0.gguf
(PYTHONPATH=.dev/gguf-py python - > /tmp/model-a.txt 2>&1 <<'PY'
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
python - > /tmp/build-a.txt 2>&1 <<'PY'
from pathlib import Path
from tq_gguf import build
cfg = build.BuildConfig(cuda=True, cuda_arch="90", jobs=16, bindings=False, src_pack=Path(".dev/a/src.tar.xz"),
                        targets=("llama-bench", "test-backend-ops", "llama-results"))
build.run(cfg)
PY
t "build rc=$?"; tail -2 /tmp/build-a.txt >> $L
BIN=$TQ_GGUF_HOME/build/cuda-sm90/bin
[ -x $BIN/llama-bench ] || { tail -80 /tmp/build-a.txt > $OUT/build.txt; exit 1; }
$BIN/llama-bench --version 2>&1 | grep tq-gguf >> $L
# tests, in parallel (correctness only)
TB() {
  local name=$1; local envs=$2; shift 2
  env $envs timeout 150 $BIN/test-backend-ops -b CUDA0 "$@" > /tmp/tbo-$name.txt 2>&1; local rc=$?
  echo "test $name ($envs) rc=$rc: $(grep -c FAIL /tmp/tbo-$name.txt) FAIL lines, $(grep -o '[0-9]*/[0-9]* tests passed' /tmp/tbo-$name.txt | head -1)" > /tmp/tbo-$name.sum
}
TB rot X=0 -o TURBO_ROT_ATTN &
TB rot-nopdl TQ_CUDA_STORE_PDL=0 -o TURBO_ROT_ATTN &
TB rot-old "TQ_CUDA_FUSE_ROPE=0 TQ_CUDA_STORE_PDL=0" -o TURBO_ROT_ATTN &
TB setrows X=0 -o SET_ROWS -p turbo &
TB cpy X=0 -o CPY -p turbo &
TB fa X=0 -o FLASH_ATTN_EXT -p "type_K=turbo|type_V=turbo" &
wait $MPID; t "model rc=$? $(ls -la $MODEL | awk '{print $5}')"
OLD="TQ_CUDA_FUSE_ROPE=0 TQ_CUDA_STORE_PDL=0"   # the committed tree's path
E() { case $1 in old) echo "$OLD";; rope) echo TQ_CUDA_STORE_PDL=0;; new) echo X=0;; esac; }
N() { # ncu of the RoPE and store kernels of a depth-0 token (3 tokens with the warm-up)
  local v=$1
  env $(E $v) timeout 12 ncu --kernel-name regex:"tq_rot_set_rows|rope" --metrics gpu__time_duration.sum --csv \
      $BIN/llama-bench -m $MODEL -fa 1 -ngl 99 -p 0 -n 2 -d 0 -r 1 -ctk turbo3 -ctv turbo3 > /tmp/ncu-$v.csv 2>/dev/null
  t "ncu $v rc=$? $(grep -c rope /tmp/ncu-$v.csv) rope rows, $(grep -c tq_rot_set_rows /tmp/ncu-$v.csv) store rows"; gzip -c /tmp/ncu-$v.csv > $OUT/ncu-t3-d0-$v.csv.gz
}
N new; N old   # (test-backend-ops runs beside it)
# logits of every prompt token, fused against TQ_CUDA_FUSE_ROPE=0 (same build, same input)
python -c "
import random; random.seed(1)
w='the of and to in is was for on that with as by at from his her an were which are this be or had not but first one their its new after who they have two all has been other when there more time into can only would about people most'.split()
print(' '.join(random.choice(w) for _ in range(60)))" > /tmp/prompt.txt
R() { # name ctk ub
  local name=$1 ck=$2 ub=$3
  for v in off on; do
    local e=X=0; [ $v = off ] && e="TQ_CUDA_FUSE_ROPE=0 TQ_CUDA_STORE_PDL=0"
    env $e timeout 60 $BIN/llama-results -m $MODEL -fa on -ngl 99 -c 1024 -b 1024 -ub $ub -ctk $ck -ctv $ck \
        -f /tmp/prompt.txt -o /tmp/res-$name-$v.gguf > /tmp/res-$name-$v.txt 2>&1 || echo "results $name $v failed" >> $L
  done
  cmp -s /tmp/res-$name-off.gguf /tmp/res-$name-on.gguf && c=identical || c=DIFFER
  t "results $name (-ctk/-ctv $ck -ub $ub): files $c; $(PYTHONPATH=.dev/gguf-py python .dev/a/cmp_results.py /tmp/res-$name-off.gguf /tmp/res-$name-on.gguf 2>&1 | tail -1)"
}
R t3-ub1 turbo3 1
R t3-ub512 turbo3 512
R t2-ub1 turbo2 1
tail -5 /tmp/res-t3-ub1-on.txt > $OUT/results-t3-ub1-on.txt
wait
t "tests done"; cat /tmp/tbo-*.sum >> $L
(for f in /tmp/tbo-*.txt; do echo "=== $f"; grep -v "^  .*OK$" $f | tail -8; done) > $OUT/tests.txt
grep "rope=" /tmp/tbo-rot.txt | head -40 >> $OUT/tests.txt
B() { # name, then env; uses CK D
  local name=$1; shift
  env "$@" $BIN/llama-bench -m $MODEL -fa 1 -ngl 99 -p 0 -n 128 -d ${D:-0} -r ${RP:-2} -ctk $CK -ctv $CK -o csv 2>/dev/null | grep -v build_commit | sed "s/^/$name,/" >> $OUT/bench.csv
  t "bench $name $(tail -1 $OUT/bench.csv | awk -F, '{print $(NF-1)}')"
}
CK=turbo3 D=0 RP=4; for x in old new new old; do B t3-$x-d0 $(E $x); done
CK=turbo3 D=32768 RP=2; for x in old new new old new old; do B t3-$x-d32k $(E $x); done
timeout $(( 575 - $(el) )) python scripts/gpu_speed.py --shape llama-8b --depths 0,32768 --caches f16,q8_0,turbo3,turbo2 --reps 2 --no-build \
    -o $OUT/gpu-speed > $OUT/gpu-speed-stdout.txt 2>&1
t "gpu_speed rc=$?"; grep "^|" $OUT/gpu-speed-stdout.txt >> $L
t done
