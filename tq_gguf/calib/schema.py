"""The ``turbo.*`` GGUF metadata (schema version 1): what calibration writes and
the patched runtime reads (src/llama-turbo.cpp in patch 0007).

Keys (n = layer, h = KV heads of the layer, d = head size; matrices are
row-major d x d per KV head, flattened):

    turbo.version                 u32      1
    turbo.architecture            str      must equal general.architecture
    turbo.block_count             u32      must equal the model's layer count
    turbo.codebook.turbo3|turbo2  f32[8|4] the codebook the file was calibrated for
                                           (v1: must equal the kernels' pinned one)
    turbo.layer.<n>.k.fwd         f32[h*d*d]  A_k     K' = A_k (k - c_k)
    turbo.layer.<n>.k.bwd         f32[h*d*d]  A_k^-T  Q' = A_k^-T q
    turbo.layer.<n>.k.offset      f32[h*d]    c_k
    turbo.layer.<n>.k.pos_mean    f32[h*d]    optional: m, the pre-RoPE key mean. The cache stores
                                              A_k (k - RoPE(pos, m) - c_k) and attention adds
                                              q.RoPE(pos_j, m) to each logit (patch 0011)
    turbo.layer.<n>.v.fwd         f32[h*d*d]  A_v     V' = A_v (v - m_v)
    turbo.layer.<n>.v.bwd         f32[h*d*d]  A_v^-1  out = A_v^-1 out' + m_v
    turbo.layer.<n>.v.mean        f32[h*d]    m_v
    turbo.policy.<type>.k|v       str[n]   cache type of each layer when the user asks
                                           for <type> (turbo3|turbo2); f16|q8_0|turbo3|turbo2
    turbo.budget_bpv              f32      the budget the policy was chosen under (info)
    turbo.sink_cells              u32      optional: first positions of each sequence the runtime
                                           keeps exact (f16) beside the cache; <= 64
    turbo.calibration             str      JSON: how it was made (info)
    turbo.validation              str      JSON: held-out KLD, calibrated vs default (info)

The runtime checks shapes, finiteness, that bwd is the inverse (transpose) of
fwd, version, architecture and layer count, and fails at load naming the key.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

VERSION = 1
SINK_CELLS_MAX = 64  # llama-turbo.h LLAMA_TURBO_SINK_MAX
PREFIX = "turbo."
POLICY_TYPES = ("f16", "q8_0", "turbo3", "turbo2")


class CalibError(ValueError):
    """A calibration that cannot be read or written; the message names the key."""


@dataclass
class LayerTransform:
    k_fwd: np.ndarray   # [h, d, d]
    k_bwd: np.ndarray   # [h, d, d]  == inv(k_fwd).T per head
    k_off: np.ndarray   # [h, d]
    v_fwd: np.ndarray   # [h, d, d]
    v_bwd: np.ndarray   # [h, d, d]  == inv(v_fwd) per head
    v_mean: np.ndarray  # [h, d]
    k_pos: np.ndarray | None = None  # [h, d] pre-RoPE key mean m (None: no positional offset)

    @classmethod
    def build(cls, a_k: np.ndarray, c_k: np.ndarray, a_v: np.ndarray, m_v: np.ndarray,
              k_pos: np.ndarray | None = None) -> "LayerTransform":
        a_k, a_v = np.asarray(a_k, np.float64), np.asarray(a_v, np.float64)
        return cls(a_k, np.linalg.inv(a_k).transpose(0, 2, 1), np.asarray(c_k, np.float64),
                   a_v, np.linalg.inv(a_v), np.asarray(m_v, np.float64),
                   None if k_pos is None else np.asarray(k_pos, np.float64))

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"k.fwd": self.k_fwd, "k.bwd": self.k_bwd, "k.offset": self.k_off,
               "v.fwd": self.v_fwd, "v.bwd": self.v_bwd, "v.mean": self.v_mean}
        if self.k_pos is not None:
            out["k.pos_mean"] = self.k_pos
        return out


@dataclass
class Calibration:
    arch: str
    n_layer: int
    layers: list[LayerTransform | None]
    policy: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # type -> {"k": [...], "v": [...]}
    codebooks: dict[str, list[float]] = field(default_factory=dict)
    budget_bpv: float | None = None
    info: dict = field(default_factory=dict)        # turbo.calibration
    validation: dict = field(default_factory=dict)  # turbo.validation
    sink_cells: int | None = None                   # turbo.sink_cells (None: the runtime's default)

    def kv(self) -> dict[str, tuple]:
        """Every key as (value, gguf-py value type, sub type)."""
        import gguf
        T = gguf.GGUFValueType
        out: dict[str, tuple] = {
            "turbo.version": (VERSION, T.UINT32, None),
            "turbo.architecture": (self.arch, T.STRING, None),
            "turbo.block_count": (int(self.n_layer), T.UINT32, None),
        }
        for name, cb in self.codebooks.items():
            out[f"turbo.codebook.{name}"] = ([float(x) for x in cb], T.ARRAY, T.FLOAT32)
        for il, lt in enumerate(self.layers):
            if lt is None:
                continue
            for key, arr in lt.arrays().items():
                flat = np.ascontiguousarray(arr, dtype=np.float32).reshape(-1)
                out[f"turbo.layer.{il}.{key}"] = (flat, T.ARRAY, T.FLOAT32)
        for typ, kv in self.policy.items():
            for side in ("k", "v"):
                if side in kv:
                    out[f"turbo.policy.{typ}.{side}"] = (list(kv[side]), T.ARRAY, T.STRING)
        if self.budget_bpv is not None:
            out["turbo.budget_bpv"] = (float(self.budget_bpv), T.FLOAT32, None)
        if self.sink_cells is not None:
            if not 0 <= int(self.sink_cells) <= SINK_CELLS_MAX:
                raise CalibError(f"turbo calibration: sink_cells must be 0..{SINK_CELLS_MAX}, not {self.sink_cells}")
            out["turbo.sink_cells"] = (int(self.sink_cells), T.UINT32, None)
        out["turbo.calibration"] = (json.dumps(self.info, sort_keys=True), T.STRING, None)
        out["turbo.validation"] = (json.dumps(self.validation, sort_keys=True), T.STRING, None)
        return out


def _add(writer, key: str, val, vtype, sub) -> None:
    if isinstance(val, np.ndarray):
        val = val.tolist()  # gguf-py packs sequences item by item
    writer.add_key_value(key, val, vtype, sub_type=sub)


def _atomic_path(dst: Path) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".part", dir=dst.parent)
    os.close(fd)
    return Path(tmp)


def write_sidecar(dst: Path, calib: Calibration) -> Path:
    """A GGUF with only the calibration (no tensors): what LLAMA_TURBO_CALIB=FILE reads."""
    import gguf
    dst = Path(dst)
    tmp = _atomic_path(dst)
    try:
        w = gguf.GGUFWriter(str(tmp), calib.arch)
        for key, (val, vt, sub) in calib.kv().items():
            _add(w, key, val, vt, sub)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        w.close()
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return dst


def write_model(src: Path, dst: Path, calib: Calibration, progress=None) -> Path:
    """Copy ``src`` (every key and tensor unchanged) to ``dst`` with ``calib`` replacing any turbo.* keys."""
    import gguf
    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        raise CalibError(f"refusing to overwrite the input model {src}; choose another -o")
    arch = gguf.GGUFReader(str(src)).fields["general.architecture"].contents()
    if arch != calib.arch:
        raise CalibError(f"the calibration is for '{calib.arch}' but {src} is '{arch}'")
    return copy_model(src, dst, calib.kv(), progress)


def copy_model(src: Path, dst: Path, turbo_kv: dict[str, tuple], progress=None) -> Path:
    """Copy ``src`` to ``dst`` (atomically) with its turbo.* keys replaced by ``turbo_kv``
    ({key: (value, gguf type, sub type)}, as Calibration.kv() gives)."""
    import gguf
    src, dst = Path(src), Path(dst)
    reader = gguf.GGUFReader(str(src))
    arch = reader.fields["general.architecture"].contents()
    tmp = _atomic_path(dst)
    try:
        w = gguf.GGUFWriter(str(tmp), arch=arch, endianess=reader.endianess)
        align = reader.fields.get("general.alignment")
        if align is not None:
            w.data_alignment = int(align.contents())
        for f in reader.fields.values():
            if f.name == "general.architecture" or f.name.startswith("GGUF.") or f.name.startswith(PREFIX):
                continue
            vt = f.types[0]
            sub = f.types[-1] if vt == gguf.GGUFValueType.ARRAY else None
            w.add_key_value(f.name, f.contents(), vt, sub_type=sub)
        for key, (val, vt, sub) in turbo_kv.items():
            _add(w, key, val, vt, sub)
        for t in reader.tensors:
            w.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for t in reader.tensors:
            w.write_tensor_data(t.data)
            if progress:
                progress(t.data.nbytes)
        w.close()
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return dst


def _field(reader, key: str, required: bool = True):
    f = reader.fields.get(key)
    if f is None and required:
        raise CalibError(f"turbo calibration: key '{key}' is missing")
    return f


def read(path: Path) -> Calibration | None:
    """The calibration ``path`` carries (None without turbo.version); shapes are not checked
    against the model here, the runtime does that at load."""
    import gguf
    reader = gguf.GGUFReader(str(path))
    if "turbo.version" not in reader.fields:
        return None
    version = int(reader.fields["turbo.version"].contents())
    if version != VERSION:
        raise CalibError(f"turbo calibration: turbo.version is {version}; this tq-gguf reads version {VERSION}")
    arch = _field(reader, "turbo.architecture").contents()
    n_layer = int(_field(reader, "turbo.block_count").contents())
    layers: list[LayerTransform | None] = []
    for il in range(n_layer):
        if f"turbo.layer.{il}.k.fwd" not in reader.fields:
            layers.append(None)
            continue
        a = {k: np.asarray(_field(reader, f"turbo.layer.{il}.{k}").contents(), dtype=np.float32)
             for k in ("k.fwd", "k.bwd", "k.offset", "v.fwd", "v.bwd", "v.mean")}
        hd_k, hd_v = a["k.offset"].size, a["v.mean"].size
        d_k = a["k.fwd"].size // hd_k
        d_v = a["v.fwd"].size // hd_v
        if d_k * hd_k != a["k.fwd"].size or d_v * hd_v != a["v.fwd"].size:
            raise CalibError(f"turbo calibration: layer {il} has inconsistent array sizes")
        h = hd_k // d_k
        k_pos = None
        if f"turbo.layer.{il}.k.pos_mean" in reader.fields:
            k_pos = np.asarray(reader.fields[f"turbo.layer.{il}.k.pos_mean"].contents(), dtype=np.float32)
            if k_pos.size != hd_k:
                raise CalibError(f"turbo calibration: turbo.layer.{il}.k.pos_mean has {k_pos.size} values, "
                                 f"expected {hd_k}")
            k_pos = k_pos.reshape(h, d_k)
        layers.append(LayerTransform(a["k.fwd"].reshape(h, d_k, d_k), a["k.bwd"].reshape(h, d_k, d_k),
                                     a["k.offset"].reshape(h, d_k), a["v.fwd"].reshape(h, d_v, d_v),
                                     a["v.bwd"].reshape(h, d_v, d_v), a["v.mean"].reshape(h, d_v), k_pos))
    policy: dict[str, dict[str, list[str]]] = {}
    codebooks: dict[str, list[float]] = {}
    for name, f in reader.fields.items():
        if name.startswith("turbo.policy."):
            _, _, typ, side = name.split(".")
            policy.setdefault(typ, {})[side] = [str(x) for x in f.contents()]
        elif name.startswith("turbo.codebook."):
            codebooks[name.split(".")[-1]] = [float(x) for x in f.contents()]
    budget = reader.fields.get("turbo.budget_bpv")

    def js(key):
        f = reader.fields.get(key)
        try:
            return json.loads(f.contents()) if f is not None else {}
        except json.JSONDecodeError as e:
            raise CalibError(f"turbo calibration: key '{key}' is not JSON ({e})") from None

    sinks = reader.fields.get("turbo.sink_cells")
    return Calibration(arch, n_layer, layers, policy, codebooks,
                       float(budget.contents()) if budget is not None else None,
                       js("turbo.calibration"), js("turbo.validation"),
                       int(sinks.contents()) if sinks is not None else None)
