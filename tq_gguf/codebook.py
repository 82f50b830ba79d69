"""Lloyd-Max codebooks for the turbo KV-cache types.

A turbo block holds QK = 64 values in the rotated domain. The quantizer
normalises a block to length sqrt(QK) = 8, so after a random rotation each
coordinate is distributed like t = 8 * u_1 with u uniform on the sphere S^63:

    f(t) ∝ (1 - t²/64)^((64-3)/2),   |t| < 8

That is close to N(0, 1) but has lighter tails; the MSE-optimal scalar
quantizer (Lloyd-Max) for it differs from the Gaussian one in the third digit.

``CODEBOOKS`` pins the derived centroids as float32-representable literals.
The C and CUDA kernels copy this table; tests check it against a fresh
derivation, so changing the derivation without updating the table fails.
"""

from __future__ import annotations

import numpy as np

QK = 64

# Derived by derive_lloyd_max(8) / derive_lloyd_max(4), rounded to float32
# (repr of float(np.float32(x))). Sorted ascending, symmetric.
CODEBOOKS: dict[str, tuple[float, ...]] = {
    "turbo3": (
        -2.111311435699463,
        -1.3293428421020508,
        -0.7506580948829651,
        -0.24375343322753906,
        0.24375343322753906,
        0.7506580948829651,
        1.3293428421020508,
        2.111311435699463,
    ),
    "turbo2": (
        -1.4999748468399048,
        -0.45211896300315857,
        0.45211896300315857,
        1.4999748468399048,
    ),
}

# Gauss-Legendre rule used for every interval integral in the derivation.
_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(64)
_GL_PIECES = 64  # each interval is split into this many equal pieces


def sphere_density(t: np.ndarray, dim: int = QK) -> np.ndarray:
    """Unnormalised density of sqrt(dim) * u_1, u uniform on S^(dim-1)."""
    t = np.asarray(t, dtype=np.float64)
    r = 1.0 - t * t / dim
    return np.where(r > 0, np.power(np.clip(r, 0.0, None), (dim - 3) / 2.0), 0.0)


def _moments(a: np.ndarray, b: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """∫ f and ∫ t f over each interval [a[i], b[i]] (composite Gauss-Legendre)."""
    a = np.asarray(a, dtype=np.float64)[:, None]
    b = np.asarray(b, dtype=np.float64)[:, None]
    edges = a + (b - a) * np.linspace(0.0, 1.0, _GL_PIECES + 1)[None, :]  # [m, P+1]
    lo, hi = edges[:, :-1, None], edges[:, 1:, None]
    half = (hi - lo) / 2.0
    t = lo + half * (_GL_NODES + 1.0)  # [m, P, N]
    w = half * _GL_WEIGHTS
    f = sphere_density(t, dim)
    m0 = np.sum(w * f, axis=(1, 2))
    m1 = np.sum(w * f * t, axis=(1, 2))
    return m0, m1


def derive_lloyd_max(levels: int, dim: int = QK, tol: float = 1e-12,
                     max_iter: int = 100_000) -> np.ndarray:
    """Lloyd-Max centroids (ascending, float64) for ``sphere_density``.

    Alternates thresholds = midpoints of centroids and centroids = conditional
    means of their cells until no centroid moves by more than ``tol``. The
    result is symmetrised (the density is even) to remove round-off skew.
    """
    if levels < 2:
        raise ValueError(f"levels must be >= 2, got {levels}")
    lim = float(np.sqrt(dim))
    # start from equal-width cells over ±3 (the mass outside is ~1e-3)
    c = np.linspace(-3.0, 3.0, levels + 1)
    c = (c[:-1] + c[1:]) / 2.0
    for _ in range(max_iter):
        t = (c[:-1] + c[1:]) / 2.0
        lo = np.concatenate(([-lim], t))
        hi = np.concatenate((t, [lim]))
        m0, m1 = _moments(lo, hi, dim)
        new = m1 / m0
        delta = np.max(np.abs(new - c))
        c = new
        if delta < tol:
            break
    else:
        raise RuntimeError(f"Lloyd-Max did not converge for levels={levels}")
    return (c - c[::-1]) / 2.0


def codebook(name: str) -> np.ndarray:
    """The pinned centroids of a turbo type, float32, ascending."""
    try:
        return np.array(CODEBOOKS[name], dtype=np.float32)
    except KeyError:
        raise ValueError(f"unknown turbo type {name!r}; known: {sorted(CODEBOOKS)}") from None


def thresholds(name: str) -> np.ndarray:
    """Decision thresholds (float64): t[k] = (c[k] + c[k+1]) / 2 of the float32 table."""
    c = codebook(name).astype(np.float64)
    return (c[:-1] + c[1:]) / 2.0
