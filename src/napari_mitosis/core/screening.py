"""Screening of whole-slide detection: hematoxylin blobs and the features that pick candidates.

Pure numpy / OpenCV on an RGB image, no slide and no network: :func:`screen_features`
finds the blobs (local maxima of the smoothed hematoxylin) and measures how dark they
are and how much eosin surrounds them; :func:`screen` keeps the candidates;
:func:`nms` merges detections closer than a radius; :func:`is_background` and
:func:`is_background_od` skip tiles of glass. Used by
:mod:`napari_mitosis.pipeline.detect` (tile by tile) and the other tasks' tile
loops; the thresholds are those of :mod:`napari_mitosis.core.decision`.

The filters are OpenCV's: equal to scipy.ndimage's to float rounding, about ten
times faster, and they release the GIL (tiles on threads run in parallel).
"""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd

from .decision import DEFAULT_THRESHOLDS
from .nuclei import DECONV
from .stain import rgb_to_od

#: A tile is background when fewer than this fraction of its pixels absorb light.
EMPTY_FRACTION = 0.01
#: Summed RGB optical density above which a pixel counts as stained.
STAINED_OD = 0.2


def is_background(rgb: np.ndarray) -> bool:
    """True when fewer than 1% of the pixels absorb light (glass, white padding)."""
    od = rgb_to_od(rgb[::2, ::2]).sum(axis=2)
    return np.count_nonzero(od > STAINED_OD) < EMPTY_FRACTION * od.size


def eosin_od(od: np.ndarray) -> np.ndarray:
    """Eosin optical density (clipped at 0) of an optical density image (H, W, 3)."""
    e = od @ DECONV[:, 1]
    return np.maximum(e, 0.0, out=e)


def _od_lut() -> np.ndarray:
    """Optical density of every uint8 value (:func:`~napari_mitosis.core.stain.rgb_to_od`, float32)."""
    global _OD_LUT
    if _OD_LUT is None:
        _OD_LUT = np.ascontiguousarray(rgb_to_od(np.arange(256, dtype=np.uint8)[:, None].repeat(3, 1))[:, 0],
                                       dtype=np.float32)
    return _OD_LUT


_OD_LUT = None


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """``rgb_to_od(rgb)`` (float32) by table look-up (OpenCV's LUT: one gather instead of a logarithm per value)."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        return rgb_to_od(rgb)
    return cv2.LUT(np.ascontiguousarray(rgb), _od_lut())


def gaussian(img: np.ndarray, sigma: float) -> np.ndarray:
    """``scipy.ndimage.gaussian_filter(img, sigma)`` of a 2-D float32 image (mode reflect,
    truncate 4) by OpenCV: equal to float rounding, ~10x faster, and without the GIL.

    >>> from scipy import ndimage as ndi
    >>> img = np.random.default_rng(0).random((40, 30), dtype=np.float32)
    >>> bool(np.allclose(gaussian(img, 2.0), ndi.gaussian_filter(img, 2.0), atol=1e-6))
    True
    """
    r = int(4.0 * float(sigma) + 0.5)
    return cv2.GaussianBlur(np.ascontiguousarray(img, np.float32), (2 * r + 1, 2 * r + 1), float(sigma),
                            sigmaY=float(sigma), borderType=cv2.BORDER_REFLECT)


def gaussian_at(img: np.ndarray, sigma: float, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """``gaussian(img, sigma)[ys, xs]`` (float64), smoothing across rows over the whole image
    and along them at those pixels only: half the work of the whole-image filter.

    >>> img = np.random.default_rng(0).random((50, 60), dtype=np.float32)
    >>> ys, xs = np.array([0, 10, 49]), np.array([59, 3, 30])
    >>> bool(np.allclose(gaussian_at(img, 3.0, ys, xs), gaussian(img, 3.0)[ys, xs], atol=1e-6))
    True
    """
    r = int(4.0 * float(sigma) + 0.5)
    if min(img.shape) <= r or len(ys) * (2 * r + 1) > img.size:  # small image, or dense points
        return gaussian(img, sigma)[ys, xs].astype(float)
    g = cv2.getGaussianKernel(2 * r + 1, float(sigma), cv2.CV_32F)
    v = cv2.sepFilter2D(np.ascontiguousarray(img, np.float32), -1, np.ones((1, 1), np.float32), g,
                        borderType=cv2.BORDER_REFLECT)
    cols = xs[:, None] + np.arange(-r, r + 1)  # the row windows, reflected at the borders (r < width)
    cols = np.where(cols < 0, -1 - cols, cols)
    cols = np.where(cols >= v.shape[1], 2 * v.shape[1] - 1 - cols, cols)
    return (v[ys[:, None], cols] @ g[:, 0]).astype(float)


def max_filter(a: np.ndarray, size: int) -> np.ndarray:
    """``scipy.ndimage.maximum_filter(a, size)`` (any mode that repeats edge values: reflect,
    nearest ...) by OpenCV's dilation with a square: exact.

    >>> from scipy import ndimage as ndi
    >>> a = np.random.default_rng(0).random((20, 25), dtype=np.float32)
    >>> bool(np.array_equal(max_filter(a, 7), ndi.maximum_filter(a, 7)))
    True
    """
    return cv2.dilate(np.ascontiguousarray(a), np.ones((size, size), np.uint8), borderType=cv2.BORDER_REFLECT)


def is_background_od(od: np.ndarray) -> bool:
    """:func:`is_background` from the image's optical density."""
    sub = od[::2, ::2]
    need, seen = EMPTY_FRACTION * sub.shape[0] * sub.shape[1], 0
    for i in range(0, sub.shape[0], 64):  # stop as soon as enough stained pixels are seen (tissue tiles)
        seen += np.count_nonzero(sub[i : i + 64].sum(axis=2) > STAINED_OD)
        if seen >= need:
            return False
    return True


