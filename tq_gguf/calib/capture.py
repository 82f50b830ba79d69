"""Q, K and V statistics captured from the patched runtime itself.

The runtime names attention's inputs ``tq_q-<il>``, ``tq_k-<il>``, ``tq_v-<il>``
(patch 0007) just before the transforms: post-RoPE, post-norm, in llama.cpp's
channel order and head layout. An eval callback copies those tensors out of each
ubatch and accumulates, per layer and KV head, the first and second moments the
fit needs (float64). The Q heads that share a KV head are pooled onto it.

With the layer's RoPE (ropepos.RopeLayer) the keys' position moments are kept
too: sums of k cos(theta_f pos) and k sin(theta_f pos) per channel and pair
frequency f, and the products of those cosines and sines. From them the fit gets
the pre-RoPE key mean m and the moments of k - RoPE(pos, m) without a second pass.
"""

from __future__ import annotations

import ctypes
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import runtime


_NAME = re.compile(r"tq_([qkv])-(\d+)$")


class _Tensor(ctypes.Structure):  # the leading fields of struct ggml_tensor (ggml.h)
    _fields_ = [("type", ctypes.c_int), ("buffer", ctypes.c_void_p),
                ("ne", ctypes.c_int64 * 4), ("nb", ctypes.c_size_t * 4)]


def _ggml_base():
    import llama_cpp
    d = os.environ.get("LLAMA_CPP_LIB_PATH") or str(Path(llama_cpp.__file__).parent / "lib")
    lib = ctypes.CDLL(str(Path(d) / "libggml-base.so"), mode=ctypes.RTLD_GLOBAL)
    lib.ggml_get_name.restype = ctypes.c_char_p
    lib.ggml_get_name.argtypes = [ctypes.c_void_p]
    lib.ggml_nbytes.restype = ctypes.c_size_t
    lib.ggml_nbytes.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_tensor_get.restype = None
    lib.ggml_backend_tensor_get.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
    return lib


@dataclass
class LayerStats:
    """Sums over captured tokens, per KV head h: s1 = sum x, s2 = sum x x^T."""
    n_head_kv: int
    d_k: int
    d_v: int
    n_k: int = 0
    n_q: int = 0
    k1: np.ndarray = field(default=None)
    k2: np.ndarray = field(default=None)
    q2: np.ndarray = field(default=None)
    v1: np.ndarray = field(default=None)
    v2: np.ndarray = field(default=None)
    sink_k: list = field(default_factory=list)  # position 0's K [h, d], one per sequence
    sink_v: list = field(default_factory=list)
    rope: object = None  # ropepos.RopeLayer: keep the position moments below
    kc: np.ndarray = field(default=None)   # [h, d, F] sum k_i cos(theta_f pos)
    ks: np.ndarray = field(default=None)   # [h, d, F] sum k_i sin(theta_f pos)
    pc: np.ndarray = field(default=None)   # [F] sum cos; ps likewise
    ps: np.ndarray = field(default=None)
    pcc: np.ndarray = field(default=None)  # [F, F] sum cos_f cos_g; pcs (cos_f sin_g), pss likewise
    pcs: np.ndarray = field(default=None)
    pss: np.ndarray = field(default=None)

    def __post_init__(self):
        h, dk, dv = self.n_head_kv, self.d_k, self.d_v
        self.k1, self.k2 = np.zeros((h, dk)), np.zeros((h, dk, dk))
        self.q2 = np.zeros((h, dk, dk))
        self.v1, self.v2 = np.zeros((h, dv)), np.zeros((h, dv, dv))
        if self.rope is not None:
            nf = len(self.rope.theta)
            self.kc, self.ks = np.zeros((h, dk, nf)), np.zeros((h, dk, nf))
            self.pc, self.ps = np.zeros(nf), np.zeros(nf)
            self.pcc, self.pcs, self.pss = np.zeros((nf, nf)), np.zeros((nf, nf)), np.zeros((nf, nf))

    def add(self, kind: str, full: np.ndarray, keep: np.ndarray, first: bool, pos: np.ndarray | None = None) -> None:
        """Accumulate one batch of ``kind`` (q, k or v) as [tokens, heads, d] float64, in llama.cpp's
        channel order; ``keep`` marks the counted tokens, ``first`` that row 0 is position 0,
        ``pos`` the rows' positions (needed for the position moments)."""
        x = full[keep]
        if kind == "k":
            if first and len(full):
                self.sink_k.append(full[0].copy())
            self.n_k += x.shape[0]
            self.k1 += x.sum(0)
            self.k2 += np.einsum("thi,thj->hij", x, x)
            if self.rope is not None:
                ang = np.asarray(pos, np.float64)[keep][:, None] * self.rope.theta[None, :]
                c, s = np.cos(ang), np.sin(ang)
                self.kc += np.einsum("thi,tf->hif", x, c)
                self.ks += np.einsum("thi,tf->hif", x, s)
                self.pc += c.sum(0)
                self.ps += s.sum(0)
                self.pcc += c.T @ c
                self.pcs += c.T @ s
                self.pss += s.T @ s
        elif kind == "v":
            if first and len(full):
                self.sink_v.append(full[0].copy())
            self.v1 += x.sum(0)
            self.v2 += np.einsum("thi,thj->hij", x, x)
        else:  # the Q heads sharing a KV head are pooled onto it
            g = x.shape[1] // self.n_head_kv
            xq = x.reshape(x.shape[0], self.n_head_kv, g, x.shape[2])
            self.n_q += x.shape[0] * g
            self.q2 += np.einsum("thgi,thgj->hij", xq, xq)

    # moments
    def k_mean(self): return self.k1 / self.n_k
    def k_cov(self): m = self.k_mean(); return self.k2 / self.n_k - m[:, :, None] * m[:, None, :]
    def q_second(self): return self.q2 / self.n_q
    def v_mean(self): return self.v1 / self.n_k
    def v_cov(self): m = self.v_mean(); return self.v2 / self.n_k - m[:, :, None] * m[:, None, :]


