"""capture stats once -> pickle"""
import sys, pickle, time
from pathlib import Path
sys.path.insert(0, "/work/main")
from tq_gguf import bindings
bindings.load_first()
from tq_gguf import runtime
from tq_gguf.calib import ropepos
from tq_gguf.calib.calibrate import model_info, windows
from tq_gguf.calib.capture import Capture
model, text, out = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
info = model_info(model)
m = runtime.Model(model)
stream = m.tokenize(text.read_text(errors="replace"), add_bos=False)
seqs = windows(m, stream, 16384, 2048, str(text))
rope, why = ropepos.from_gguf(model, info["n_layer"], info["d_k"])
cap = Capture(m, n_ctx=2048, threads=2, rope=rope)
t0 = time.time()
stats = cap.run(seqs)
cap.close(); m.close()
for s in stats.values():
    s.rope = s.rope  # keep
pickle.dump({"info": info, "stats": stats}, open(out, "wb"))
print("captured", len(seqs), time.time() - t0)
