"""Clinical mitotic counting: per 2.37 mm^2, per mm^2 of tissue, and in the hotspot.

Breast-cancer grading (and most mitotic-count based grading) counts mitotic
figures in ten high-power fields, standardised as an area of 2.37 mm^2, in
the region of the tumour with the highest mitotic activity: the *hotspot*.
Here the hotspot is the 4:3 rectangle of 2.37 mm^2 that holds the most
mitotic figures while lying at least half on tissue.

Everything here is pure numpy on level-0 pixel coordinates plus a pixel size.

Examples
--------
>>> import numpy as np
>>> hpf_rect_um()  # width, height of the 2.37 mm^2 4:3 rectangle in um
(1777.6..., 1333.2...)
>>> mask = np.ones((100, 100), bool)         # tissue mask, 1 mask px = 100 level-0 px
>>> xy = np.array([[500, 500], [520, 480], [9900, 9900]])
>>> hs = find_hotspot(xy, mask, mask_downsample=100, mpp=0.25)
>>> hs.count, hs.x, hs.y                       # the window covers the two close points
(2, 0.0, 0.0)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

#: The standard area of ten high-power fields (mm^2) for mitotic counts.
HPF_AREA_MM2 = 2.37
#: Aspect (width / height) of the hotspot rectangle.
HOTSPOT_ASPECT = 4 / 3
#: A hotspot window must lie at least this much on tissue.
MIN_TISSUE_FRACTION = 0.5


def hpf_rect_um(area_mm2: float = HPF_AREA_MM2, aspect: float = HOTSPOT_ASPECT) -> tuple[float, float]:
    """Width and height (um) of a rectangle of ``area_mm2`` with ``aspect`` = width / height."""
    h = np.sqrt(area_mm2 * 1e6 / aspect)
    return float(h * aspect), float(h)


def per_hpf_area(count: float, area_mm2: float | None) -> float:
    """A count over ``area_mm2`` expressed per 2.37 mm^2 (NaN when the area is unknown or zero).

    >>> per_hpf_area(5, 2.37), round(per_hpf_area(1, 0.237), 6)
    (5.0, 10.0)
    """
    if area_mm2 is None or not area_mm2 > 0:
        return float("nan")
    return float(count) * HPF_AREA_MM2 / float(area_mm2)


@dataclass(frozen=True)
class Hotspot:
    """The 2.37 mm^2 window with the most mitotic figures.

    ``x, y, width, height`` are level-0 pixels (top-left corner and size);
    ``count`` the mitotic figures inside; ``tissue_mm2`` the tissue area inside;
    ``clipped`` is True when the tissue (or image) is smaller than the window,
    so that the window is the whole image and ``count`` covers less than 2.37 mm^2.
    """

    x: float
    y: float
    width: float
    height: float
    count: int
    tissue_mm2: float
    clipped: bool = False

    def contains(self, xy: np.ndarray) -> np.ndarray:
        """Which of the (N, 2) level-0 points lie inside the window."""
        xy = np.asarray(xy, float).reshape(-1, 2)
        return (
            (xy[:, 0] >= self.x) & (xy[:, 0] < self.x + self.width) & (xy[:, 1] >= self.y) & (xy[:, 1] < self.y + self.height)
        )

    def as_dict(self) -> dict:
        return asdict(self)


def _integral(img: np.ndarray) -> np.ndarray:
    s = np.zeros((img.shape[0] + 1, img.shape[1] + 1), np.float64)
    s[1:, 1:] = img.cumsum(0).cumsum(1)
    return s


def _window_sums(s: np.ndarray, wh: int, ww: int) -> np.ndarray:
    return s[wh:, ww:] - s[:-wh, ww:] - s[wh:, :-ww] + s[:-wh, :-ww]


def find_hotspot(
    xy,
    tissue_mask: np.ndarray,
    mask_downsample: float,
    mpp: float,
    area_mm2: float = HPF_AREA_MM2,
    aspect: float = HOTSPOT_ASPECT,
    min_tissue: float = MIN_TISSUE_FRACTION,
) -> Hotspot | None:
    """The 4:3 window of ``area_mm2`` on tissue holding the most points.

    Parameters
    ----------
    xy : (N, 2) array
        Mitotic figures, level-0 pixels (x, y).
    tissue_mask : (rows, cols) bool
        Tissue at low resolution; one mask pixel is ``mask_downsample`` level-0 pixels.
    mask_downsample : float
    mpp : float
        Level-0 pixel size (um).
    min_tissue : float
        Windows less covered by tissue than this are not considered.

    Returns
    -------
    Hotspot, or None when there is no tissue. Windows are placed on the mask
    grid; ties go to the window with more tissue, then to the top-left one.
    When the tissue's bounding box is smaller than the window the window is
    clipped to the image and ``clipped`` is set.

    Examples
    --------
    >>> mask = np.zeros((150, 150), bool); mask[20:120, 20:120] = True
    >>> xy = [[5000, 5000], [5100, 5050], [500, 14500]]   # the last one: glass corner
    >>> hs = find_hotspot(xy, mask, 100, 0.25)
    >>> hs.count, bool(hs.contains([[5000, 5000]])[0]), round(hs.width / hs.height, 2), hs.clipped
    (2, True, 1.34, False)
    >>> find_hotspot(xy, np.zeros((5, 5), bool), 100, 0.25) is None
    True
    """
    mask = np.asarray(tissue_mask, bool)
    if mask.ndim != 2:
        raise ValueError(f"the tissue mask must be 2-D, got shape {mask.shape}")
    if not (mpp and mpp > 0) or not (mask_downsample and mask_downsample > 0):
        raise ValueError("the pixel size and the mask downsample must be positive numbers")
    if not mask.any():
        return None
    xy = np.asarray(xy, float).reshape(-1, 2)
    w_um, h_um = hpf_rect_um(area_mm2, aspect)
    mask_um = mpp * mask_downsample
    ww = max(round(w_um / mask_um), 1)
    wh = max(round(h_um / mask_um), 1)
    rows, cols = mask.shape
    px_mm2 = mask_um**2 / 1e6
    counts = np.zeros(mask.shape, np.float64)
    if len(xy):
        c = np.clip((xy[:, 0] / mask_downsample).astype(int), 0, cols - 1)
        r = np.clip((xy[:, 1] / mask_downsample).astype(int), 0, rows - 1)
        np.add.at(counts, (r, c), 1)
    if ww > cols or wh > rows:  # the image is smaller than one window: take it all
        ww, wh = min(ww, cols), min(wh, rows)
        rr, cc = np.nonzero(mask)
        r0 = int(np.clip(rr.min(), 0, rows - wh))
        c0 = int(np.clip(cc.min(), 0, cols - ww))
        n = int(counts[r0 : r0 + wh, c0 : c0 + ww].sum())
        t = float(mask[r0 : r0 + wh, c0 : c0 + ww].sum()) * px_mm2
        return Hotspot(float(c0 * mask_downsample), float(r0 * mask_downsample), float(ww * mask_downsample),
                       float(wh * mask_downsample), n, t, True)
    n = _window_sums(_integral(counts), wh, ww)
    t = _window_sums(_integral(mask.astype(np.float64)), wh, ww)
    ok = t >= min_tissue * ww * wh
    if not ok.any():  # tissue too sparse for any window: the window with the most tissue
        ok = t >= t.max()
    score = np.where(ok, n * (ww * wh + 1) + t, -1)  # most points, then most tissue
    r0, c0 = np.unravel_index(int(np.argmax(score)), score.shape)
    return Hotspot(
        float(c0 * mask_downsample), float(r0 * mask_downsample), float(ww * mask_downsample), float(wh * mask_downsample),
        int(n[r0, c0]), float(t[r0, c0]) * px_mm2, False,
    )


def count_table(classes, tissue_mm2: float | None, hotspot: Hotspot | None = None, xy=None,
                class_names=("mitotic_figure", "granulocyte")) -> list[dict]:
    """Counts per class: total, per mm^2 of tissue, per 2.37 mm^2, and in the hotspot.

    Parameters
    ----------
    classes : sequence of str
        The class of each detection.
    tissue_mm2 : float or None
        Tissue area analysed.
    hotspot : Hotspot, optional
        With ``xy`` (level-0 points, same order as ``classes``) the counts in
        the hotspot window are added.

    Returns
    -------
    list of dict, one per class: ``class``, ``count``, ``tissue_mm2``,
    ``per_mm2``, ``per_2.37mm2``, and with a hotspot ``hotspot_count``,
    ``hotspot_per_2.37mm2``.

    >>> rows = count_table(["mitotic_figure"] * 3 + ["granulocyte"], tissue_mm2=4.74)
    >>> rows[0]["count"], rows[0]["per_2.37mm2"], rows[1]["per_mm2"]
    (3, 1.5, 0.21...)
    """
    classes = np.asarray(list(classes), dtype=object)
    rows = []
    for name in class_names:
        sel = classes == name
        n = int(sel.sum())
        row = {
            "class": name,
            "count": n,
            "tissue_mm2": float("nan") if tissue_mm2 is None else float(tissue_mm2),
            "per_mm2": float(n / tissue_mm2) if tissue_mm2 else float("nan"),
            "per_2.37mm2": per_hpf_area(n, tissue_mm2),
        }
        if hotspot is not None and xy is not None:
            inside = hotspot.contains(np.asarray(xy, float).reshape(-1, 2)[sel]) if n else np.zeros(0, bool)
            k = int(inside.sum())
            row["hotspot_count"] = k
            area = min(hotspot.tissue_mm2, HPF_AREA_MM2) if hotspot.clipped else HPF_AREA_MM2
            row["hotspot_per_2.37mm2"] = per_hpf_area(k, area)
        rows.append(row)
    return rows


def is_polygon(region) -> bool:
    """Whether a region is a polygon (``[[x, y], ...]``) rather than a rectangle ``(x, y, w, h)`` or None."""
    return region is not None and np.ndim(region) == 2


def region_bounds(region) -> tuple[float, float, float, float]:
    """The bounding rectangle ``(x, y, w, h)`` of a rectangle or polygon region.

    >>> region_bounds([[0, 0], [10, 0], [5, 8]])
    (0.0, 0.0, 10.0, 8.0)
    """
    if is_polygon(region):
        p = np.asarray(region, float)
        (x0, y0), (x1, y1) = p.min(axis=0), p.max(axis=0)
        return float(x0), float(y0), float(x1 - x0), float(y1 - y0)
    x, y, w, h = (float(v) for v in region)
    return x, y, w, h


def region_area_px(region) -> float:
    """Area (level-0 px²) of a rectangle ``(x, y, w, h)`` or a polygon ``[[x, y], ...]`` (shoelace).

    >>> region_area_px((0, 0, 4, 5)), region_area_px([[0, 0], [4, 0], [0, 5]])
    (20.0, 10.0)
    """
    if not is_polygon(region):
        return float(region[2]) * float(region[3])
    p = np.asarray(region, float)
    x, y = p[:, 0], p[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


def region_contains(region, xy) -> np.ndarray:
    """Which of the (N, 2) level-0 points ``xy`` lie in ``region``: a rectangle ``(x, y, w, h)``,
    a polygon ``[[x, y], ...]`` (even-odd rule) or None (everywhere).

    >>> region_contains((0, 0, 10, 10), [[5, 5], [10, 5]]).tolist()
    [True, False]
    >>> region_contains([[0, 0], [10, 0], [0, 10]], [[2, 2], [8, 8]]).tolist()
    [True, False]
    """
    xy = np.asarray(xy, float).reshape(-1, 2)
    if region is None:
        return np.ones(len(xy), bool)
    if not is_polygon(region):
        x, y, w, h = (float(v) for v in region)
        return (xy[:, 0] >= x) & (xy[:, 0] < x + w) & (xy[:, 1] >= y) & (xy[:, 1] < y + h)
    poly = np.asarray(region, float)
    px, py = xy[:, 0:1], xy[:, 1:2]
    x0, y0 = poly[:, 0], poly[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    crosses = (y0 > py) != (y1 > py)
    with np.errstate(divide="ignore", invalid="ignore"):
        xcross = x0 + (py - y0) * (x1 - x0) / (y1 - y0)
    return ((crosses & (px < xcross)).sum(axis=1) % 2).astype(bool)


def analysed_mask(shape, mask_downsample: float, regions) -> np.ndarray:
    """Mask (at tissue-mask resolution) of the level-0 ``regions`` that were analysed.

    ``regions`` is a list of ``(x, y, w, h)`` rectangles; ``None`` in it means
    "all of the slide".

    >>> analysed_mask((4, 4), 10, [(0, 0, 20, 10)]).astype(int).tolist()
    [[1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    """
    out = np.zeros(shape, bool)
    for r in regions:
        if r is None:
            out[:] = True
            break
        if is_polygon(r):  # the mask pixels whose centres lie in the polygon
            from skimage.draw import polygon as fill

            p = np.asarray(r, float) / mask_downsample - 0.5
            rr, cc = fill(p[:, 1], p[:, 0], shape=out.shape)
            out[rr, cc] = True
            continue
        x, y, w, h = (float(v) for v in r)
        c0, r0 = int(np.floor(x / mask_downsample)), int(np.floor(y / mask_downsample))
        c1, r1 = int(np.ceil((x + w) / mask_downsample)), int(np.ceil((y + h) / mask_downsample))
        out[max(r0, 0) : max(r1, 0), max(c0, 0) : max(c1, 0)] = True
    return out


def review_counts(xy, classes, tissue_mask, mask_downsample: float, mpp: float | None, regions=(None,)):
    """Counts of a review, as shown in the widget and written to ``counts.csv``.

    Parameters
    ----------
    xy : (N, 2) level-0 positions; classes : N class names
    tissue_mask : bool array or None (then the analysed rectangles count as tissue)
    mask_downsample : level-0 px per mask px
    mpp : level-0 pixel size (um) or None (no areas then)
    regions : analysed rectangles (level-0 ``x, y, w, h``; None = whole slide)

    Returns
    -------
    (rows, hotspot, tissue_mm2): :func:`count_table` rows, the :class:`Hotspot`
    of the mitotic figures within analysed tissue (or None) and the analysed
    tissue area.

    >>> mask = np.ones((100, 100), bool)
    >>> rows, hs, area = review_counts([[50, 50], [60, 60]], ["mitotic_figure"] * 2, mask, 100, 0.25)
    >>> rows[0]["count"], rows[0]["hotspot_count"], round(area, 3)
    (2, 2, 6.25)
    """
    xy = np.asarray(xy, float).reshape(-1, 2)
    classes = classes.to_numpy(dtype=object) if hasattr(classes, "to_numpy") else np.asarray(list(classes), dtype=object)
    if tissue_mask is None or mpp is None:
        area = None
        if mpp is not None and regions and None not in regions:
            area = float(sum(region_area_px(r) for r in regions)) * mpp**2 / 1e6
        return count_table(classes, area), None, area
    region = analysed_mask(tissue_mask.shape, mask_downsample, regions) & np.asarray(tissue_mask, bool)
    area = float(region.sum()) * (mpp * mask_downsample) ** 2 / 1e6
    mitoses = xy[classes == "mitotic_figure"] if len(xy) else xy
    hotspot = find_hotspot(mitoses, region, mask_downsample, mpp) if region.any() else None
    return count_table(classes, area, hotspot, xy), hotspot, area
