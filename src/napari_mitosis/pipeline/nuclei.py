"""Nucleus segmentation over any region of a slide, tile by tile, as a task with progress.

The region (the view, a drawn rectangle, or the whole slide) is read at the
model's working pixel size (0.5 um/px for ``nuclei-hover`` and ``nuclei-unet``) in tiles of
``tile`` x ``tile`` working pixels plus a ``halo`` on every side, so memory
depends on the tile size, not on the region (the label image of the region at
the working pixel size is the only region-sized array; pass ``labels_out``, e.g.
a memory-mapped or Zarr array, to keep even that off memory).

Stitching: every tile is segmented with its halo as context, and a tile keeps
exactly the nuclei whose centroid lies in its core. A nucleus crossing a seam
is therefore segmented whole (the halo, 32 um by default, is wider than any
nucleus) by the one tile that owns its centroid: never cut, never doubled.
(A nucleus whose pixels were already claimed by a neighbour is dropped when
less than half of it is left, a safety net for the rare nucleus whose centroid
moves across a seam between the two tiles' views.)

Tiles that are background only (glass: less than 1% of pixels absorb light)
are skipped without running the network, so empty regions return at once.

Result: ``(labels, table)``. ``labels`` is an int32 instance image of the
region at the working pixel size; ``table`` has one row per nucleus
(:data:`napari_mitosis.core.nuclei.TABLE_COLUMNS`, ``id`` = label value) and
``table.attrs`` the geometry (``mpp``, ``downsample``, ``origin``,
``level0_mpp``, ``shape``); :func:`labels_layer_kwargs` turns it into napari's
``scale``/``translate`` in micrometres.
"""

from __future__ import annotations

import math
import warnings
from functools import lru_cache

import numpy as np
import pandas as pd

from ..core.nuclei import (
    NUCLEI_MPP,
    TABLE_COLUMNS,
    check_rgb,
    hover_to_instances,
    log_nuclei,
    log_threshold,
    nuclei_table,
    probabilities_to_instances,
)
from ..core.screening import is_background
from ..core.tiling import halo_tiles
from ..errors import NapariMitosisError
from ..io.working import read_tissue_tile, read_working
from .checks import check_mpp, check_roi
from .progress import Progress, Task, run

#: Default model: nuclei-hover (EfficientNet-Lite0 + HoVer maps; above nuclei-unet on every held-out
#: source, docs/nuclei.md). ``model="nuclei-unet"`` (``segment --model nuclei-unet``) keeps the U-Net.
MODEL = "nuclei-hover"
#: Builder of the networks that predict HoVer distance maps (post-processed by
#: :func:`~napari_mitosis.core.nuclei.hover_to_instances`); any other is a 3-class U-Net.
HOVER_BUILDER = "napari_mitosis.models.nuclei_net:build_nuclei_net"
HOVER_PARAMS = ("foreground", "marker", "energy", "min_marker_um2", "min_area_um2")
UNET_PARAMS = ("foreground", "marker", "min_marker_um2", "min_area_um2")
#: Level-0 pixel sizes (um/px) the segmentation accepts; outside, nuclei are too
#: small (coarser) to segment or the value is certainly not a slide's.
#: Largest in-memory label image (pixels at the working size): 4 GB of int32.
MAX_LABEL_PIXELS = 1_000_000_000


class NucleiError(NapariMitosisError, ValueError):
    """Nucleus segmentation cannot run on this input; the message says what to do."""


class NucleiWarning(UserWarning):
    """The result looks wrong (e.g. nuclei of an implausible size: a wrong pixel size?)."""


#: Median nucleus area (um2) outside this range means the pixel size is probably wrong
#: (H&E nuclei are about 15-60 um2; a pixel size off by 2x changes areas 4x).
PLAUSIBLE_MEDIAN_AREA_UM2 = (12.0, 90.0)


