"""ppl/KLD of named LLAMA_TURBO_POLICY mixes with the side-car calibration, one run."""
import sys, json
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[4]))
from tq_gguf import bindings
bindings.load_first()
from tq_gguf import runtime
from tq_gguf.bench.caches import Cache
from tq_gguf.bench.quality import run_ppl
A = Path.home() / ".cache/tq-gguf/assets"
model, side, chunks = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
caches = []
for spec in sys.argv[4:]:
    label, _, pol = spec.partition(":")
    k, v, pol = (pol.split("|") + ["", ""])[:3] if "|" in pol else ("turbo3", "turbo3", pol)
    caches.append(Cache(k, v, label=label, env=(("LLAMA_TURBO_POLICY", pol or "off"),)))
env = {"LLAMA_TURBO_CALIB": side}
with runtime.environ(env):
    doc = run_ppl(model, (A / "handbook/handbook.test.txt").read_text(errors="replace"), caches, ctx=2048,
                  chunks=chunks, threads=2, show_progress=True)
for r in doc["results"]:
    print(json.dumps({k: r[k] for k in r if k in ("cache", "kld", "kld_err", "ppl_ratio", "same_top")}))
