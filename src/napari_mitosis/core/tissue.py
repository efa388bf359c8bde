"""Low-resolution tissue detection.

Stained tissue absorbs light (optical density) and is coloured (saturation);
glass is bright and grey. Pen marks are coloured too but not in H&E hues,
and slide edges, dust and black ink are dark and grey. The mask keeps
pixels that are coloured in an H&E hue and dense enough, then cleans up with
morphology sized in micrometres.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from skimage import color, filters, morphology

from .stain import rgb_to_od


@dataclass
class TissueMask:
    """A tissue mask of a slide at low resolution.

    Attributes
    ----------
    mask : (rows, cols) bool
    level : int
        The pyramid level that was read to make it.
    downsample : float
        Level-0 pixels per mask pixel.
    mpp : float or None
        Mask pixel size in um (None when the slide's pixel size is unknown).
    image : (rows, cols, 3) uint8 or None
        The overview the mask was computed on.
    """

    mask: np.ndarray
    level: int
    downsample: float
    mpp: float | None
    image: np.ndarray | None = field(default=None, repr=False)

    @property
    def area_mm2(self) -> float | None:
        """Tissue area in mm^2 (None when the pixel size is unknown)."""
        if self.mpp is None:
            return None
        return float(self.mask.sum()) * self.mpp**2 / 1e6

    @property
    def fraction(self) -> float:
        """Fraction of the slide covered by tissue."""
        return float(self.mask.mean()) if self.mask.size else 0.0

    def fraction_in(self, x: float, y: float, w: float, h: float) -> float:
        """Fraction of a level-0 rectangle that is tissue (0 outside the slide).

        Examples
        --------
        >>> tm = TissueMask(np.array([[1, 0], [0, 0]], bool), level=0, downsample=10.0, mpp=None)
        >>> tm.fraction_in(0, 0, 10, 10), tm.fraction_in(10, 10, 10, 10)
        (1.0, 0.0)
        """
        d = self.downsample
        r0, r1 = int(np.floor(y / d)), int(np.ceil((y + h) / d))
        c0, c1 = int(np.floor(x / d)), int(np.ceil((x + w) / d))
        window = self.mask[max(r0, 0) : max(r1, 0), max(c0, 0) : max(c1, 0)]
        area = max(r1 - r0, 1) * max(c1 - c0, 1)
        return float(window.sum()) / area


def tissue_mask(
    rgb: np.ndarray,
    mpp: float | None = None,
    min_tissue_um2: float = 20_000.0,
    max_hole_um2: float = 10_000.0,
    exclude_pen: bool = True,
) -> np.ndarray:
    """Boolean tissue mask of a low-resolution RGB image.

    Parameters
    ----------
    rgb : (rows, cols, 3) uint8
        Overview image (a few um per pixel is ideal).
    mpp : float, optional
        Its pixel size; sizes below are converted with it. Without it, one
        pixel is taken as 8 um.
    min_tissue_um2 : float
        Tissue pieces smaller than this are dropped (dust, debris).
    max_hole_um2 : float
        Holes smaller than this inside tissue are filled.
    exclude_pen : bool
        Drop green, blue and black marker ink.

    Returns
    -------
    (rows, cols) bool

    Examples
    --------
    >>> img = np.full((64, 64, 3), 240, np.uint8)
    >>> img[16:48, 16:48] = (200, 120, 170)  # a pink square of "tissue"
    >>> m = tissue_mask(img, mpp=8.0, min_tissue_um2=1000)
    >>> int(m.sum()), bool(m[32, 32]), bool(m[2, 2])
    (1024, True, False)
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise ValueError(f"tissue_mask needs an RGB image, got shape {rgb.shape}")
    rgb = rgb[..., :3]
    if rgb.size == 0:
        return np.zeros(rgb.shape[:2], bool)
    px_um2 = (mpp or 8.0) ** 2
    background = _background_level(rgb)
    # per-pixel colour tests in bands of rows: the float images of a band, not of the whole
    # overview, are in memory at once (a 4-gigapixel slide's overview is 2048 x 2048 px)
    sat = np.empty(rgb.shape[:2])
    keep = np.empty(rgb.shape[:2], bool)
    for r0 in range(0, rgb.shape[0], 256):
        band = rgb[r0 : r0 + 256]
        hsv = color.rgb2hsv(band)
        hue, s, val = hsv[..., 0], hsv[..., 1], hsv[..., 2]
        sat[r0 : r0 + 256] = s
        ok = rgb_to_od(band, background=background).sum(axis=2) > 0.12
        if exclude_pen:
            green_cyan = (hue > 0.17) & (hue < 0.6) & (s > 0.15)
            blue = (hue >= 0.6) & (hue < 0.67) & (s > 0.4)  # hematoxylin is purpler (hue > 0.68)
            dark_grey = (val < 0.25) & (s < 0.25)  # black ink, slide edges, dust
            ok &= ~(green_cyan | blue | dark_grey)
        keep[r0 : r0 + 256] = ok

    # adaptive saturation threshold (Otsu), bounded so a slide that is all
    # tissue or all glass still gets a sensible answer
    sat_thr = 0.07
    if sat.max() - sat.min() > 0.05:
        sat_thr = float(np.clip(filters.threshold_otsu(sat), 0.05, 0.15))
    mask = (sat > sat_thr) & keep
    del sat, keep

    radius = max(1, int(round(16.0 / np.sqrt(px_um2))))  # 16 um: bridges gaps between fibres
    mask = morphology.closing(mask, morphology.disk(radius)).astype(bool)
    mask = morphology.remove_small_holes(mask, max_size=max(1, int(max_hole_um2 / px_um2)))
    mask = morphology.remove_small_objects(mask, max_size=max(1, int(min_tissue_um2 / px_um2)))
    return mask


def _background_level(rgb: np.ndarray) -> float:
    """Brightness of glass: a high percentile of the image, at least 200."""
    return float(max(np.percentile(rgb.max(axis=2), 99), 200.0))
