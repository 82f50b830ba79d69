"""ctypes access to the built ggml libraries, for checking C kernels against
the Python reference (tq_gguf.turbo) without going through a model."""

from __future__ import annotations

import ctypes
from functools import lru_cache
from pathlib import Path

import numpy as np

from . import tools

# ggml_type values (ggml.h at the pinned commit + the series' turbo types)
GGML_TYPE = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8, "i32": 26, "i64": 27,
             "bf16": 30, "turbo2": 128, "turbo3": 129}

_to_float = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)
_from_float = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)
_vec_dot = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p,
                            ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)


class TypeTraits(ctypes.Structure):  # struct ggml_type_traits
    _fields_ = [("type_name", ctypes.c_char_p), ("blck_size", ctypes.c_int64),
                ("blck_size_interleave", ctypes.c_int64), ("type_size", ctypes.c_size_t),
                ("is_quantized", ctypes.c_bool), ("to_float", ctypes.c_void_p),
                ("from_float_ref", ctypes.c_void_p)]


class TypeTraitsCpu(ctypes.Structure):  # struct ggml_type_traits_cpu (+ tq-gguf's to_float)
    _fields_ = [("from_float", ctypes.c_void_p), ("vec_dot", ctypes.c_void_p),
                ("vec_dot_type", ctypes.c_int), ("nrows", ctypes.c_int64),
                ("to_float", ctypes.c_void_p)]


@lru_cache(maxsize=None)
def libs(bin_dir: str | None = None):
    d = Path(bin_dir) if bin_dir else tools.bin_dir()
    if d is None:
        raise tools.ToolNotBuilt("no active build: run tq-gguf build")
    base = ctypes.CDLL(str(d / "libggml-base.so"), mode=ctypes.RTLD_GLOBAL)
    cpu = ctypes.CDLL(str(d / "libggml-cpu.so"), mode=ctypes.RTLD_GLOBAL)
    base.ggml_get_type_traits.restype = ctypes.POINTER(TypeTraits)
    base.ggml_get_type_traits.argtypes = [ctypes.c_int]
    base.ggml_quantize_chunk.restype = ctypes.c_size_t
    base.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                         ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    base.ggml_row_size.restype = ctypes.c_size_t
    base.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    cpu.ggml_get_type_traits_cpu.restype = ctypes.POINTER(TypeTraitsCpu)
    cpu.ggml_get_type_traits_cpu.argtypes = [ctypes.c_int]
    cpu.ggml_cpu_init()
    return base, cpu


def traits(type_name: str) -> TypeTraits:
    return libs()[0].ggml_get_type_traits(GGML_TYPE[type_name]).contents


def quantize(x: np.ndarray, type_name: str) -> np.ndarray:
    """ggml_quantize_chunk over the rows of a 2-D float32 array -> bytes per row."""
    base, _ = libs()
    x = np.ascontiguousarray(x, dtype=np.float32)
    nrows, n = x.shape
    row = base.ggml_row_size(GGML_TYPE[type_name], n)
    out = np.zeros((nrows, row), dtype=np.uint8)
    got = base.ggml_quantize_chunk(GGML_TYPE[type_name], x.ctypes.data, out.ctypes.data, 0, nrows, n, None)
    assert got == out.nbytes
    return out


def dequantize(data: np.ndarray, type_name: str, n: int, simd: bool = False) -> np.ndarray:
    """Rows of bytes -> float32 with the base to_float (or the CPU backend's SIMD one)."""
    data = np.ascontiguousarray(data, dtype=np.uint8)
    ptr = libs()[1].ggml_get_type_traits_cpu(GGML_TYPE[type_name]).contents.to_float if simd \
        else traits(type_name).to_float
    if not ptr:
        raise ValueError(f"{type_name} has no {'SIMD ' if simd else ''}to_float")
    fn = _to_float(ptr)
    out = np.zeros((data.shape[0], n), dtype=np.float32)
    for r in range(data.shape[0]):
        fn(data[r].ctypes.data, out[r].ctypes.data, n)
    return out


