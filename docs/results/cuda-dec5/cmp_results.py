# compare two llama-results files (logits of every prompt token): identical bytes, or how far apart
import sys
import numpy as np
from gguf import GGUFReader
def load(p):
    r = GGUFReader(p)
    t = {x.name: np.array(x.data) for x in r.tensors}
    return t["tokens"], t["logits"].astype(np.float32).ravel()
ta, la = load(sys.argv[1])
tb, lb = load(sys.argv[2])
assert (ta == tb).all()
d = np.abs(la - lb)
nz = int((la.view(np.uint32) != lb.view(np.uint32)).sum())
print(f"{len(ta)} tokens, {la.size} logits: {nz} differ in bits, max |diff| {d.max():.3g}, "
      f"nmse {float(((la-lb)**2).sum()/(la**2).sum()):.3g}, logit range [{la.min():.3g}, {la.max():.3g}]")
