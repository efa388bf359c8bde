"""Nucleus segmentation building blocks: pure numpy / scipy / scikit-image.

- :func:`hematoxylin_od` -- colour deconvolution (Ruifrok & Johnston) to the
  hematoxylin optical density.
- :func:`log_nuclei` -- the classical baseline: hematoxylin channel, threshold,
  Laplacian-of-Gaussian blob detection for seeds, marker watershed.
- :func:`probabilities_to_instances` -- turns a network's background /
  nucleus / boundary probabilities into instance labels with a marker-based
  watershed, so touching nuclei separate.
- :func:`hover_targets`, :func:`hover_to_instances` -- HoVer-Net style
  horizontal/vertical distance maps (training targets) and their marker-controlled
  watershed (the ``nuclei-hover`` model).
- :func:`instances_to_classes` -- the inverse, for training targets.
- :func:`nuclei_table` -- one row per nucleus: id, centroid in level-0 pixels
  and micrometres, area in um2, eccentricity, mean hematoxylin OD.
- Metrics: :func:`pixel_metrics` (the paper's sensitivity, specificity, Dice,
  Jaccard), :func:`aggregated_jaccard_index` (AJI, Kumar et al. 2017) and
  :func:`panoptic_quality` (PQ, Kirillov et al. 2019; as in HoVer-Net).

Everything works at a known pixel size (``mpp``, um/px); sizes given in
micrometres are converted here so the same parameters hold at any resolution.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from .stain import BACKGROUND, EOSIN, HEMATOXYLIN, as_rgb, rgb_to_od, unit

#: Default working pixel size of nucleus segmentation (um/px).
NUCLEI_MPP = 0.5

#: Columns of :func:`nuclei_table`.
TABLE_COLUMNS = ["id", "x", "y", "x_um", "y_um", "area_um2", "eccentricity", "mean_hematoxylin_od"]


def _deconvolution_matrix() -> np.ndarray:
    h, e = unit(HEMATOXYLIN), unit(EOSIN)
    r = np.cross(h, e)
    m = np.stack([h, e, r / np.linalg.norm(r)])
    return np.linalg.inv(m).astype(np.float32)


DECONV = _deconvolution_matrix()


def check_rgb(rgb, name: str = "image") -> np.ndarray:
    """Return ``rgb`` as an ``(H, W, 3)`` uint8 array or raise a clear ``ValueError``.

    Grey images are repeated to 3 channels and an alpha channel is dropped.

    Examples
    --------
    >>> check_rgb(np.zeros((2, 3), np.uint8)).shape
    (2, 3, 3)
    """
    return as_rgb(rgb, name, allow_grey=True)


def hematoxylin_od(rgb, background: float = BACKGROUND) -> np.ndarray:
    """Hematoxylin optical density by colour deconvolution.

    The RGB optical density is unmixed with the Ruifrok & Johnston
    hematoxylin and eosin vectors (the third vector is their cross product).

    Parameters
    ----------
    rgb : (H, W, 3) uint8 array
    background : float
        Intensity of glass (the Beer-Lambert ``I0``).

    Returns
    -------
    (H, W) float32 array, >= 0 (0 on glass; about 0.5-1.5 in nuclei).

    Examples
    --------
    >>> from napari_mitosis.core.stain import render_stains
    >>> rgb = render_stains([np.array([[0.0, 1.0]]), np.zeros((1, 2))], [HEMATOXYLIN, EOSIN])
    >>> np.round(hematoxylin_od(rgb), 1).tolist()
    [[0.0, 1.0]]
    """
    od = rgb_to_od(check_rgb(rgb), background)
    h = od @ DECONV[:, 0]
    return np.maximum(h, 0.0, out=h)


def _px(um: float, mpp: float) -> float:
    return um / mpp


def _remove_small(labels: np.ndarray, min_px: float) -> np.ndarray:
    if labels.max() == 0 or min_px <= 1:
        return labels
    sizes = np.bincount(labels.ravel())
    small = sizes < min_px
    small[0] = False
    if small.any():
        labels = labels.copy()
        labels[small[labels]] = 0
    return labels


def relabel(labels: np.ndarray) -> np.ndarray:
    """Renumber labels to 1..N in order of first appearance (raster order), 0 kept.

    Examples
    --------
    >>> relabel(np.array([[0, 7, 7, 3]])).tolist()
    [[0, 1, 1, 2]]
    """
    labels = np.asarray(labels)
    flat = labels.ravel()
    ids, first = np.unique(flat, return_index=True)
    keep = ids != 0
    ids, first = ids[keep], first[keep]
    order = ids[np.argsort(first)]
    lut = np.zeros(int(flat.max(initial=0)) + 1, np.int32)
    lut[order] = np.arange(1, len(order) + 1, dtype=np.int32)
    return lut[labels]


def otsu_threshold(values: np.ndarray, lo: float, hi: float) -> float:
    """Otsu threshold of ``values`` clamped to ``[lo, hi]`` (``lo`` when there is nothing to split).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> t = otsu_threshold(np.r_[rng.normal(0.2, 0.05, 500), rng.normal(0.8, 0.05, 500)], 0.1, 0.9)
    >>> bool(0.3 < t < 0.7), otsu_threshold(np.zeros(100), 0.1, 0.9)
    (True, 0.1)
    """
    from skimage.filters import threshold_otsu

    v = np.asarray(values, np.float32).ravel()
    v = v[np.isfinite(v)]
    if v.size < 16 or float(v.max()) - float(v.min()) < 1e-3:
        return float(lo)
    return float(np.clip(threshold_otsu(v), lo, hi))


def log_threshold(rgb, background: float = BACKGROUND) -> float:
    """The hematoxylin OD threshold :func:`log_nuclei` would choose for ``rgb``.

    80% of Otsu's threshold on the hematoxylin OD of the stained pixels
    (Otsu's clamped to 0.3-2.5; the 0.8 factor was chosen by AJI on training
    images of ../shared/data/nuclei, where Otsu's alone misses pale nuclei). Compute it once for a whole region (e.g. on an overview) and pass
    it to :func:`log_nuclei` tile by tile, so tiles agree.
    """
    h = hematoxylin_od(rgb, background)
    od_sum = rgb_to_od(check_rgb(rgb), background).sum(axis=2)
    stained = h[od_sum > 0.15]
    if stained.size < 64:
        return 0.3
    return 0.8 * otsu_threshold(stained, 0.3, 2.5)


def log_nuclei(
    rgb,
    mpp: float = NUCLEI_MPP,
    threshold: float | None = None,
    radius_um: tuple[float, float] = (3.0, 6.0),
    min_distance_um: float = 3.5,
    min_area_um2: float = 8.0,
    background: float = BACKGROUND,
) -> np.ndarray:
    """Classical nucleus segmentation: hematoxylin threshold + LoG seeds + watershed.

    1. Colour deconvolution to the hematoxylin optical density, smoothed by a
       0.5 um Gaussian.
    2. Foreground: hematoxylin OD above ``threshold`` (Otsu's on the image
       when None), holes filled, opened by a 1 um disk.
    3. Seeds: local maxima of the scale-normalised Laplacian of Gaussian
       (``-sigma**2 * LoG``, max over sigmas ``r / sqrt(2)`` for ``r`` in
       ``radius_um``) inside the foreground, at least ``min_distance_um`` apart.
    4. Marker watershed on the negated LoG response within the foreground;
       pieces below ``min_area_um2`` are dropped.

    Every filter is local (at most about 4 x the largest sigma), so with a fixed
    ``threshold`` the result on a tile with a halo matches the whole image.

    Parameters
    ----------
    rgb : (H, W, 3) uint8 array
    mpp : float
        Pixel size of ``rgb`` in um/px.
    threshold : float, optional
        Hematoxylin OD threshold; see :func:`log_threshold`.

    Returns
    -------
    (H, W) int32 instance labels (0 = background).

    Examples
    --------
    >>> from napari_mitosis.core.synthetic import SyntheticHE
    >>> rgb, truth = SyntheticHE(shape=(200, 200), mpp=0.5, seed=1, tissue="full").render(0, 0, 200, 200)
    >>> labels = log_nuclei(rgb, mpp=0.5)
    >>> bool(pixel_metrics(labels > 0, truth > 0)["dice"] > 0.6)
    True
    """
    from skimage.morphology import disk
    from skimage.segmentation import watershed

    if not (mpp and np.isfinite(mpp) and mpp > 0):
        raise ValueError(f"pixel size must be a positive number of um/px, got {mpp!r}")
    rgb = check_rgb(rgb)
    h = ndi.gaussian_filter(hematoxylin_od(rgb, background), _px(0.5, mpp))
    if threshold is None:
        threshold = log_threshold(rgb, background)
    fg = h > threshold
    if not fg.any():
        return np.zeros(h.shape, np.int32)
    r_open = max(1, int(round(_px(1.0, mpp))))
    fg = ndi.binary_opening(fg, disk(r_open))
    fg = ndi.binary_fill_holes(fg)
    sigmas = np.linspace(*(_px(r, mpp) / np.sqrt(2) for r in radius_um), 4)
    response = np.max([-(s**2) * ndi.gaussian_laplace(h, s) for s in sigmas], axis=0)
    size = 2 * int(round(_px(min_distance_um, mpp))) + 1
    peaks = (response == ndi.maximum_filter(response, size=size)) & fg & (response > 0)
    markers, _ = ndi.label(peaks)
    labels = watershed(-response, markers, mask=fg)
    # foreground pieces without a seed become one nucleus each
    rest, n = ndi.label(fg & (labels == 0))
    if n:
        labels = np.where(rest > 0, rest + labels.max(), labels)
    labels = _remove_small(labels, min_area_um2 / mpp**2)
    return relabel(labels)


def instances_to_classes(labels, boundary_px: int = 1) -> np.ndarray:
    """Three-class training target from instance labels.

    0 background, 1 nucleus interior, 2 nuclear boundary (the ``boundary_px``
    outermost pixels of each nucleus, including where two nuclei touch).

    Examples
    --------
    >>> lab = np.zeros((5, 8), np.int32); lab[1:4, 1:4] = 1; lab[1:4, 4:7] = 2
    >>> instances_to_classes(lab)[2].tolist()
    [0, 2, 1, 2, 2, 1, 2, 0]
    """
    from skimage.segmentation import find_boundaries

    labels = np.asarray(labels)
    out = (labels > 0).astype(np.uint8)
    b = find_boundaries(labels, mode="inner")
    for _ in range(boundary_px - 1):
        b |= find_boundaries(np.where(b, 0, labels), mode="inner")
    out[b & (labels > 0)] = 2
    return out


def probabilities_to_instances(
    probs,
    mpp: float = NUCLEI_MPP,
    foreground: float = 0.5,
    marker: float = 0.5,
    min_marker_um2: float = 2.0,
    min_area_um2: float = 8.0,
) -> np.ndarray:
    """Instance labels from background / nucleus / boundary probabilities.

    1. Foreground: ``P(nucleus) + P(boundary) > foreground``.
    2. Markers: connected pieces of ``P(nucleus) - P(boundary) > marker``
       (nucleus interiors, cut apart by the predicted boundaries) of at least
       ``min_marker_um2``.
    3. Marker-controlled watershed of ``1 - P(nucleus)`` within the
       foreground, so touching nuclei split along the predicted boundary.
    4. Foreground pieces without a marker become one nucleus each; nuclei
       below ``min_area_um2`` are dropped.

    Parameters
    ----------
    probs : (3, H, W) float array
        Softmax output (channels: background, nucleus, boundary).
    mpp : float
        Pixel size in um/px.

    Returns
    -------
    (H, W) int32 labels, numbered 1..N.

    Examples
    --------
    Two touching square nuclei with a predicted boundary between them:

    >>> p = np.zeros((3, 12, 20), np.float32); p[0] = 1
    >>> for x0 in (2, 10):
    ...     p[:, 2:10, x0:x0 + 8] = np.array([0, 0, 1.0])[:, None, None]   # boundary ring
    ...     p[:, 3:9, x0 + 1:x0 + 7] = np.array([0, 1.0, 0])[:, None, None]  # interior
    >>> lab = probabilities_to_instances(p, mpp=0.5, min_area_um2=1, min_marker_um2=1)
    >>> int(lab.max()), bool(lab[5, 5] != lab[5, 14])
    (2, True)
    """
    p = np.asarray(probs, dtype=np.float32)
    if p.ndim != 3 or p.shape[0] != 3:
        raise ValueError(f"probabilities must be (3, rows, columns) for background/nucleus/boundary, got {p.shape}")
    fg = (p[1] + p[2]) > foreground
    if not fg.any():
        return np.zeros(p.shape[1:], np.int32)
    seeds = ((p[1] - p[2]) > marker) & fg
    return _marker_watershed(1.0 - p[1], seeds, fg, mpp, min_marker_um2, min_area_um2)


def _marker_watershed(surface, seeds, fg, mpp, min_marker_um2, min_area_um2) -> np.ndarray:
    """Watershed of ``surface`` within ``fg`` from the connected ``seeds`` of at least
    ``min_marker_um2``; foreground pieces without a marker become one nucleus each; nuclei under
    ``min_area_um2`` are dropped; labels 1..N."""
    from skimage.segmentation import watershed

    markers, _ = ndi.label(seeds)
    markers = _remove_small(markers, min_marker_um2 / mpp**2)
    labels = watershed(surface, markers, mask=fg)
    rest, n = ndi.label(fg & (labels == 0))
    if n:
        labels = np.where(rest > 0, rest + labels.max(), labels)
    labels = _remove_small(labels, min_area_um2 / mpp**2)
    return relabel(labels)


def hover_targets(labels) -> np.ndarray:
    """HoVer-Net distance maps ``(2, H, W)`` float32 of instance labels: for each nuclear pixel the
    horizontal (``[0]``) and vertical (``[1]``) offset from its nucleus's centroid, scaled to
    [-1, 1] separately on each side of the centroid (Graham et al. 2019); 0 on background.

    Examples
    --------
    >>> lab = np.zeros((3, 7), np.int32); lab[1, 1:6] = 4
    >>> hover_targets(lab)[0, 1].tolist()
    [0.0, -1.0, -0.5, 0.0, 0.5, 1.0, 0.0]
    """
    labels = np.asarray(labels)
    out = np.zeros((2,) + labels.shape, np.float32)
    if labels.max(initial=0) == 0:
        return out
    lab = relabel(labels)
    n = int(lab.max()) + 1
    rr, cc = np.nonzero(lab)
    li = lab[rr, cc]
    count = np.bincount(li, minlength=n).astype(np.float64)
    count[0] = 1
    for axis, coord in enumerate((cc, rr)):
        c = coord.astype(np.float64)
        d = c - (np.bincount(li, weights=c, minlength=n) / count)[li]
        lo = np.zeros(n)
        hi = np.zeros(n)
        np.minimum.at(lo, li, d)
        np.maximum.at(hi, li, d)
        val = np.where(d < 0, d / np.where(lo[li] < 0, -lo[li], 1), d / np.where(hi[li] > 0, hi[li], 1))
        out[axis, rr, cc] = val
    return out


def hover_energy(hv) -> np.ndarray:
    """Edge energy of HoVer distance maps ``(2, H, W)``: twice the larger absolute (Sobel)
    derivative of h along x and of v along y, per pixel: about 4 / diameter (in pixels) inside a
    nucleus, where the maps run from -1 to 1, and about 2 where two touching nuclei meet and the
    maps flip sign.

    Examples
    --------
    >>> hv = np.zeros((2, 3, 9), np.float32); hv[0] = np.r_[np.linspace(-1, 1, 5), -1, -0.5, 0, 0.5]
    >>> hover_energy(hv)[0, [1, 2, 4, 5]].round(2).tolist()
    [1.0, 1.0, 1.5, 1.5]
    """
    hv = np.asarray(hv, np.float32)
    gx = np.abs(ndi.sobel(hv[0], axis=1)) / 8.0 * 2.0
    gy = np.abs(ndi.sobel(hv[1], axis=0)) / 8.0 * 2.0
    return np.maximum(gx, gy)


def hover_to_instances(
    maps,
    mpp: float = NUCLEI_MPP,
    foreground: float = 0.5,
    marker: float = 0.3,
    energy: float = 0.5,
    min_marker_um2: float = 2.0,
    min_area_um2: float = 8.0,
) -> np.ndarray:
    """Instance labels from P(background), P(nucleus), P(boundary) and HoVer h/v maps.

    1. Foreground: ``1 - P(background) > foreground``.
    2. Markers: connected pieces of the foreground where ``P(nucleus) - P(boundary) > marker``
       and the h/v edge energy (:func:`hover_energy`) is below ``energy``: nucleus interiors,
       cut apart both by predicted boundaries and where the distance maps flip sign between
       two touching nuclei; pieces under ``min_marker_um2`` are dropped.
    3. Marker-controlled watershed of ``energy + P(boundary) - P(nucleus)`` within the
       foreground; foreground pieces without a marker become one nucleus each; nuclei under
       ``min_area_um2`` are dropped.

    Parameters
    ----------
    maps : (5, H, W) float array
        P(background), P(nucleus), P(boundary), h, v (as :func:`hover_targets`).
    mpp : float
        Pixel size (um/px).

    Returns
    -------
    (H, W) int32 labels numbered 1..N.

    Examples
    --------
    Two touching discs with perfect maps and no predicted boundary between them:

    >>> yy, xx = np.mgrid[:20, :34]
    >>> lab = ((yy - 10) ** 2 + (xx - 10) ** 2 < 64) * 1
    >>> lab[((yy - 10) ** 2 + (xx - 24) ** 2 < 64) & (xx >= 17)] = 2
    >>> maps = np.zeros((5, 20, 34), np.float32)
    >>> maps[0], maps[1] = lab == 0, lab > 0
    >>> maps[3:] = hover_targets(lab)
    >>> out = hover_to_instances(maps, mpp=0.5)
    >>> int(out.max()), bool(out[10, 8] != out[10, 26])
    (2, True)
    """
    p = np.asarray(maps, dtype=np.float32)
    if p.ndim != 3 or p.shape[0] != 5:
        raise ValueError(f"maps must be (5, rows, columns): background, nucleus, boundary, h, v; got {p.shape}")
    fg = (1.0 - p[0]) > foreground
    if not fg.any():
        return np.zeros(p.shape[1:], np.int32)
    en = hover_energy(p[3:])
    seeds = fg & ((p[1] - p[2]) > marker) & (en < energy)
    return _marker_watershed(en + p[2] - p[1], seeds, fg, mpp, min_marker_um2, min_area_um2)


def nuclei_table(
    labels,
    rgb=None,
    mpp: float = NUCLEI_MPP,
    origin: tuple[float, float] = (0.0, 0.0),
    downsample: float = 1.0,
    level0_mpp: float | None = None,
    hematoxylin=None,
) -> pd.DataFrame:
    """One row per nucleus: where it is, how big, how round, how dark.

    Parameters
    ----------
    labels : (H, W) int array
        Instance labels at pixel size ``mpp``.
    rgb : (H, W, 3) uint8 array, optional
        The image the labels were made from (for the hematoxylin OD).
    mpp : float
        Pixel size of ``labels`` (um/px).
    origin : (x, y)
        Level-0 pixel position of the labels' top-left corner.
    downsample : float
        Level-0 pixels per label pixel.
    level0_mpp : float, optional
        Level-0 pixel size; defaults to ``mpp / downsample``.
    hematoxylin : (H, W) float array, optional
        Precomputed hematoxylin OD (instead of ``rgb``).

    Returns
    -------
    pandas.DataFrame
        Columns :data:`TABLE_COLUMNS`: ``id`` (the label value), ``x``, ``y``
        (centroid in level-0 pixels), ``x_um``, ``y_um`` (the same in um:
        level-0 pixel index times the level-0 pixel size, as napari places a
        layer with that scale), ``area_um2``, ``eccentricity`` (0 for a
        circle) and ``mean_hematoxylin_od`` (NaN without an image).

    Examples
    --------
    >>> lab = np.zeros((10, 10), np.int32); lab[2:6, 2:6] = 5
    >>> t = nuclei_table(lab, mpp=0.5, origin=(100, 0), downsample=2.0)
    >>> t[["id", "x", "y", "area_um2"]].values.tolist()
    [[5.0, 107.5, 7.5, 4.0]]
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2-D, got shape {labels.shape}")
    if hematoxylin is None and rgb is not None:
        hematoxylin = hematoxylin_od(rgb)
    if level0_mpp is None:
        level0_mpp = mpp / downsample
    if labels.max(initial=0) == 0:
        return pd.DataFrame({c: pd.Series(dtype="int64" if c == "id" else "float64") for c in TABLE_COLUMNS})
    # moments by bincount: one pass over the pixels, no Python loop over nuclei
    lab = labels.ravel().astype(np.int64)
    fg = lab > 0
    lab = lab[fg]
    rr, cc = np.nonzero(labels)
    n = int(lab.max()) + 1
    count = np.bincount(lab, minlength=n).astype(np.float64)
    ids = np.nonzero(count)[0]
    ids = ids[ids > 0]
    k = count[ids]

    def mean(values):
        return np.bincount(lab, weights=values, minlength=n)[ids] / k

    cy, cx = mean(rr.astype(np.float64)), mean(cc.astype(np.float64))
    myy = mean(rr.astype(np.float64) ** 2) - cy**2
    mxx = mean(cc.astype(np.float64) ** 2) - cx**2
    mxy = mean(rr.astype(np.float64) * cc) - cy * cx
    half, root = (myy + mxx) / 2, np.sqrt(((myy - mxx) / 2) ** 2 + mxy**2)
    l1, l2 = half + root, np.maximum(half - root, 0)
    ecc = np.where(l1 > 1e-12, np.sqrt(np.clip(1 - l2 / np.where(l1 > 1e-12, l1, 1), 0, 1)), 0.0)
    if hematoxylin is not None:
        hod = mean(np.asarray(hematoxylin, np.float64).ravel()[fg])
    else:
        hod = np.full(ids.size, np.nan)
    x = (cx + 0.5) * downsample - 0.5 + origin[0]
    y = (cy + 0.5) * downsample - 0.5 + origin[1]
    return pd.DataFrame(
        {
            "id": ids.astype(np.int64),
            "x": x,
            "y": y,
            "x_um": x * level0_mpp,
            "y_um": y * level0_mpp,
            "area_um2": k * mpp**2,
            "eccentricity": ecc,
            "mean_hematoxylin_od": hod,
        }
    )


# ------------------------------------------------------------------ metrics
def pixel_metrics(pred, truth) -> dict:
    """Pixel-wise sensitivity, specificity, Dice and Jaccard of two masks.

    The paper's definitions: TP, FP, TN, FN counted over pixels; sensitivity
    TP/(TP+FN), specificity TN/(TN+FP), Dice 2TP/(2TP+FP+FN), Jaccard
    TP/(TP+FP+FN). Labels are treated as masks (> 0).

    Examples
    --------
    >>> m = pixel_metrics(np.array([1, 1, 0, 0]), np.array([1, 0, 0, 0]))
    >>> m["sensitivity"], m["specificity"], round(m["dice"], 3), m["jaccard"]
    (1.0, 0.6666666666666666, 0.667, 0.5)
    """
    p, t = np.asarray(pred) > 0, np.asarray(truth) > 0
    if p.shape != t.shape:
        raise ValueError(f"prediction {p.shape} and truth {t.shape} differ in shape")
    tp = float(np.count_nonzero(p & t))
    fp = float(np.count_nonzero(p & ~t))
    fn = float(np.count_nonzero(~p & t))
    tn = float(p.size) - tp - fp - fn

    def ratio(a, b):
        return a / b if b else 1.0

    return {
        "sensitivity": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
        "dice": ratio(2 * tp, 2 * tp + fp + fn),
        "jaccard": ratio(tp, tp + fp + fn),
    }


def _overlaps(truth: np.ndarray, pred: np.ndarray):
    """Relabelled arrays' intersection matrix and areas."""
    t, p = relabel(truth), relabel(pred)
    nt, np_ = int(t.max(initial=0)), int(p.max(initial=0))
    key = t.astype(np.int64).ravel() * (np_ + 1) + p.ravel()
    counts = np.bincount(key, minlength=(nt + 1) * (np_ + 1)).reshape(nt + 1, np_ + 1)
    area_t = counts.sum(axis=1)[1:]
    area_p = counts.sum(axis=0)[1:]
    inter = counts[1:, 1:].astype(np.float64)
    union = area_t[:, None] + area_p[None, :] - inter
    return inter, union, area_t, area_p


def aggregated_jaccard_index(truth, pred) -> float:
    """Aggregated Jaccard Index (Kumar et al. 2017), as in MoNuSeg and HoVer-Net.

    Each true nucleus is paired with the predicted nucleus of highest IoU;
    AJI = sum of their intersections / (sum of their unions + area of the
    predicted nuclei never paired).

    Examples
    --------
    >>> t = np.array([[1, 1, 0, 2, 2]])
    >>> aggregated_jaccard_index(t, t), aggregated_jaccard_index(t, np.array([[1, 1, 1, 1, 1]]))
    (1.0, 0.4)
    """
    t, p = np.asarray(truth), np.asarray(pred)
    if t.shape != p.shape:
        raise ValueError(f"truth {t.shape} and prediction {p.shape} differ in shape")
    inter, union, area_t, area_p = _overlaps(t, p)
    if area_t.size == 0:
        return 1.0 if area_p.size == 0 else 0.0
    if area_p.size == 0:
        return 0.0
    iou = inter / np.maximum(union, 1)
    best = iou.argmax(axis=1)
    rows = np.arange(len(area_t))
    hit = inter[rows, best] > 0
    c = inter[rows, best][hit].sum()
    u = union[rows, best][hit].sum() + area_t[~hit].sum()
    used = np.zeros(len(area_p), bool)
    used[best[hit]] = True
    u += area_p[~used].sum()
    return float(c / u) if u else 1.0


def panoptic_quality(truth, pred, iou_threshold: float = 0.5) -> dict:
    """Panoptic quality of instance segmentation (Kirillov et al.; HoVer-Net).

    A true and a predicted nucleus match when their IoU exceeds
    ``iou_threshold`` (0.5 makes matches unique). DQ = TP / (TP + FP/2 + FN/2),
    SQ = mean IoU of the matches, PQ = DQ x SQ.

    Returns
    -------
    dict with ``pq``, ``dq``, ``sq``, ``tp``, ``fp``, ``fn``.

    Examples
    --------
    >>> t = np.array([[1, 1, 0, 2, 2]])
    >>> panoptic_quality(t, np.array([[1, 1, 0, 0, 0]]))["dq"]
    0.6666666666666666
    """
    t, p = np.asarray(truth), np.asarray(pred)
    if t.shape != p.shape:
        raise ValueError(f"truth {t.shape} and prediction {p.shape} differ in shape")
    inter, union, area_t, area_p = _overlaps(t, p)
    iou = inter / np.maximum(union, 1)
    if iou.size:
        if iou_threshold >= 0.5:
            ti, pi = np.nonzero(iou > iou_threshold)
        else:
            from scipy.optimize import linear_sum_assignment

            ti, pi = linear_sum_assignment(-iou)
            ok = iou[ti, pi] > iou_threshold
            ti, pi = ti[ok], pi[ok]
    else:
        ti = pi = np.zeros(0, int)
    tp = len(ti)
    fp, fn = len(area_p) - tp, len(area_t) - tp
    denom = tp + 0.5 * fp + 0.5 * fn
    dq = tp / denom if denom else 1.0
    sq = float(iou[ti, pi].mean()) if tp else 0.0
    if not denom:
        sq = 1.0
    return {"pq": dq * sq, "dq": dq, "sq": sq, "tp": tp, "fp": fp, "fn": fn}


def segmentation_metrics(truth, pred) -> dict:
    """Pixel metrics, AJI and PQ in one dict (the table of docs/nuclei.md)."""
    out = pixel_metrics(pred, truth)
    out["aji"] = aggregated_jaccard_index(truth, pred)
    pq = panoptic_quality(truth, pred)
    out.update(pq=pq["pq"], dq=pq["dq"], sq=pq["sq"])
    return out