@lru_cache(maxsize=4)
def _model(name: str, device: str):
    """(network, spec), loaded once per process; on a CPU with its batch normalisations folded into
    the convolutions (the same maps to float rounding; nuclei-hover's network 514 -> 370 ms on an
    832 px tile; a traced graph was measured no faster for it)."""
    from ..models.inference import fast_cpu
    from ..models.registry import load_model

    net, spec = load_model(name, device=device)
    return fast_cpu(net, channels_last=True), spec


def _check_roi(slide, roi):
    return check_roi(slide, roi, NucleiError)


def segment_task(
    slide,
    roi=None,
    method: str = "unet",
    device: str = "auto",
    tile: int = 768,
    halo: int = 64,
    mpp: float | None = None,
    model: str = MODEL,
    threshold: float | None = None,
    labels_out=None,
    tissue=None,
) -> Task:
    """Segment nuclei in a region of a slide, tile by tile.

    Parameters
    ----------
    slide : Slide
        From :func:`napari_mitosis.io.open_slide`.
    roi : (x, y, w, h), optional
        Region in level-0 pixels (clipped to the slide); default the whole slide.
    method : {"unet", "log"}
        The shipped network (``model``: ``nuclei-unet``, or ``nuclei-hover``, the
        EfficientNet-Lite0 network with HoVer distance maps) or the LoG baseline.
    device : str
        ``auto`` (GPU when available), ``cpu`` or ``cuda``.
    tile, halo : int
        Tile core side and context margin in working pixels (multiples of 16).
    mpp : float, optional
        Level-0 pixel size override (um/px), when the slide's is unknown or wrong.
    threshold : float, optional
        LoG only: hematoxylin OD threshold (default: Otsu's on an overview of the region).
    labels_out : array-like, optional
        Where to write the labels (shape of the region at the working pixel size).
    tissue : TissueMask, optional
        From :func:`napari_mitosis.pipeline.tissue_task`: tiles (with their
        halo) without tissue are skipped unread, so "all tissue" of a slide
        costs only the tissue.

    Yields
    ------
    Progress

    Returns
    -------
    (labels, table)
        Instance labels of the region at the working pixel size and the
        per-nucleus table (``table.attrs`` holds the geometry).

    Raises
    ------
    NucleiError
        Unknown or implausible pixel size, a region outside the slide, a bad
        method or tile size.
    """
    if method not in ("unet", "log"):
        raise NucleiError(f"method must be 'unet' or 'log', got {method!r}")
    if tile % 16 or tile < 64 or halo % 16 or halo < 0:
        raise NucleiError(f"tile must be a multiple of 16 (>= 64) and halo a multiple of 16, got {tile}, {halo}")
    level0_mpp = check_mpp(slide, mpp, NucleiError, "nuclei cannot be measured or segmented at the right scale",
                           "napari-mitosis segment --mpp 0.25, or open_slide(path, mpp=0.25)")
    x, y, w, h = _check_roi(slide, roi)
    net = spec = None
    hover = False
    params = {}
    if method == "unet":
        yield Progress(0, 1, f"loading {model}")
        from ..models.registry import ModelError

        try:
            net, spec = _model(model, str(device))
        except ModelError as exc:
            raise NucleiError(str(exc)) from exc
        work_mpp = float(spec.mpp)
        hover = spec.builder == HOVER_BUILDER
        keys = HOVER_PARAMS if hover else UNET_PARAMS
        params = {k: v for k, v in spec.thresholds.items() if k in keys}
    else:
        work_mpp = NUCLEI_MPP
    ds = work_mpp / level0_mpp
    H, W = max(1, int(math.ceil(h / ds))), max(1, int(math.ceil(w / ds)))
    if labels_out is None and H * W > MAX_LABEL_PIXELS:
        raise NucleiError(
            f"the region is {W} x {H} px at {work_mpp} um/px; its label image would need {H * W * 4 / 1e9:.1f} GB. "
            "Segment a smaller region (roi / --roi, e.g. the view or a drawn rectangle), or pass labels_out= "
            "(a memory-mapped or Zarr array)"
        )
    labels = np.zeros((H, W), np.int32) if labels_out is None else labels_out
    if tuple(labels.shape) != (H, W):
        raise NucleiError(f"labels_out must have shape {(H, W)}, got {tuple(labels.shape)}")
    ny, nx = int(math.ceil(H / tile)), int(math.ceil(W / tile))
    total = ny * nx + 1

    if method == "log" and threshold is None:
        yield Progress(0, total, "choosing the hematoxylin threshold")
        f = max(1.0, max(H, W) / 2048)  # an overview of at most 2048 px
        overview = read_working(slide, x, y, ds * f, max(1, int(W / f)), max(1, int(H / f)))
        threshold = log_threshold(overview) if not is_background(overview) else 1e9

    tables, next_id, done = [], 1, 0
    for cy0, cx0, cy1, cx1, iy0, ix0, ih, iw in halo_tiles(H, W, tile, halo):
        yield Progress(done, total, f"nuclei: tile {done + 1} of {ny * nx}")
        done += 1
        rgb = read_tissue_tile(slide, tissue, x + ix0 * ds, y + iy0 * ds, ds, iw, ih)
        if rgb is None:
            continue
        if method == "unet" and hover:
            from ..models.nuclei_net import predict_maps

            inst = hover_to_instances(predict_maps(net, rgb), mpp=work_mpp, **params)
        elif method == "unet":
            from ..models.unet import predict_probabilities

            probs = predict_probabilities(net, rgb)
            inst = probabilities_to_instances(probs, mpp=work_mpp, **params)
        else:
            inst = log_nuclei(rgb, mpp=work_mpp, threshold=threshold)
        if inst.max() == 0:
            continue
        t = nuclei_table(inst, rgb, mpp=work_mpp)  # tile pixel coordinates
        # centroid (tile px) -> owned when inside this tile's core (and the region)
        cx = t["x"].to_numpy() + ix0
        cy = t["y"].to_numpy() + iy0
        own = (cy >= cy0 - 0.5) & (cy < cy1 - 0.5) & (cx >= cx0 - 0.5) & (cx < cx1 - 0.5)
        if not own.any():
            continue
        # paste owned nuclei into the region (clipped), first come first served
        py0, px0 = max(iy0, 0), max(ix0, 0)
        py1, px1 = min(iy0 + ih, H), min(ix0 + iw, W)
        sub = inst[py0 - iy0 : py1 - iy0, px0 - ix0 : px1 - ix0]
        dest = np.asarray(labels[py0:py1, px0:px1])
        owned_ids = t["id"].to_numpy()[own]
        lut = np.zeros(int(inst.max()) + 1, np.int32)
        lut[owned_ids] = owned_ids
        cand = lut[sub]
        free = (cand > 0) & (dest == 0)
        area = np.bincount(inst.ravel(), minlength=lut.size)
        written = np.bincount(cand[free], minlength=lut.size)
        keep_ids = owned_ids[written[owned_ids] >= 0.5 * area[owned_ids]]
        if keep_ids.size == 0:
            continue
        new = np.zeros(lut.size, np.int32)
        new[keep_ids] = np.arange(next_id, next_id + keep_ids.size, dtype=np.int32)
        paste = new[cand] * free
        dest = np.where(paste > 0, paste, dest)
        labels[py0:py1, px0:px1] = dest
        rows = t.set_index("id").loc[keep_ids].reset_index()
        rows["id"] = new[keep_ids].astype(np.int64)
        rows["x"] = x + (rows["x"] + ix0 + 0.5) * ds - 0.5
        rows["y"] = y + (rows["y"] + iy0 + 0.5) * ds - 0.5
        rows["x_um"], rows["y_um"] = rows["x"] * level0_mpp, rows["y"] * level0_mpp
        tables.append(rows[TABLE_COLUMNS])
        next_id += keep_ids.size
    table = (
        pd.concat(tables, ignore_index=True)
        if tables
        else nuclei_table(np.zeros((1, 1), np.int32), mpp=work_mpp)
    )
    if len(table) >= 30:
        med = float(table["area_um2"].median())
        lo, hi = PLAUSIBLE_MEDIAN_AREA_UM2
        if not lo <= med <= hi:
            warnings.warn(
                f"{slide.path}: the median nucleus area is {med:.0f} um2, outside the usual {lo:.0f}-{hi:.0f} um2; "
                f"is the pixel size ({level0_mpp:.3g} um/px) right? A wrong one makes nuclei look "
                f"{'too large' if med > hi else 'too small'}; pass the true one with --mpp / mpp=",
                NucleiWarning,
                stacklevel=2,
            )
    table.attrs.update(
        {
            "mpp": work_mpp,
            "downsample": ds,
            "origin": (x, y),
            "level0_mpp": level0_mpp,
            "shape": (h, w),
            "method": method,
        }
    )
    yield Progress(total, total, f"{len(table)} nuclei")
    return labels, table


