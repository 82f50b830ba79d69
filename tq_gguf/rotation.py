"""Randomized Hadamard transform: the turbo types' default rotation.

R = diag(sign) · H_d · diag(sign) / sqrt(d), H_d the Sylvester-ordered Hadamard matrix
(H_1 = [1], H_2k = [[H, H], [H, -H]]) and sign[i] = ±1 from splitmix64 with a
fixed seed, so that Python, C and CUDA build the same matrix with no table.
R is symmetric with R·R = I (like H itself), so the runtime applies and undoes
it with the same matrix wherever upstream applies its plain Hadamard rotation.
R is orthogonal: rotating both q and k leaves q·k unchanged, and a rotated
head's coordinates are spread evenly (an outlier channel gets smeared over all
of them), which is what the turbo codebooks assume.
"""

from __future__ import annotations

import numpy as np

SEED = 0x7475726230  # "turbo0"
_M64 = (1 << 64) - 1


def _check_d(d: int) -> int:
    d = int(d)
    if d < 2 or d & (d - 1):
        raise ValueError(f"Hadamard size must be a power of two >= 2, got {d}")
    return d


def splitmix64(seed: int, n: int) -> list[int]:
    """The first n outputs of splitmix64 (Vigna) started at ``seed``, as Python ints."""
    out = []
    state = seed & _M64
    for _ in range(n):
        state = (state + 0x9E3779B97F4A7C15) & _M64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
        out.append(z ^ (z >> 31))
    return out


def signs(d: int, seed: int = SEED) -> np.ndarray:
    """±1 (float64) per coordinate: -1 where the top bit of the i-th splitmix64 output is set."""
    d = _check_d(d)
    return np.array([-1.0 if z >> 63 else 1.0 for z in splitmix64(seed, d)])


def hadamard(d: int) -> np.ndarray:
    """Sylvester-ordered Hadamard matrix H_d (entries ±1, float64)."""
    d = _check_d(d)
    h = np.ones((1, 1), dtype=np.float64)
    while h.shape[0] < d:
        h = np.block([[h, h], [h, -h]])
    return h


def rotation_matrix(d: int, seed: int = SEED) -> np.ndarray:
    """R = diag(signs) H_d diag(signs) / sqrt(d), float64, symmetric, R @ R = I."""
    s = signs(d, seed)
    return s[:, None] * hadamard(d) * s[None, :] / np.sqrt(d)


def fwht(x: np.ndarray) -> np.ndarray:
    """Unnormalised fast Walsh-Hadamard transform on the last axis: x @ H_d (H symmetric)."""
    x = np.array(x, dtype=np.float64)
    d = _check_d(x.shape[-1])
    lead = x.shape[:-1]
    h = 1
    while h < d:
        # pair coordinates i and i+h inside blocks of 2h: (a, b) -> (a + b, a - b)
        y = x.reshape(*lead, d // (2 * h), 2, h)
        a, b = y[..., 0, :], y[..., 1, :]
        x = np.stack((a + b, a - b), axis=-2).reshape(*lead, d)
        h *= 2
    return x


def rotate(x: np.ndarray, seed: int = SEED) -> np.ndarray:
    """x @ R.T on the last axis (float64): y = sign * H (sign * x) / sqrt(d)."""
    x = np.asarray(x, dtype=np.float64)
    d = x.shape[-1]
    s = signs(d, seed)
    return fwht(x * s) * s / np.sqrt(d)


def unrotate(y: np.ndarray, seed: int = SEED) -> np.ndarray:
    """y @ R on the last axis (float64); R is its own inverse, so this equals rotate()."""
    return rotate(y, seed)
