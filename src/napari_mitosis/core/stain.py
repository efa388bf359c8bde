"""Beer-Lambert stain model for H&E brightfield images.

Transmitted light through a stained section follows Beer-Lambert:
``I = I0 * exp(-OD)`` with the optical density ``OD`` the sum of each stain's
concentration times its (unit) optical-density vector in RGB.
"""

from __future__ import annotations

import numpy as np

#: Ruifrok & Johnston hematoxylin optical-density vector (R, G, B).
HEMATOXYLIN = np.array([0.650, 0.704, 0.286])
#: Ruifrok & Johnston eosin optical-density vector (R, G, B).
EOSIN = np.array([0.072, 0.990, 0.105])

#: Intensity of unobstructed light (bright-field background), per channel.
BACKGROUND = 245.0


def unit(vector) -> np.ndarray:
    """Return ``vector`` scaled to unit Euclidean length.

    Examples
    --------
    >>> unit([3.0, 4.0, 0.0])
    array([0.6, 0.8, 0. ])
    """
    v = np.asarray(vector, dtype=float)
    n = np.linalg.norm(v)
    if not np.isfinite(n) or n == 0:
        raise ValueError(f"stain vector {vector!r} has no length")
    return v / n


def rgb_to_od(rgb, background: float = BACKGROUND) -> np.ndarray:
    """Optical density of an RGB uint8 image (float32, >= 0, finite).

    Examples
    --------
    >>> rgb_to_od(np.array([[[245, 245, 245]]], dtype=np.uint8))[0, 0]
    array([0., 0., 0.], dtype=float32)
    """
    rgb = np.asarray(rgb, dtype=np.float32)
    od = -np.log(np.clip(rgb, 1.0, None) / np.float32(background))
    return np.maximum(od, 0.0, out=od)


def od_to_rgb(od, background: float = BACKGROUND) -> np.ndarray:
    """RGB uint8 image from optical density (inverse of :func:`rgb_to_od`).

    Examples
    --------
    >>> od_to_rgb(np.zeros((1, 1, 3)))[0, 0]
    array([245, 245, 245], dtype=uint8)
    """
    rgb = background * np.exp(-np.asarray(od, dtype=np.float32))
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def render_stains(concentrations, vectors, background: float = BACKGROUND) -> np.ndarray:
    """Render stain concentration maps through the Beer-Lambert model.

    Parameters
    ----------
    concentrations : sequence of (H, W) arrays
        One concentration map per stain (non-negative).
    vectors : sequence of length-3 vectors
        The optical-density vector of each stain; normalised to unit length.
    background : float
        Light intensity where there is no stain.

    Returns
    -------
    (H, W, 3) uint8 RGB image.

    Examples
    --------
    >>> h = np.array([[0.0, 1.0]])
    >>> e = np.zeros((1, 2))
    >>> rgb = render_stains([h, e], [HEMATOXYLIN, EOSIN])
    >>> rgb[0, 0].tolist(), bool((rgb[0, 1] < rgb[0, 0]).all())
    ([245, 245, 245], True)
    """
    od = None
    for conc, vec in zip(concentrations, vectors, strict=True):
        term = np.asarray(conc, dtype=np.float32)[..., None] * unit(vec).astype(np.float32)
        od = term if od is None else od + term
    return od_to_rgb(od, background)
