#!/bin/bash
# device run 1: CUDA build of this tree (.dev/src.tar.xz), then test-backend-ops for every turbo op the
# block-scale change touches (the cache writes: SET_ROWS, CPY, the fused TURBO_ROT_ATTN) and FLASH_ATTN_EXT; $OUT
set -u
export TQ_GGUF_OFFLINE=1 PYTHONUNBUFFERED=1
cd "$(dirname "$0")/../../../.."   # the repository root
L=$OUT/log.txt
T0=$(date +%s)
t() { echo "[$(( $(date +%s) - T0 ))s] $*" >> $L; }
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
python - > /tmp/build.txt 2>&1 <<'PY'
from pathlib import Path
from tq_gguf import build
cfg = build.BuildConfig(cuda=True, cuda_arch="90", jobs=16, bindings=False, src_pack=Path(".dev/src.tar.xz"),
                        targets=("llama-bench", "test-backend-ops"))
build.run(cfg)
PY
t "build rc=$?"; tail -2 /tmp/build.txt >> $L
BIN=$HOME/.cache/tq-gguf/build/cuda-sm90/bin
[ -x $BIN/test-backend-ops ] || { tail -60 /tmp/build.txt > $OUT/build.txt; exit 1; }
TB() { local name=$1; shift
  timeout 120 $BIN/test-backend-ops -b CUDA0 "$@" > /tmp/tbo-$name.txt 2>&1; local rc=$?
  t "test $name rc=$rc: $(grep -c FAIL /tmp/tbo-$name.txt) FAIL lines, $(grep -o '[0-9]*/[0-9]* tests passed' /tmp/tbo-$name.txt | head -1)"
  grep FAIL /tmp/tbo-$name.txt | head -3 >> $L; }
TB set_rows -o SET_ROWS -p turbo
TB cpy -o CPY -p turbo
TB get_rows -o GET_ROWS -p turbo
TB rot -o TURBO_ROT_ATTN
TB fa -o FLASH_ATTN_EXT -p "type_K=turbo|type_V=turbo"
(for f in /tmp/tbo-*.txt; do echo "=== $f"; grep -v "^  .*OK$" $f | tail -6; done) > $OUT/tests.txt
wait; t "model: $(tail -1 /tmp/model.txt)"; t done