class Capture:
    """Decode token sequences through an f16 cache and accumulate Q/K/V moments.

    ``skip`` leading positions of every sequence are decoded but not counted
    (position 0, the attention sink, is an outlier that most heads attend to).
    """

    def __init__(self, model: runtime.Model, n_ctx: int, threads: int = 2, n_batch: int = 512, skip: int = 1,
                 rope: list | None = None):
        self.model = model
        self.skip = skip
        self.rope = rope  # per layer ropepos.RopeLayer: keep the keys' position moments
        self._pos = np.zeros(0)
        self.layers: dict[int, LayerStats] = {}
        self._keep = np.ones(0, bool)
        self._first = False  # does the ubatch start at position 0?
        self._lib = _ggml_base()
        import llama_cpp
        self._cb = llama_cpp.ggml_backend_sched_eval_callback(self._on_eval)
        self.error: BaseException | None = None
        self.session = runtime.Session(model, n_ctx=n_ctx, type_k="f16", type_v="f16", flash_attn=True,
                                       n_threads=threads, n_batch=n_batch, cb_eval=self._cb)

    def _read(self, t) -> np.ndarray:
        """A float32 copy of the tensor as [tokens, heads, d] (whatever its strides)."""
        s = _Tensor.from_address(t)
        if s.type != 0:
            raise RuntimeError(f"captured tensor has ggml type {s.type}, expected f32")
        nbytes = self._lib.ggml_nbytes(t)
        raw = np.empty(nbytes, np.uint8)
        self._lib.ggml_backend_tensor_get(t, raw.ctypes.data, 0, nbytes)
        ne, nb = list(s.ne), list(s.nb)
        shape = (ne[3] * ne[2], ne[1], ne[0]) if ne[3] == 1 or nb[3] == nb[2] * ne[2] else None
        if shape is None:
            raise RuntimeError("captured tensor has an unexpected 4-D layout")
        arr = np.lib.stride_tricks.as_strided(raw.view(np.float32) if nb[0] == 4 else raw, shape=shape,
                                              strides=(nb[2], nb[1], nb[0]))
        return np.array(arr, dtype=np.float64)

    def _on_eval(self, t, ask, _user):
        try:
            m = _NAME.match(self._lib.ggml_get_name(t).decode())
            if not m:
                return not ask
            if ask:
                return True
            kind, il = m.group(1), int(m.group(2))
            full = self._read(t)  # [tokens, heads, d]
            if kind == "q":
                st = self.layers.get(il)
                if st is None:  # Q comes first in the graph: sizes from the model
                    return True
            else:
                st = self._stats(il, full.shape[1], full.shape[2] if kind == "k" else None,
                                 full.shape[2] if kind == "v" else None)
            st.add(kind, full, self._keep, self._first, self._pos)
        except BaseException as e:  # never raise through C
            self.error = self.error or e
        return True

    def _stats(self, il, h, d_k, d_v) -> LayerStats:
        st = self.layers.get(il)
        if st is None:
            st = self.layers[il] = LayerStats(h, d_k or d_v, d_v or d_k,
                                              rope=self.rope[il] if self.rope is not None else None)
        return st

    def run(self, seqs: list[list[int]], progress=None) -> dict[int, LayerStats]:
        s = self.session
        # Q of a layer reaches the callback before its K, which gives the layer's sizes:
        # a first decode that counts nothing creates every layer's (empty) sums
        if not self.layers and seqs:
            self._keep = np.zeros(min(len(seqs[0]), s.n_batch), bool)
            self._pos = np.arange(len(self._keep))
            s.clear()
            s.eval(seqs[0][:s.n_batch], 0, outputs=np.zeros(len(self._keep), bool))
        for toks in seqs:
            s.clear()
            for p in range(0, len(toks), s.n_batch):
                chunk = toks[p:p + s.n_batch]
                self._pos = np.arange(p, p + len(chunk))
                self._keep = self._pos >= self.skip
                self._first = p == 0
                s.eval(chunk, p, outputs=np.zeros(len(chunk), bool))
                if self.error:
                    raise RuntimeError(f"capture failed: {self.error}") from self.error
            if progress:
                progress(len(toks))
        if not self.layers:
            raise RuntimeError("the runtime reported no tq_q/tq_k/tq_v tensors: is the build older than patch 0007?")
        return self.layers

    def close(self):
        self.session.close()