def screen_features(rgb: np.ndarray, mpp: float, nucleus_od: float = DEFAULT_THRESHOLDS["detect_nucleus_od"],
                    od: np.ndarray | None = None) -> pd.DataFrame:
    """Hematoxylin blobs of an RGB image and the features that screen them.

    Returns a DataFrame with ``x, y`` (pixels of ``rgb``), ``dark`` (hematoxylin
    OD smoothed over ~1 um at the blob: condensed chromatin is darkest) and
    ``eosin`` (eosin OD smoothed over ~3 um: the granular cytoplasm of
    eosinophils), both relative to their 90th percentile over the image's blobs,
    one row per local maximum of the smoothed hematoxylin at least 3 um from a
    brighter one and above ``nucleus_od``. ``od``: the image's optical density,
    when the caller has it already.

    The smoothing and the running maximum are OpenCV's (they equal scipy.ndimage's
    to float rounding, at a tenth of the cost, and release the GIL, so tiles on
    threads run in parallel).

    Examples
    --------
    >>> from napari_mitosis.core.synthetic import SyntheticHE
    >>> rgb, _ = SyntheticHE(shape=(400, 400), mpp=0.5, seed=1, tissue="full").render(0, 0, 400, 400)
    >>> f = screen_features(rgb, 0.5)
    >>> len(f) > 20, list(f.columns)
    (True, ['x', 'y', 'dark', 'eosin'])
    """
    return pd.DataFrame(blob_features(rgb, mpp, nucleus_od, od))


def blob_features(rgb, mpp, nucleus_od, od=None) -> dict:
    """:func:`screen_features` as a dict of arrays."""
    if min(np.shape(rgb)[:2]) == 0:
        return {"x": np.zeros(0), "y": np.zeros(0), "dark": np.zeros(0), "eosin": np.zeros(0)}
    od = optical_density(rgb) if od is None else od
    h = np.maximum(od @ DECONV[:, 0], 0.0)
    hs = gaussian(h, 1.0 / mpp)
    size = 2 * int(round(3.0 / mpp)) + 1
    peaks = cv2.bitwise_and(cv2.compare(hs, max_filter(hs, size), cv2.CMP_EQ), (hs > nucleus_od).view(np.uint8))
    at = cv2.findNonZero(peaks)  # x, y in row-major order, like np.nonzero ((n, 1, 2) in OpenCV 4, (n, 2) in 5)
    if at is None:
        return {"x": np.zeros(0), "y": np.zeros(0), "dark": np.zeros(0), "eosin": np.zeros(0)}
    at = at.reshape(-1, 2)
    xs, ys = at[:, 0], at[:, 1]
    dark = hs[ys, xs].astype(float)
    eos = gaussian_at(eosin_od(od), 3.0 / mpp, ys, xs)
    # relative to the tile's nuclei (stains differ between labs): darkness and eosin over their
    # 90th percentile; with few blobs, at least typical values so that a few pale nuclei stay pale
    few = len(dark) < 30
    qd = max(np.percentile(dark, 90), 1.0) if few else np.percentile(dark, 90)
    qe = max(np.percentile(eos, 90), 0.4) if few else np.percentile(eos, 90)
    return {"x": xs.astype(float), "y": ys.astype(float), "dark": dark / max(qd, 1e-3), "eosin": eos / max(qe, 1e-3)}


def screen(features: pd.DataFrame, dark: float, gran_dark: float, eosin: float) -> np.ndarray:
    """Which blobs go to the network: dark enough (mitosis), or fairly dark in eosinophilic surroundings (granulocyte)."""
    d, e = np.asarray(features["dark"]), np.asarray(features["eosin"])
    return (d >= dark) | ((d >= gran_dark) & (e >= eosin))


def nms(xy: np.ndarray, scores: np.ndarray, radius: float) -> np.ndarray:
    """Greedy non-maximum suppression by distance: indices kept, best score first.

    >>> nms(np.array([[0, 0], [3, 0], [10, 0]]), np.array([0.5, 0.9, 0.7]), radius=5)
    array([1, 2])
    """
    xy = np.asarray(xy, float).reshape(-1, 2)
    n = len(xy)
    if n == 0:
        return np.zeros(0, int)
    from scipy.spatial import cKDTree

    pairs = cKDTree(xy).query_pairs(radius, output_type="ndarray")  # all pairs closer than radius, once
    if len(pairs) == 0:
        return np.arange(n)
    # neighbour lists (CSR); a point without neighbours is kept, the greedy walk visits the others only
    src, dst = np.concatenate([pairs[:, 0], pairs[:, 1]]), np.concatenate([pairs[:, 1], pairs[:, 0]])
    by = np.argsort(src, kind="stable")
    nbr, start = dst[by], np.searchsorted(src[by], np.arange(n + 1))
    order = np.lexsort((xy[:, 1], xy[:, 0], -np.asarray(scores, float)))  # ties: deterministic
    removed = np.zeros(n, bool)
    for i in order[start[order + 1] > start[order]].tolist():
        if not removed[i]:
            removed[nbr[start[i] : start[i + 1]]] = True
    return np.flatnonzero(~removed)
