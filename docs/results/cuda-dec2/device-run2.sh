#!/bin/bash
# device run 2: build (.dev/src.tar.xz: mask staging on by default, TQ_FA_TURBO_EXP=1 no-rescale, MINB/STAGES knobs),
# test-backend-ops, SASS of the long-context instance, tg128 @ 32768 A/B rows, ncu with source-level stall sampling; $OUT
set -u
export TQ_GGUF_OFFLINE=1 PYTHONUNBUFFERED=1
cd "$(dirname "$0")/../../.."   # the repository root
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
[ -x $BIN/llama-bench ] || { tail -80 /tmp/build.txt; cp /tmp/build.txt $OUT/; exit 1; }
cuobjdump -res-usage $BIN/libggml-cuda.so 2>/dev/null | grep -A1 "mma_turbo" | grep -o "Li128EL9ggml_type[0-9]*ELS0_[0-9]*ELi[0-9]ELi[0-9]ELi[0-9]ELb[01]ELb[01]\|REG:[0-9]* STACK:[0-9]*" | paste - - > /tmp/registers.txt
TB() { # name, then env, then test-backend-ops args
  local name=$1 envs=$2; shift 2
  env $envs timeout 90 $BIN/test-backend-ops -b CUDA0 "$@" > /tmp/tbo-$name.txt 2>&1; local rc=$?
  t "test $name ($envs) rc=$rc: $(grep -c FAIL /tmp/tbo-$name.txt) FAIL lines, $(grep -o '[0-9]*/[0-9]* tests passed' /tmp/tbo-$name.txt | head -1)"
  grep FAIL /tmp/tbo-$name.txt | head -3 >> $L
}
TB fa X=0 -o FLASH_ATTN_EXT -p "type_K=turbo|type_V=turbo"
TB fa-off2 "TQ_FA_TURBO_OFF=2" -o FLASH_ATTN_EXT -p "type_K=turbo|type_V=turbo"
TB fa-off2-exp1 "TQ_FA_TURBO_OFF=2 TQ_FA_TURBO_EXP=1" -o FLASH_ATTN_EXT -p "type_K=turbo|type_V=turbo"
TB fa-off2-minb3 "TQ_FA_TURBO_OFF=2 TQ_FA_TURBO_EXP=1 TQ_FA_TURBO_MINB=3" -o FLASH_ATTN_EXT -p "type_K=turbo|type_V=turbo"
TB rot X=0 -o TURBO_ROT_ATTN
TB rot-off2 "TQ_FA_TURBO_OFF=2 TQ_FA_TURBO_EXP=1" -o TURBO_ROT_ATTN
(for f in /tmp/tbo-*.txt; do echo "=== $f"; grep -v "^  .*OK$" $f | tail -8; done; echo; cat /tmp/registers.txt) > $OUT/tests.txt
cuobjdump -sass -fun '_Z24flash_attn_ext_mma_turboILi128EL9ggml_type129ELS0_129ELi2ELi2ELi0ELb0ELb1EEvPKcS2_S2_S2_S2_PKiPfP6float2ffffjfi5uint3iiiiiiiiiiiliiliiiiil13tq_fattn_side' $BIN/libggml-cuda.so > /tmp/kt-sass.txt 2>&1
t "sass: $(grep -c HMMA /tmp/kt-sass.txt) HMMA, $(wc -l < /tmp/kt-sass.txt) lines"
wait $MPID; t "model rc=$?"
B() { # name, then env; uses CK CV D REPS
  local name=$1; shift
  env "$@" $BIN/llama-bench -m $MODEL -fa 1 -ngl 99 -p 0 -n 128 -d ${D:-32768} -r ${REPS:-2} -ctk $CK -ctv $CV -o csv 2>/dev/null | grep -v build_commit | sed "s/^/$name,/" >> $OUT/bench2.csv
  t "bench $name"
}
for r in "turbo3 t3 X=0" "turbo3 t3-off64 TQ_FA_TURBO_OFF=64" "turbo3 t3-exp1 TQ_FA_TURBO_EXP=1" "turbo3 t3-minb3 TQ_FA_TURBO_MINB=3" "turbo3 t3-minb3-exp1 TQ_FA_TURBO_MINB=3 TQ_FA_TURBO_EXP=1" "turbo3 t3-st3 TQ_FA_TURBO_STAGES=3" "f16 f16 X=0" "turbo2 t2 X=0" "turbo3 t3-off64 TQ_FA_TURBO_OFF=64" "turbo3 t3 X=0"; do
  set -- $r
  [ $(el) -lt 540 ] || { t "skip $2"; continue; }
  CK=$1 CV=$1 B $2 ${@:3}
done
cut -d, -f1,17,18,36-38,42,43 $OUT/bench2.csv >> $L 2>/dev/null
if [ $(el) -lt 555 ]; then
  timeout 40 ncu --cache-control none --clock-control none -k regex:flash_attn_ext_mma_turbo --launch-skip 40 --launch-count 1 --section SourceCounters --section WarpStateStats --metrics gpu__time_duration.sum,smsp__inst_executed.sum -o /tmp/prof $BIN/llama-bench -m $MODEL -fa 1 -ngl 99 -p 0 -n 4 -d 32768 -r 1 -ctk turbo3 -ctv turbo3 > /tmp/ncu-prof.txt 2>&1
  t "ncu prof rc=$?"
  ncu --import /tmp/prof.ncu-rep --page source --csv --print-source sass > /tmp/sass-prof.csv 2>&1; t "source page rc=$? $(wc -l < /tmp/sass-prof.csv) lines"
  ncu --import /tmp/prof.ncu-rep --page details > /tmp/ncu-details.txt 2>&1
fi
tar czf $OUT/prof.tgz -C /tmp kt-sass.txt sass-prof.csv ncu-details.txt ncu-prof.txt 2>/dev/null
t done
cat $L