def vec_dot(data_row: np.ndarray, y: np.ndarray, type_name: str) -> float:
    """The CPU backend's vec_dot of one quantized row with a float32 vector."""
    t = libs()[1].ggml_get_type_traits_cpu(GGML_TYPE[type_name]).contents
    assert t.vec_dot_type == GGML_TYPE["f32"], "turbo types take F32 queries"
    row = np.ascontiguousarray(data_row, dtype=np.uint8)
    y = np.ascontiguousarray(y, dtype=np.float32)
    s = ctypes.c_float()
    _vec_dot(t.vec_dot)(y.size, ctypes.addressof(s), 0, row.ctypes.data, 0, y.ctypes.data, 0, 1)
    return s.value


# --- one-op graphs on the CPU backend (SET_ROWS, GET_ROWS, CPY) --------------------

class _InitParams(ctypes.Structure):  # struct ggml_init_params
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]


def _graph_api():
    base, cpu = libs()
    P = ctypes.c_void_p
    for name, res, args in (
            ("ggml_init", P, [_InitParams]), ("ggml_free", None, [P]),
            ("ggml_new_tensor_1d", P, [P, ctypes.c_int, ctypes.c_int64]),
            ("ggml_new_tensor_2d", P, [P, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]),
            ("ggml_new_tensor_4d", P, [P, ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64]),
            ("ggml_flash_attn_ext", P, [P, P, P, P, P, ctypes.c_float, ctypes.c_float, ctypes.c_float]),
            ("ggml_flash_attn_ext_set_side", None, [P, P, P, P]),
            ("ggml_get_data", P, [P]), ("ggml_nbytes", ctypes.c_size_t, [P]),
            ("ggml_cpy", P, [P, P, P]), ("ggml_set_rows", P, [P, P, P, P]), ("ggml_get_rows", P, [P, P, P]),
            ("ggml_new_graph", P, [P]), ("ggml_build_forward_expand", None, [P, P])):
        f = getattr(base, name)
        f.restype, f.argtypes = res, args
    cpu.ggml_graph_compute_with_ctx.restype = ctypes.c_int
    cpu.ggml_graph_compute_with_ctx.argtypes = [P, P, ctypes.c_int]
    return base, cpu


class OpGraph:
    """A ggml context on the CPU backend for a single op: tensors from numpy, run, read back."""

    def __init__(self, mem: int = 64 << 20):
        self.base, self.cpu = _graph_api()
        self.ctx = self.base.ggml_init(_InitParams(mem, None, False))
        if not self.ctx:
            raise MemoryError("ggml_init failed")

    def tensor(self, type_name: str, ne0: int, ne1: int | None = None, data=None):
        t = (self.base.ggml_new_tensor_1d(self.ctx, GGML_TYPE[type_name], ne0) if ne1 is None else
             self.base.ggml_new_tensor_2d(self.ctx, GGML_TYPE[type_name], ne0, ne1))
        if data is not None:
            raw = np.ascontiguousarray(data).view(np.uint8).reshape(-1)
            assert raw.size == self.base.ggml_nbytes(t), (raw.size, self.base.ggml_nbytes(t))
            ctypes.memmove(self.base.ggml_get_data(t), raw.ctypes.data, raw.size)
        return t

    def tensor4(self, type_name: str, ne: tuple, data=None):
        """A 4-D tensor ne = (ne0, ne1, ne2, ne3), filled from ``data`` (raw bytes in ggml order)."""
        t = self.base.ggml_new_tensor_4d(self.ctx, GGML_TYPE[type_name], *ne)
        if data is not None:
            raw = np.ascontiguousarray(data).view(np.uint8).reshape(-1)
            assert raw.size == self.base.ggml_nbytes(t), (raw.size, self.base.ggml_nbytes(t))
            ctypes.memmove(self.base.ggml_get_data(t), raw.ctypes.data, raw.size)
        return t

    def read(self, t, dtype=np.uint8) -> np.ndarray:
        n = self.base.ggml_nbytes(t)
        buf = (ctypes.c_uint8 * n).from_address(self.base.ggml_get_data(t))
        return np.frombuffer(bytes(buf), dtype=dtype)

    def compute(self, out, n_threads: int = 2):
        gf = self.base.ggml_new_graph(self.ctx)
        self.base.ggml_build_forward_expand(gf, out)
        status = self.cpu.ggml_graph_compute_with_ctx(self.ctx, gf, n_threads)
        if status != 0:
            raise RuntimeError(f"ggml graph compute failed ({status})")
        return out

    def close(self):
        if self.ctx:
            self.base.ggml_free(self.ctx)
            self.ctx = None
