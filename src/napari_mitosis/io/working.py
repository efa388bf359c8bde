"""Reading a slide region at any pixel size: the one slide reader every task uses.

:func:`read_working` reads a level-0 box at ``ds`` level-0 pixels per output pixel
from the finest pyramid level not finer than needed, resampled (Gaussian
anti-aliasing, then bilinear) so that a tile and the whole region agree wherever
both see the same pixels. Used by nucleus segmentation, the heatmap, nucleus
typing and detection's screening (when no stored level is close enough), and by
the trainers.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi


def read_working(slide, x0: float, y0: float, ds: float, width: int, height: int) -> np.ndarray:
    """Read ``height x width`` pixels at ``ds`` level-0 pixels per pixel from level-0 ``(x0, y0)``.

    Working pixel ``(i, j)`` covers level-0 ``[x0 + j*ds, x0 + (j+1)*ds)``. The
    finest level not finer than needed is read and resampled (Gaussian
    anti-aliasing, then bilinear), so a tile and the whole region agree
    wherever both see the same pixels. Outside the slide is white.
    """
    level = slide.best_level_for_downsample(max(ds, 1.0))
    L = slide.level_downsamples[level]
    f = ds / L  # level pixels per working pixel
    lx, ly = x0 / L, y0 / L  # continuous level coordinates of the box corner
    pad = 2 + int(math.ceil(2 * max(f - 1, 0)))
    ix0, iy0 = int(math.floor(lx)) - pad, int(math.floor(ly)) - pad
    iw = int(math.ceil(lx + width * f)) + pad - ix0
    ih = int(math.ceil(ly + height * f)) + pad - iy0
    if abs(f - 1) < 1e-9 and float(lx).is_integer() and float(ly).is_integer():
        return slide.read_region(level, int(round(lx * L)), int(round(ly * L)), width, height)
    # read_region takes level-0 positions; keep them on the level's integer grid
    region = slide.read_region(level, int(round(ix0 * L)), int(round(iy0 * L)), iw, ih).astype(np.float32)
    sigma = max(0.0, (f - 1) / 2)
    mat = np.array([f, f])
    off = np.array([ly - iy0 + 0.5 * f - 0.5, lx - ix0 + 0.5 * f - 0.5])
    out = np.empty((height, width, 3), np.uint8)
    for c in range(3):
        ch = ndi.gaussian_filter(region[..., c], sigma) if sigma > 0.05 else region[..., c]
        res = ndi.affine_transform(ch, mat, off, (height, width), order=1, mode="nearest")
        out[..., c] = np.clip(np.rint(res), 0, 255)
    return out


def read_tissue_tile(slide, tissue, x: float, y: float, ds: float, w: int, h: int):
    """:func:`read_working` of a tile, or None when the tile holds no tissue (by the ``tissue``
    mask, when there is one, before any pixel is read) or its pixels are background."""
    from ..core.screening import is_background

    if tissue is not None and tissue.fraction_in(x, y, w * ds, h * ds) == 0:
        return None
    rgb = read_working(slide, x, y, ds, w, h)
    return None if is_background(rgb) else rgb
