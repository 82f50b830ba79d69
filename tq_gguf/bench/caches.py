"""Cache configurations: parsing `K/V` specs and their nominal bits per value."""

from __future__ import annotations

from dataclasses import dataclass

# bits per stored value (block bytes * 8 / block values), as ggml lays them out
BITS_PER_VALUE = {
    "f32": 32.0, "f16": 16.0, "bf16": 16.0,
    "q8_0": 8.5, "q5_1": 6.0, "q5_0": 5.5, "q4_1": 5.0, "q4_0": 4.5, "iq4_nl": 4.5,
    "turbo3": 3.25, "turbo2": 2.25,
}


def kv_bytes(n_cells: int, n_layer: int, n_head_kv: int, d_k: int, d_v: int, type_k: str, type_v: str) -> int:
    """Bytes of a KV cache of ``n_cells`` cells (all streams) at the types' bits per value;
    what llama.cpp allocates (its `llama_kv_cache: size` line)."""
    bits = n_cells * n_layer * n_head_kv * (d_k * BITS_PER_VALUE[type_k] + d_v * BITS_PER_VALUE[type_v])
    return int(bits // 8)


@dataclass(frozen=True)
class Cache:
    k: str
    v: str
    # calibration experiments: a label, and environment (e.g. LLAMA_TURBO_POLICY)
    # set while this cache's context is created
    label: str = ""
    env: tuple[tuple[str, str], ...] = ()

    @property
    def name(self) -> str:
        if self.label:
            return self.label
        return self.k if self.k == self.v else f"{self.k}/{self.v}"

    @property
    def bpv(self) -> float:
        """Mean bits per cached value, K and V of equal size."""
        return (BITS_PER_VALUE[self.k] + BITS_PER_VALUE[self.v]) / 2


F16 = Cache("f16", "f16")
Q8_0 = Cache("q8_0", "q8_0")


def parse(spec: str) -> list[Cache]:
    """'f16,q8_0,turbo3,q8_0/turbo3' -> caches; a bare type is used for K and V."""
    from ..ggmlc import GGML_TYPE  # numpy: not at import time (see bindings.py)
    out: list[Cache] = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        parts = item.split("/")
        if len(parts) > 2:
            raise ValueError(f"cache {item!r}: expected TYPE or K/V")
        k, v = (parts[0], parts[0]) if len(parts) == 1 else parts
        for t in (k, v):
            if t not in GGML_TYPE or t not in BITS_PER_VALUE:
                known = ", ".join(t for t in BITS_PER_VALUE if t in GGML_TYPE)
                raise ValueError(f"cache {item!r}: unknown type {t!r} (known: {known})")
        c = Cache(k, v)
        if c not in out:
            out.append(c)
    if not out:
        raise ValueError("no cache types given")
    return out
