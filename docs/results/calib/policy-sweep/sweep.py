"""One-layer policy sensitivity sweep on SmolLM2 (handbook calib text, whiten 3/16 + sink + pos side-car),
with K and V each offered {turbo2, turbo3, q8_0}: python sweep.py MODEL OUTDIR"""
import sys, json, time, tempfile
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[4]))
from tq_gguf import bindings
bindings.load_first()
from tq_gguf import runtime
from tq_gguf.bench.caches import Cache
from tq_gguf.calib import fit, ropepos, calibrate as C
from tq_gguf.calib.calibrate import Evaluator, model_info, windows, write_sidecar
from tq_gguf.calib.capture import Capture
from tq_gguf.calib.schema import Calibration
A = Path.home() / ".cache/tq-gguf/assets"
model = Path(sys.argv[1]); out = Path(sys.argv[2])
info = model_info(model); n = info["n_layer"]
m = runtime.Model(model)
stream = m.tokenize((A / "handbook/handbook.calib.txt").read_text(errors="replace"), add_bos=False)
seqs = windows(m, stream, 16384, 2048, "calib")
rope, why = ropepos.from_gguf(model, n, info["d_k"])
cap = Capture(m, n_ctx=2048, threads=2, rope=rope); stats = cap.run(seqs); cap.close(); m.close()
cal = Calibration(info["arch"], n, fit.fit(stats, n, "whiten", "rotate", sink=True, alpha=0.1875, pos=True))
write_sidecar(out / "side.gguf", cal)
print("capture done", flush=True)
C.POLICY_OPTIONS["turbo3"] = {"k": ("turbo2", "turbo3", "q8_0"), "v": ("turbo2", "turbo3", "q8_0")}
with tempfile.TemporaryDirectory() as wd:
    ev = Evaluator(model, (A / "handbook/handbook.test.txt").read_text(errors="replace"), 2048, 8, 2, Path(wd))
    ev.sweep_chunks = 1
    layer_vals = {il: lt.k_off.size for il, lt in enumerate(cal.layers) if lt is not None}
    t0 = time.time()
    pol, pinfo = C._policy_sweep(ev, cal, "turbo3", 3.25, layer_vals)
    print("sweep", time.time() - t0, flush=True)
    (out / "sweep.json").write_text(json.dumps(pinfo, indent=1))
    print(json.dumps({k: v for k, v in pinfo.items() if k != "sweep_delta"}), flush=True)
