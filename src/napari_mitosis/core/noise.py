"""Deterministic, coordinate-addressed noise.

The synthetic slide generator must render any tile of an arbitrarily large
slide on its own and get the same pixels as a neighbouring tile at the seam.
These helpers hash integer lattice coordinates (no global state, no RNG
stream), so a value depends only on ``(seed, salt, position)``.
"""

from __future__ import annotations

import numpy as np

_M1 = np.uint64(0x9E3779B97F4A7C15)
_M2 = np.uint64(0xBF58476D1CE4E5B9)
_M3 = np.uint64(0x94D049BB133111EB)


def hash_uniform(*coords, seed: int = 0, salt: int = 0) -> np.ndarray:
    """Uniform values in [0, 1) from integer coordinates (splitmix64 hash).

    Examples
    --------
    >>> a = hash_uniform(np.arange(3), np.zeros(3, int), seed=1)
    >>> b = hash_uniform(np.arange(3), np.zeros(3, int), seed=1)
    >>> bool((a == b).all()), bool(((0 <= a) & (a < 1)).all())
    (True, True)
    """
    with np.errstate(over="ignore"):
        h = np.uint64(seed * 1_000_003 + salt * 7919 + 12345) * _M1
        for i, c in enumerate(coords):
            c = np.asarray(c).astype(np.int64).astype(np.uint64)
            h = (h ^ (c + np.uint64(i + 1) * _M1)) * _M2
            h = (h ^ (h >> np.uint64(31))) * _M3
        h = h ^ (h >> np.uint64(29))
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def value_noise(y, x, scale: float, seed: int = 0, salt: int = 0) -> np.ndarray:
    """Smooth value noise in [0, 1] on a grid of coordinates.

    Parameters
    ----------
    y, x : 1-D arrays
        Row and column coordinates (any unit); the result has shape
        ``(len(y), len(x))``.
    scale : float
        Feature size, in the unit of ``y`` and ``x``.

    Examples
    --------
    >>> n = value_noise(np.arange(4.0), np.arange(5.0), scale=2.0)
    >>> n.shape, float(n.min()) >= 0, float(n.max()) <= 1
    ((4, 5), True, True)
    """
    wy, ly = _interpolation(np.asarray(y, dtype=np.float64) / scale)
    wx, lx = _interpolation(np.asarray(x, dtype=np.float64) / scale)
    lattice = hash_uniform(ly[:, None], lx[None, :], seed=seed, salt=salt).astype(np.float32)
    # separable smooth interpolation: rows of w hold two smoothstep weights
    return wy @ lattice @ wx.T


def value_noise_1d(t, scale: float, seed: int = 0, salt: int = 0) -> np.ndarray:
    """Smooth 1-D value noise in [0, 1] at arbitrary positions ``t`` (any shape).

    Examples
    --------
    >>> n = value_noise_1d(np.linspace(0, 10, 7).reshape(7, 1), scale=3.0)
    >>> n.shape, bool(((n >= 0) & (n <= 1)).all())
    ((7, 1), True)
    """
    f = np.asarray(t, dtype=np.float64) / scale
    i = np.floor(f)
    w = f - i
    w = w * w * (3 - 2 * w)
    a = hash_uniform(i, seed=seed, salt=salt)
    b = hash_uniform(i + 1, seed=seed, salt=salt)
    return (a + (b - a) * w).astype(np.float32)


def _interpolation(f: np.ndarray):
    """Dense (len(f), n) smoothstep interpolation matrix and its lattice indices."""
    i = np.floor(f).astype(np.int64)
    t = f - i
    t = (t * t * (3 - 2 * t)).astype(np.float32)
    lo = i.min()
    lattice = np.arange(lo, i.max() + 2)
    w = np.zeros((len(f), len(lattice)), np.float32)
    rows = np.arange(len(f))
    w[rows, i - lo] = 1 - t
    w[rows, i - lo + 1] = t
    return w, lattice


def fbm(y, x, scale: float, octaves: int = 3, seed: int = 0, salt: int = 0) -> np.ndarray:
    """Fractal sum of :func:`value_noise` octaves, normalised to [0, 1].

    Examples
    --------
    >>> n = fbm(np.arange(8.0), np.arange(8.0), scale=4.0, octaves=2)
    >>> n.shape
    (8, 8)
    """
    total = np.zeros((len(y), len(x)), np.float32)
    amp, norm = 1.0, 0.0
    for o in range(octaves):
        total += amp * value_noise(y, x, scale / 2**o, seed=seed, salt=salt * 31 + o)
        norm += amp
        amp *= 0.5
    return total / norm
