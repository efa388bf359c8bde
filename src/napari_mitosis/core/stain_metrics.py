"""How close an image's colours are to a reference style, and how well structure survived.

Definitions (also in docs/stain.md):

- **histogram correlation**: per RGB channel, Pearson correlation between the
  256-bin intensity histograms of the image and of the reference (OpenCV's
  ``HISTCMP_CORREL``), averaged over the three channels; 1 is ideal.
- **Hellinger distance**: per channel ``sqrt(1 - sum(sqrt(p * q)))`` with ``p``,
  ``q`` the histograms normalised to sum 1 (OpenCV's ``HISTCMP_HELLINGER``),
  averaged over channels; 0 is ideal.
- **Euclidean distance (ΔE)**: the CIE76 distance between the mean Lab colour of
  the image's tissue pixels and the reference's; 0 is ideal, about 2.3 is a
  just-noticeable difference.
- **structure (SSIM)**: structural similarity of the grayscale image before
  and after normalisation; 1 means the structure is untouched.
"""

from __future__ import annotations

import numpy as np
from skimage import color
from skimage.metrics import structural_similarity

from .stain_norm import tissue_weight


def histograms(image: np.ndarray, bins: int = 256) -> np.ndarray:
    """(3, bins) per-channel intensity histograms, each summing to 1."""
    image = np.asarray(image)[..., :3].reshape(-1, 3)
    h = np.stack([np.bincount(image[:, c], minlength=256).reshape(bins, -1).sum(1) for c in range(3)]).astype(float)
    return h / np.maximum(h.sum(axis=1, keepdims=True), 1)


def histogram_correlation(a, b) -> float:
    """Mean over RGB of the Pearson correlation of the two images' histograms.

    Examples
    --------
    >>> img = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    >>> round(histogram_correlation(img, img), 6)
    1.0
    """
    ha, hb = (x if np.ndim(x) == 2 and np.shape(x)[0] == 3 else histograms(x) for x in (a, b))
    vals = [np.corrcoef(ha[c], hb[c])[0, 1] for c in range(3)]
    return float(np.nanmean(vals))


def hellinger(a, b) -> float:
    """Mean over RGB of the Hellinger distance of the two images' histograms.

    Examples
    --------
    >>> img = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    >>> hellinger(img, img) < 1e-6
    True
    """
    ha, hb = (x if np.ndim(x) == 2 and np.shape(x)[0] == 3 else histograms(x) for x in (a, b))
    bc = np.sqrt(ha * hb).sum(axis=1)
    return float(np.mean(np.sqrt(np.clip(1 - bc, 0, 1))))


def mean_tissue_lab(image: np.ndarray) -> np.ndarray:
    """Mean CIE Lab colour of the tissue pixels (all pixels if there is no tissue)."""
    lab = color.rgb2lab(np.asarray(image)[..., :3])
    mask = tissue_weight(image) >= 1
    return lab[mask].mean(axis=0) if mask.sum() > 10 else lab.reshape(-1, 3).mean(axis=0)


def delta_e(a, b) -> float:
    """CIE76 distance between the mean tissue colours of two images (or given Lab means)."""
    la = a if np.shape(a) == (3,) else mean_tissue_lab(a)
    lb = b if np.shape(b) == (3,) else mean_tissue_lab(b)
    return float(np.linalg.norm(np.asarray(la) - np.asarray(lb)))


def structure_ssim(before: np.ndarray, after: np.ndarray) -> float:
    """SSIM of the grayscale images before and after normalisation."""
    g0 = color.rgb2gray(np.asarray(before)[..., :3])
    g1 = color.rgb2gray(np.asarray(after)[..., :3])
    return float(structural_similarity(g0, g1, data_range=1.0))