def segment_region_task(slide, roi=None, all_tissue: bool = False, tissue=None, method: str = "unet", device: str = "auto") -> Task:
    """Segment a region, or all tissue (detecting it first when ``tissue`` is None).

    Returns ``((labels, table), tissue)``: ``tissue`` is the mask used (or given), for the caller to keep.
    """
    if all_tissue and tissue is None:
        from .tissue import tissue_task

        tissue = yield from tissue_task(slide)
    result = yield from segment_task(slide, roi=roi, method=method, device=device, tissue=tissue if all_tissue else None)
    return result, tissue


def segment_nuclei(slide, roi=None, **kwargs):
    """:func:`segment_task` without progress: ``(labels, table)``."""
    return run(segment_task(slide, roi=roi, **kwargs))


def segment_image(rgb, mpp: float, method: str = "unet", **kwargs):
    """Segment nuclei in an in-memory RGB image with pixel size ``mpp`` (um/px).

    Returns ``(labels, table)`` with ``labels`` at the working pixel size (use
    :func:`labels_at_level0` for the image's own size).
    """
    import dask.array as da

    from ..io.slide import Slide

    rgb = check_rgb(rgb)
    from pathlib import Path

    slide = Slide(path=Path("<array>"), levels=[da.from_array(rgb, chunks=(1024, 1024, 3))], mpp=mpp, format="image")
    return segment_nuclei(slide, method=method, **kwargs)


