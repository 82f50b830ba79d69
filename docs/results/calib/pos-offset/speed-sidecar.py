"""The side-car calibration of speed-table.csv: random orthogonal transforms and a random
positional offset on every layer of SmolLM2-135M (30 layers, 3 KV heads of 64). Speed does
not depend on the values; every layer carries an offset.

    python speed-sidecar.py OUT.gguf
    LLAMA_TURBO_CALIB=OUT.gguf llama-bench -m SmolLM2-135M-Instruct.Q4_1.gguf -fa 1 -ctk turbo3 -ctv turbo3 \\
        -p 0 -n 64 -d 0,2048 -r 2 -t 2 -o csv       # and with LLAMA_TURBO_POS=off
"""
import sys

import numpy as np

from tq_gguf import rotation
from tq_gguf.calib.schema import Calibration, LayerTransform, write_sidecar

rng = np.random.default_rng(0)
h, d, n_layer = 3, 64, 30


def mats():
    return np.array([rotation.rotation_matrix(d) @ np.linalg.qr(rng.standard_normal((d, d)))[0] for _ in range(h)])


layers = []
for _ in range(n_layer):
    lt = LayerTransform.build(mats(), np.zeros((h, d)), mats(), np.zeros((h, d)))
    lt.k_pos = rng.standard_normal((h, d))
    layers.append(lt)
write_sidecar(sys.argv[1], Calibration("llama", n_layer, layers))
