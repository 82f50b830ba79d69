import sys, pickle, time, tempfile, os
from pathlib import Path
sys.path.insert(0, "/work/main")
from tq_gguf import bindings
bindings.load_first()
from tq_gguf.bench.caches import Cache
from tq_gguf.calib import fit, outproj
from tq_gguf.calib.calibrate import Evaluator
from tq_gguf.calib.schema import Calibration
pk, model, heldout, chunks, variants, types, modes = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6].split(","), sys.argv[7].split(";")
d = pickle.load(open(pk, "rb")); st, info = d["stats"], d["info"]
n = info["n_layer"]
print("vo layers", outproj.attach(st, model, n, info["d_v"]), flush=True)
with tempfile.TemporaryDirectory() as wd:
    ev = Evaluator(model, heldout.read_text(errors="replace"), 2048, chunks, 2, Path(wd))
    caches = [Cache(*(t.split("/") if "/" in t else (t, t))) for t in types]
    for mode in modes:
        for k in ("TQ_SCALE_GAIN", "TQ_SCALE_MODE", "TQ_KBONUS"):
            os.environ.pop(k, None)
        for kv in filter(None, mode.split(",")):
            k, v = kv.split("=")
            os.environ[k] = v
        for v in variants.split(";"):
            t0 = time.time()
            if v == "default":
                r = ev.run(None, caches)
            else:
                kk, vk, alpha, sink, *more = v.split(",")
                av = float([x for x in more if x.startswith("av")][0][2:]) if any(x.startswith("av") for x in more) else 0.25
                r = ev.run(Calibration(info["arch"], n, fit.fit(st, n, kk, vk, sink=sink == "1", alpha=float(alpha),
                                                                pos="pos" in more, alpha_v=av)), caches)
            print(f"mode {mode} {v:36s} " + "  ".join(f"{k} {x['kld']:.4f}" for k, x in r.items()) + f"  ({time.time() - t0:.0f} s)", flush=True)