def labels_layer_kwargs(attrs: dict) -> dict:
    """napari ``scale`` and ``translate`` (um) that place the labels on the slide's image layer.

    The slide layer has scale ``level0_mpp``, so level-0 pixel ``i`` sits at
    ``i * level0_mpp``; a label pixel covers ``downsample`` level-0 pixels.

    Examples
    --------
    >>> labels_layer_kwargs({"mpp": 0.5, "downsample": 2.0, "origin": (100, 40), "level0_mpp": 0.25})
    {'scale': (0.5, 0.5), 'translate': (10.125, 25.125)}
    """
    m, ds, (x, y), m0 = attrs["mpp"], attrs["downsample"], attrs["origin"], attrs["level0_mpp"]
    return {"scale": (m, m), "translate": ((y + 0.5 * (ds - 1)) * m0, (x + 0.5 * (ds - 1)) * m0)}


def labels_at_level0(labels, attrs: dict) -> np.ndarray:
    """Nearest-neighbour resampling of working-resolution labels to the region's level-0 size."""
    h, w = attrs["shape"]
    ds = attrs["downsample"]
    lab = np.asarray(labels)
    rows = np.minimum(((np.arange(h) + 0.5) / ds).astype(np.int64), lab.shape[0] - 1)
    cols = np.minimum(((np.arange(w) + 0.5) / ds).astype(np.int64), lab.shape[1] - 1)
    return lab[rows[:, None], cols[None, :]]
