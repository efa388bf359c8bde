"""Whole-slide detection of mitotic figures and granulocytes, tile by tile.

Default pipeline (``candidates="dense"``; per tile, tiles are independent tasks, see
:mod:`.analyze`)::

    tissue mask -> tiles of TILE_UM um (with a DENSE_HALO_UM halo) read at cell-dense's pixel size
      -> optional stain normalisation
      -> cell-dense (models/dense_net.py): mitotic-figure and granulocyte likelihood maps at
         2 um/px; their peaks above ``detect_candidate_<class>`` are the candidates
      -> cell-effnet (an ImageNet-pretrained EfficientNet-Lite0, fine-tuned) on a 24 um crop
         at 0.375 um/px around each candidate whose dense value can still make a detection
      -> per-class thresholds on sqrt(p_dense * p_effnet) -> NMS by distance -> detections

The thresholds are an *operating point* chosen on validation domains the models never saw
(``detect_*`` keys of cell-effnet.json: "balanced", the best F1; ``screening/detect_*``:
recall >= 0.9 on every validation domain); see docs/detection.md.

The earlier cascade stays available (``candidates="nuclei"``, model cell-gstn, the guided
spatial transformer of paper 001)::

    tissue mask -> tiles of TILE_UM um (with a halo) -> optional stain normalisation
      -> candidates: hematoxylin blobs read at SCREEN_MPP (0.5 um/px, a coarse pyramid
         level), screened by darkness (condensed chromatin) or eosin around them
         (granulocyte cytoplasm), and/or heatmap peaks
      -> cell-screen, the learned first pass, on a 16 um patch of the screening image:
         class probabilities of every screened candidate
      -> cell-gstn on a 32 x 32 um crop (0.25 um/px) around each candidate whose first-pass
         probability can still make a detection: class probabilities and the localised cell
      -> per-class thresholds on sqrt(p_first * p_gstn) -> non-maximum suppression by distance
      -> detections: x, y (level-0 px), class, score, status (io/detections schema)

Only the candidates the first pass keeps are read at full resolution and sent
through cell-gstn, so most of a slide is decoded only at the screening level; the
screening thresholds trade speed for recall and are chosen on validation data
together with the class thresholds (``detect_*`` keys of the model's spec,
``cell-gstn.json``; see docs/detection.md).

A tile keeps the candidates whose position lies in its core; the halo gives
the filters context, so results do not depend on where the seams fall.
Localised positions may cross a seam, hence a last, global NMS over all tiles.

:func:`detect_task` is the in-process entry point (the napari widget): a
generator yielding :class:`~.progress.Progress` with ``partial`` = the
detections of the tile just finished, cancellable by closing it.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from ..core.decision import DEFAULT_THRESHOLDS, decide_detections, needs_classifier, needs_more_views
from ..core.screening import blob_features, is_background_od, nms, optical_density, screen
from ..errors import NapariMitosisError
from ..io.detections import check_detections, empty_detections
from ..io.thread_slides import ThreadSlides
from .checks import check_mpp, check_roi
from .progress import Progress, Task

#: Pixel size of the classifier's input (um/px).
WORK_MPP = 0.25
#: Pixel size candidates are screened at (um/px).
SCREEN_MPP = 0.5
#: A pyramid level within this relative distance of SCREEN_MPP is screened as it is stored, not
#: resampled (e.g. level 1 of a 0.2455 um/px slide, 0.491 um/px): the screening works in um.
SCREEN_MPP_TOL = 0.1
#: Crops whose stored pixel size is within this relative distance of the classifier's are not
#: resized (e.g. 0.2455 um/px for 0.25): the classifier was trained with +-20 % zoom.
CROP_MPP_TOL = 0.05
#: Side of a tile core (um) and its halo (um).
TILE_UM = 512.0
HALO_UM = 16.0
CANDIDATE_MODES = ("dense", "nuclei", "heatmap", "both")
#: Candidate columns with the first pass's probabilities of the DETECT_CLASSES.
FIRST_PASS_COLUMNS = ("screen_mitotic_figure", "screen_granulocyte")
#: Candidate columns with cell-dense's likelihoods of the DETECT_CLASSES.
DENSE_COLUMNS = ("dense_mitotic_figure", "dense_granulocyte")
#: Halo of a tile for cell-dense (um): about its receptive field, so seams do not change results.
DENSE_HALO_UM = 32.0
#: The second stage each candidate mode uses unless one is named.
DEFAULT_MODEL = {"dense": "cell-effnet", "nuclei": "cell-gstn", "heatmap": "cell-gstn", "both": "cell-gstn"}
#: Operating points stored in the classifier's spec: "balanced" is its plain ``detect_*`` keys.
OPERATING_POINTS = ("balanced", "screening")
#: Slide pixel sizes accepted (um/px).


class DetectError(NapariMitosisError, ValueError):
    """Detection cannot run on this input; the message says what is wrong and what to do."""


# ------------------------------------------------------------------------ parameters
@dataclass(frozen=True)
class DetectParams:
    """Everything a tile task needs besides the slide (plain data, picklable)."""

    model: str = "cell-effnet"
    device: str = "cpu"
    candidates: str = "dense"
    tile_um: float = TILE_UM
    halo_um: float = HALO_UM
    screen_mpp: float = SCREEN_MPP
    thresholds: dict = field(default_factory=lambda: dict(DEFAULT_THRESHOLDS))
    batch: int = 64
    normalizer: object = None  # a fitted StainNormalizer, or None
    norm_source: object = None  # its source statistics for this slide
    torch_threads: int = 0  # > 0: set torch's and OpenCV's threads in the task (tiles run in parallel)
    model_folder: str | None = None  # a folder with the model's weights (default: the shipped ones)
    screen_model: str | None = "cell-screen"  # the learned first pass on the screening image (None: off)
    screen_folder: str | None = None  # a folder with its weights (default: the shipped ones)
    dense_model: str = "cell-dense"  # the dense first stage (candidates="dense")
    dense_folder: str | None = None  # a folder with its weights (default: the shipped ones)
    operating_point: str = "balanced"  # which of the spec's operating points the thresholds are
    views: int = 1  # test-time views: the classifier's mean over this many flips/rotations (1, 2, 4 or 8)

    def thr(self, key: str) -> float:
        return float(self.thresholds.get(key, DEFAULT_THRESHOLDS[key]))


def model_thresholds(model: str = "cell-effnet", folder=None, first_pass: bool = True,
                     operating_point: str = "balanced") -> dict:
    """The detection thresholds: defaults, then the ``detect_*`` keys of the model's spec (its
    "balanced" operating point); for ``operating_point="screening"`` its ``screening/detect_*``
    keys on top; for cell-gstn without the first pass its ``gstn_only/detect_*`` keys (cell-gstn's
    probability alone is the score)."""
    if operating_point not in OPERATING_POINTS:
        raise DetectError(f"operating point must be one of {', '.join(OPERATING_POINTS)}, got {operating_point!r}")
    from ..models.registry import WEIGHTS_DIR, read_spec

    thr = dict(DEFAULT_THRESHOLDS)
    try:
        spec = read_spec(model, Path(folder) if folder else WEIGHTS_DIR)
    except Exception:  # noqa: BLE001 -- no or unreadable spec: the defaults
        return thr
    stored = spec.thresholds or {}
    thr.update({k: float(v) for k, v in stored.items() if k.startswith("detect_")})
    if not first_pass:
        thr.update({k.split("/", 1)[1]: float(v) for k, v in stored.items() if k.startswith("gstn_only/detect_")})
    if operating_point != "balanced":
        prefix = f"{operating_point}/detect_"
        point = {k.split("/", 1)[1]: float(v) for k, v in stored.items() if k.startswith(prefix)}
        if not point:
            raise DetectError(f"model {model!r} has no {operating_point!r} operating point; use 'balanced' or set "
                              "thresholds with --threshold NAME=VALUE")
        thr.update(point)
    return thr


def model_views(model: str = "cell-effnet", folder=None) -> int:
    """The test-time views a model's thresholds were chosen with (its spec's ``views``; 1 without a spec)."""
    from ..models.registry import WEIGHTS_DIR, read_spec

    try:
        views = read_spec(model, Path(folder) if folder else WEIGHTS_DIR).views
    except Exception:  # noqa: BLE001 -- no or unreadable spec: one view
        return 1
    if views not in VIEW_COUNTS:
        raise DetectError(f"model {model!r}: its spec asks for {views!r} test-time views; "
                          f"one of {', '.join(map(str, VIEW_COUNTS))} is needed (a damaged spec? reinstall or retrain)")
    return int(views)


# ------------------------------------------------------------------------ models (cached per process)
_MODEL_CACHE: dict = {}
_MODEL_LOCK = threading.Lock()


def load_classifier(name: str = "cell-gstn", device: str = "cpu", folder: str | None = None,
                    channels_last: bool = True, also_size: tuple | None = None):
    """(net, spec), loaded once per process. ``channels_last``: on a CPU, also convert the weights
    to channels-last (faster for cell-gstn; the small first pass is faster with its weights as
    they are and channels-last inputs: 0.05 against 0.07 ms per blob). On a CPU the network runs
    as a traced inference graph checked against it; ``also_size`` (h, w): checked on an input of
    that size too (a fully convolutional network meets inputs of many sizes)."""
    from ..models.inference import GraphNet, fast_cpu, inference_graph
    from ..models.registry import WEIGHTS_DIR, ModelError, load_model, resolve_device

    key = (name, str(resolve_device(device)), folder, channels_last)
    with _MODEL_LOCK:
        if key not in _MODEL_CACHE:
            try:
                net, spec = load_model(name, device=device, folder=Path(folder) if folder else WEIGHTS_DIR)
            except ModelError as exc:
                raise DetectError(str(exc)) from exc
            fast = fast_cpu(net, channels_last)
            graph = inference_graph(fast, int(spec.patch_size))
            if also_size and isinstance(graph, GraphNet) and not _same_on(fast, graph, also_size):
                graph = fast
            _MODEL_CACHE[key] = (graph, spec)
    return _MODEL_CACHE[key]


def _same_on(net, graph, size) -> bool:
    import torch

    x = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(0)).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        a, b = net(x), graph(x)
    return a.shape == b.shape and bool(torch.allclose(a, b, atol=1e-3, rtol=1e-3))


def load_models(params: DetectParams) -> tuple:
    """(second stage, first pass or None) of ``params``, each ``(net, spec)``, loaded once per
    process: call it before the tiles so that a missing model fails once, with the list of models.
    With dense candidates the first pass is cell-dense."""
    second = load_classifier(params.model, params.device, params.model_folder)
    if params.candidates == "dense":
        return second, load_dense(params.dense_model, params.device, params.dense_folder)
    first = load_classifier(params.screen_model, params.device, params.screen_folder, channels_last=False) \
        if params.screen_model else None
    return second, first


def load_dense(name: str = "cell-dense", device: str = "cpu", folder: str | None = None):
    """cell-dense ``(net, spec)``, loaded once per process, its traced graph also checked on a
    non-square tile (tiles differ in size)."""
    return load_classifier(name, device, folder, channels_last=True, also_size=(72, 136))


# ------------------------------------------------------------------------ one tile
def check_detect_mpp(slide, mpp=None) -> float:
    """The level-0 pixel size for detection (``mpp`` overrides the slide's), or :class:`DetectError`."""
    return check_mpp(slide, mpp, DetectError, "cells cannot be measured at the classifier's 0.25 um/px",
                     "napari-mitosis detect --mpp 0.25, or open_slide(path, mpp=0.25)")


def _crops(slide, xy: np.ndarray, slide_mpp: float, size: int, net_mpp: float):
    """128 x 128 inputs around level-0 points; returns inputs, origins, level-0 px per input px."""
    from .classify import to_classifier_input as _to_input

    field_l0 = size * net_mpp / slide_mpp
    level = slide.best_level_for_downsample(field_l0 / size * (1 + CROP_MPP_TOL))
    ds = slide.level_downsamples[level]
    side = max(int(round(field_l0 / ds)), 1)
    if abs(side / size - 1) <= CROP_MPP_TOL:  # stored close enough to the classifier's pixel size
        side, field_l0 = size, size * ds
    n = len(xy)
    inputs = np.zeros((n, size, size, 3), np.float32)
    origin = np.round(xy - field_l0 / 2 + 0.5).astype(np.int64)
    if n == 0:
        return inputs, origin, side * ds / size
    if abs(ds - round(ds)) < 1e-6:  # (a pyramid level on the level-0 grid: the usual case)
        # every 256 x 256 cell of the level that a crop touches is read once (in runs along a row),
        # not once per crop that touches it: neighbouring crops share the JPEG tiles decoded
        lo = np.round(origin / ds).astype(np.int64)  # crop corners in level px, as read_region rounds them
        big, (lx0, ly0) = _read_cells(slide, level, ds, lo, side)
        rel = lo - (lx0, ly0)
        if side != size:  # the region resampled once to the network's pixel size, then sliced
            return _crops_of_resampled(big, (lx0, ly0), ds, xy, field_l0, side, size)
        for i in range(0, n, 64):
            crops = np.stack([big[cy : cy + side, cx : cx + side] for cx, cy in rel[i : i + 64]])
            inputs[i : i + 64] = _to_inputs(crops, size)
    else:
        for i, (ox, oy) in enumerate(origin):
            inputs[i] = _to_input(slide.read_region(level, int(ox), int(oy), side, side), size)
    return inputs, origin, side * ds / size


def _crops_of_resampled(big: np.ndarray, corner, ds: float, xy: np.ndarray, field_l0: float, side: int, size: int):
    """Crops of ``size`` px around level-0 points ``xy`` from ``big`` (a level's pixels from level
    px ``corner``) resampled once by ``size / side`` (area averaging when shrinking, as the
    training data were made; linear when enlarging): one resize of the region instead of one per
    crop (~10x less time with ~300 crops a tile). Each crop starts at the resampled pixel nearest
    its exact corner (within half a network pixel). Returns inputs, origins (level-0 px, float),
    level-0 px per input px."""
    import cv2

    f = size / side
    H, W = big.shape[:2]
    interp = cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR
    small = cv2.resize(big, (max(1, round(W * f)), max(1, round(H * f))), interpolation=interp)
    fx, fy = small.shape[1] / W, small.shape[0] / H  # the realised factors
    corner_lv = (xy + 0.5) / ds - 0.5 - np.asarray(corner, float) - (field_l0 / ds) / 2 + 0.5  # exact, level px
    ks = np.column_stack([np.round(corner_lv[:, 0] * fx), np.round(corner_lv[:, 1] * fy)]).astype(np.int64)
    pad = size  # crops that reach past the region (slide edges): mirrored, as a resize would
    small = cv2.copyMakeBorder(small, pad, pad, pad, pad, cv2.BORDER_REFLECT101)
    ks = np.clip(ks + pad, 0, np.array(small.shape[1::-1]) - size)
    inputs = np.stack([small[y : y + size, x : x + size] for x, y in ks]).astype(np.float32)
    inputs /= np.float32(255.0)
    per_px = ds / fx  # level-0 px per input px
    origin = (np.asarray(corner, float) + (ks - pad) / np.array([fx, fy])) * ds
    return inputs, origin, per_px


def _to_inputs(crops: np.ndarray, size: int) -> np.ndarray:
    """``classify._to_input`` of each of ``crops`` (n, side, side, 3 uint8), in one call: the same
    anti-aliasing Gaussian and linear interpolation as ``skimage.transform.resize`` (ndimage mode
    'mirror', grid mode), as array gathers on the batch in float32: equal to float rounding
    (< 1e-6), about 10x faster (one resize per crop cost ~4 ms, most of a real slide's time)."""
    n, side = crops.shape[0], crops.shape[1]
    if n == 0 or crops.shape[1:] == (size, size, 3):
        return crops.astype(np.float32) / 255.0
    img = crops.astype(np.float32)
    factor = side / size
    if factor > 1:  # skimage: anti-aliasing when shrinking, sigma (factor - 1) / 2, ndimage mode 'mirror'
        sigma = max(0.0, (factor - 1) / 2)
        if int(4.0 * sigma + 0.5) > 0:  # (a kernel of one tap, e.g. 130 -> 128 px, is the identity)
            img = ndi.gaussian_filter(img, (0, sigma, sigma, 0), mode="mirror")
    # ndi.zoom(order=1, mode="mirror", grid_mode=True) along the two image axes, as gathers
    c = (np.arange(size) + 0.5) * (side / size) - 0.5
    i0 = np.floor(c).astype(np.int64)
    t = c - i0
    i1 = i0 + 1
    i0, i1 = np.abs(i0), np.where(i1 > side - 1, 2 * (side - 1) - i1, i1)  # mirrored about the edge pixels
    i0, i1 = np.clip(i0, 0, side - 1), np.clip(i1, 0, side - 1)
    w0, w1 = (1 - t).astype(np.float32)[:, None, None], t.astype(np.float32)[:, None, None]
    a = np.take(img, i0, axis=1)
    a *= w0
    b = np.take(img, i1, axis=1)
    b *= w1
    a += b
    w0, w1 = w0[..., 0], w1[..., 0]
    out = np.take(a, i0, axis=2)
    out *= w0
    b = np.take(a, i1, axis=2)
    b *= w1
    out += b
    flat = crops.reshape(n, -1)
    np.maximum(out, flat.min(1).astype(np.float32)[:, None, None, None], out=out)  # skimage clips to the input's range
    np.minimum(out, flat.max(1).astype(np.float32)[:, None, None, None], out=out)
    out /= np.float32(255.0)
    return out

#: Side (level px) of the cells crops are read in (the tile size of most pyramidal files).
READ_CELL = 256


def _read_cells(slide, level: int, ds: float, corners: np.ndarray, side: int, cell: int = READ_CELL):
    """The level's pixels under ``side x side`` boxes at ``corners`` (level px), each cell of
    ``cell`` px that a box touches read once; returns (array, its level-px origin). Cells no box
    touches stay white."""
    x0, y0 = (corners.min(0) // cell) * cell
    x1, y1 = corners.max(0) + side
    ncx, ncy = int(-(-(x1 - x0) // cell)), int(-(-(y1 - y0) // cell))
    need = np.zeros((ncy, ncx), bool)
    for cx, cy in corners - (x0, y0):
        need[cy // cell : (cy + side - 1) // cell + 1, cx // cell : (cx + side - 1) // cell + 1] = True
    big = np.full((ncy * cell, ncx * cell, 3), 255, np.uint8)
    for r in range(ncy):
        row = np.flatnonzero(np.diff(np.concatenate([[0], need[r].astype(np.int8), [0]])))
        for a, b in zip(row[::2], row[1::2], strict=True):  # runs of needed cells [a, b)
            big[r * cell : (r + 1) * cell, a * cell : b * cell] = slide.read_region(
                level, int(round((x0 + a * cell) * ds)), int(round((y0 + r * cell) * ds)), (b - a) * cell, cell)
    return big, (int(x0), int(y0))


#: Test-time view counts: the first k of :func:`dihedral`'s eight.
VIEW_COUNTS = (1, 2, 4, 8)


def dihedral(x, k: int):
    """The ``k``-th (0-7) of the eight flips and right-angle rotations of a batch (N, C, H, W):
    0 as it is, 1 mirrored, 2 upside down, 3 both (a half turn), 4-7 the same transposed.

    >>> import torch
    >>> x = torch.arange(4.0).reshape(1, 1, 2, 2)
    >>> [dihedral(x, k).flatten().tolist() for k in (0, 1, 2, 4)]
    [[0.0, 1.0, 2.0, 3.0], [1.0, 0.0, 3.0, 2.0], [2.0, 3.0, 0.0, 1.0], [0.0, 2.0, 1.0, 3.0]]
    """
    if k >= 4:
        x = x.transpose(-1, -2)
    dims = [(), (-1,), (-2,), (-2, -1)][k % 4]
    return x.flip(dims) if dims else x


def classify_points(slide, xy: np.ndarray, slide_mpp: float, params: DetectParams, first: np.ndarray | None = None,
                    decisive_only: bool = False):
    """The classifier's probabilities (N, classes) and localised level-0 positions (N, 2) of
    level-0 points, each the mean over ``params.views`` test-time views. ``decisive_only``: the
    other views only for the points whose detection they can change (``first``: the first
    pass's probabilities, :func:`~napari_mitosis.core.decision.needs_more_views`); the others keep
    the first view's probabilities (they are no detection either way)."""
    import torch

    from ..models.gstn import theta_to_xy

    net, spec = load_models(params)[0]
    size = int(spec.patch_size)
    inputs, origin, f = _crops(slide, xy, slide_mpp, size, float(spec.mpp))
    if params.normalizer is not None and len(inputs):
        for i in range(len(inputs)):
            img = (inputs[i] * 255 + 0.5).astype(np.uint8)
            inputs[i] = params.normalizer.transform(img, source=params.norm_source, mpp=float(spec.mpp)).astype(np.float32) / 255
    n = len(inputs)
    probs = np.zeros((n, len(spec.classes)), np.float32)
    loc = np.full((n, 2), np.nan, np.float32)
    device = next(net.parameters()).device
    with torch.no_grad():
        for i in range(0, n, params.batch):
            # NHWC as it is, seen as NCHW in channels-last layout (what the CPU copy of the net wants)
            x = torch.from_numpy(np.ascontiguousarray(inputs[i : i + params.batch])).permute(0, 3, 1, 2).to(device)
            out = net(x)
            logits, theta = out if isinstance(out, tuple) else (out, None)  # cell-gstn also localises
            probs[i : i + params.batch] = torch.softmax(logits, 1).cpu().numpy()
            if theta is not None:
                px, py = theta_to_xy(theta.cpu())
                loc[i : i + params.batch] = torch.stack([px, py], 1).numpy()
        if params.views > 1 and n:  # the other views of the cells; the position stays the plain view's
            more = np.arange(n)
            if decisive_only:
                more = np.flatnonzero(needs_more_views(first, probs, list(spec.classes), params, params.views))
            for i in range(0, len(more), params.batch):
                rows = more[i : i + params.batch]
                x = torch.from_numpy(np.ascontiguousarray(inputs[rows])).permute(0, 3, 1, 2).to(device)
                p = torch.from_numpy(probs[rows]).to(device)
                for k in range(1, params.views):
                    v = net(dihedral(x, k))
                    p = p + torch.softmax(v[0] if isinstance(v, tuple) else v, 1)
                probs[rows] = (p / params.views).cpu().numpy()
    out = origin + (loc + 0.5) * f - 0.5
    bad = ~np.isfinite(out).all(1) | (np.hypot(*(out - xy).T) * slide_mpp > 10.0)  # the localiser wandered off
    out[bad] = xy[bad]
    return probs, out, list(spec.classes)


def screen_level(slide, slide_mpp: float, screen_mpp: float = SCREEN_MPP) -> int | None:
    """The stored level to screen at as it is (pixel size within SCREEN_MPP_TOL of
    ``screen_mpp``, integer downsample), or None: then the tile is resampled to ``screen_mpp``."""
    best, err = None, SCREEN_MPP_TOL
    for i, d in enumerate(slide.level_downsamples):
        e = abs(slide_mpp * d / screen_mpp - 1)
        if e <= err and abs(d - round(d)) < 1e-6:
            best, err = i, e
    return best


def read_screening(slide, x: int, y: int, w: int, h: int, slide_mpp: float, mpp: float, halo_um: float):
    """A tile core (level-0 x, y, w, h) and ``halo_um`` around it at about ``mpp``: a stored level
    within SCREEN_MPP_TOL as it is, else resampled. Returns (rgb, ox, oy, ds, m): level-0 position
    of its first pixel's corner-adjusted origin, level-0 px per pixel, its pixel size (um/px)."""
    from ..io.working import read_working

    native = screen_level(slide, slide_mpp, mpp)
    if native is not None:  # read the stored level as it is, on its own pixel grid
        ds = float(slide.level_downsamples[native])
        m = slide_mpp * ds
        halo = math.ceil(halo_um / m)
        gx0, gy0 = math.floor(x / ds) - halo, math.floor(y / ds) - halo
        W, H = math.ceil((x + w) / ds) + halo - gx0, math.ceil((y + h) / ds) + halo - gy0
        ox, oy = gx0 * ds, gy0 * ds
        rgb = slide.read_region(native, round(ox), round(oy), W, H)
    else:
        m = max(mpp, slide_mpp)
        ds = m / slide_mpp
        halo = int(math.ceil(halo_um / m))
        W, H = int(math.ceil(w / ds)), int(math.ceil(h / ds))
        ox, oy = x - halo * ds, y - halo * ds
        rgb = read_working(slide, ox, oy, ds, W + 2 * halo, H + 2 * halo)
    return rgb, ox, oy, ds, m


def dense_tile_candidates(slide, x: int, y: int, w: int, h: int, slide_mpp: float, params: DetectParams):
    """cell-dense's candidates of a tile core: DataFrame x, y (level-0 px), dense_<class>, and the
    number of candidates, and whether the tile was skipped as background."""
    from ..models.dense_net import dense_candidates, dense_probabilities

    cols = ["x", "y", *DENSE_COLUMNS]
    net, spec = load_models(params)[1]
    stride = int(spec.config.get("out_stride", 4))  # the maps are at 2 um/px: 0.5 um/px / 4 or 1.0 um/px / 2
    rgb, ox, oy, ds, m = read_screening(slide, x, y, w, h, slide_mpp, float(spec.mpp), DENSE_HALO_UM)
    if is_background_od(optical_density(rgb)):
        return pd.DataFrame(columns=cols, dtype=float), 0, True
    if params.normalizer is not None:
        rgb = params.normalizer.transform(rgb, source=params.norm_source, mpp=m)
    prob = dense_probabilities(net, rgb, stride)
    xy, vals = dense_candidates(prob, [params.thr(f"detect_candidate_{c}") for c in ("mitotic_figure", "granulocyte")],
                                merge_px=4.0 / m, stride=stride)
    gx, gy = ox + (xy[:, 0] + 0.5) * ds - 0.5, oy + (xy[:, 1] + 0.5) * ds - 0.5  # level-0 px
    own = (gx >= x - 0.5) & (gx < x + w - 0.5) & (gy >= y - 0.5) & (gy < y + h - 0.5)
    df = pd.DataFrame({"x": gx[own], "y": gy[own], DENSE_COLUMNS[0]: vals[own, 0], DENSE_COLUMNS[1]: vals[own, 1]})
    return df, len(df), False


def tile_candidates(slide, x: int, y: int, w: int, h: int, slide_mpp: float, params: DetectParams):
    """Screened candidates of a tile core (level-0 x, y) and the number of blobs seen.

    Returns (DataFrame x, y, dark, eosin in level-0 px, n_blobs, skipped_as_background).
    """
    rgb, ox, oy, ds, m = read_screening(slide, x, y, w, h, slide_mpp, params.screen_mpp, params.halo_um)
    od = optical_density(rgb)  # once: the background test and the screening share it
    if is_background_od(od):
        return pd.DataFrame(columns=["x", "y", "dark", "eosin"], dtype=float), 0, True
    if params.normalizer is not None:
        rgb = params.normalizer.transform(rgb, source=params.norm_source, mpp=m)
        od = None
    f = blob_features(rgb, m, params.thr("detect_nucleus_od"), od=od)
    sx, sy = f["x"], f["y"]  # pixels of the screening image
    f["x"], f["y"] = ox + (sx + 0.5) * ds - 0.5, oy + (sy + 0.5) * ds - 0.5  # level-0 px
    own = (f["x"] >= x - 0.5) & (f["x"] < x + w - 0.5) & (f["y"] >= y - 0.5) & (f["y"] < y + h - 0.5)
    n = int(own.sum())
    keep = own & screen(f, params.thr("detect_screen_dark"), params.thr("detect_screen_gran_dark"),
                        params.thr("detect_screen_eosin"))
    f = {k: v[keep] for k, v in f.items()}
    if params.screen_model and keep.any():  # the learned first pass
        p = first_pass(rgb, sx[keep], sy[keep], params)
        f.update(zip(FIRST_PASS_COLUMNS, (p[:, 0], p[:, 1]), strict=True))
    return pd.DataFrame(f), n, False


def first_pass(rgb: np.ndarray, sx, sy, params: DetectParams) -> np.ndarray:
    """cell-screen probabilities (n, 3: mitotic figure, granulocyte, other) of the candidates at
    ``sx, sy`` (pixels of the screening image ``rgb``)."""
    from ..models.screen_net import screen_probs

    net, spec = load_classifier(params.screen_model, params.device, params.screen_folder, channels_last=False)
    probs = screen_probs(net, rgb, np.asarray(sx, float), np.asarray(sy, float), batch=256)
    order = [list(spec.classes).index(c) for c in ("mitotic_figure", "granulocyte", "other")]
    return probs[:, order]


def heatmap_candidates(slide, x, y, w, h, slide_mpp, params):
    """Peaks of the weakly supervised mitosis heatmap (pipeline/heatmap.py, issue #6) in a tile core."""
    from .heatmap import compute_heatmap, heatmap_peaks

    halo = int(round(params.halo_um / slide_mpp))
    H0, W0 = slide.shape
    x0, y0 = max(x - halo, 0), max(y - halo, 0)
    x1, y1 = min(x + w + halo, W0), min(y + h + halo, H0)
    try:
        res = compute_heatmap(slide, roi=(x0, y0, x1 - x0, y1 - y0), device=params.device, mpp=slide_mpp)
    except ValueError as exc:
        raise DetectError(f"heatmap candidates: {exc}") from exc
    pk = heatmap_peaks(res)
    pk = pk[(pk.x >= x - 0.5) & (pk.x < x + w - 0.5) & (pk.y >= y - 0.5) & (pk.y < y + h - 0.5)]
    return pd.DataFrame({"x": pk.x.to_numpy(float), "y": pk.y.to_numpy(float), "dark": np.nan, "eosin": np.nan})


def detect_tile(slide, x: int, y: int, w: int, h: int, params: DetectParams, slide_mpp: float | None = None,
                keep_all: bool = False) -> dict:
    """Detect in one tile core (level-0 px). Returns a dict: ``detections`` (schema of io/detections,
    plus ``p_<class>``), ``candidates`` (blobs seen), ``screened``, ``background``, ``seconds``.

    With ``keep_all`` every screened candidate is returned with its probabilities and
    an empty class when below the thresholds (for choosing thresholds).
    """
    t0 = time.perf_counter()
    slide_mpp = check_detect_mpp(slide, slide_mpp)
    if params.candidates not in CANDIDATE_MODES:
        raise DetectError(f"candidates must be one of {', '.join(CANDIDATE_MODES)}, got {params.candidates!r}")
    frames, n_blobs, background = [], 0, False
    first_cols = DENSE_COLUMNS if params.candidates == "dense" else FIRST_PASS_COLUMNS
    if params.candidates == "dense":
        c, n_blobs, background = dense_tile_candidates(slide, x, y, w, h, slide_mpp, params)
        frames.append(c)
    if params.candidates in ("nuclei", "both"):
        c, n_blobs, background = tile_candidates(slide, x, y, w, h, slide_mpp, params)
        frames.append(c)
    if params.candidates in ("heatmap", "both"):
        frames.append(heatmap_candidates(slide, x, y, w, h, slide_mpp, params))
    if len(frames) == 1 or not any(len(f) for f in frames):
        cand = frames[0]
    else:
        cand = pd.concat([f for f in frames if len(f)], ignore_index=True)
    nms_px = params.thr("detect_nms_um") / slide_mpp
    if len(cand) > 1 and params.candidates != "dense":  # one crop per cell: merge candidates closer than half the NMS radius; a nucleus
        # blob wins over a heatmap peak on the same cell (it has the first pass's scores)
        keep = nms(cand[["x", "y"]].to_numpy(), cand["dark"].fillna(-1).to_numpy(), nms_px / 2)
        cand = cand.iloc[keep].reset_index(drop=True)
    first = cand[list(first_cols)].to_numpy(float) if first_cols[0] in cand else None
    if first is not None and not keep_all:  # cell-gstn only where its answer can matter
        need = needs_classifier(first, params)  # (NaN: no first pass, always)
        cand, first = cand[need].reset_index(drop=True), first[need]
    if not len(cand):
        det = empty_detections(slide_mpp)
    else:
        xy = cand[["x", "y"]].to_numpy(float)
        probs, loc, classes = classify_points(slide, xy, slide_mpp, params, first, decisive_only=not keep_all)
        cls, score = decide_detections(probs, classes, params, first)
        cols = {"x": loc[:, 0], "y": loc[:, 1], "class": cls, "score": score, "status": "model"}
        cols.update({f"p_{c}": probs[:, i].astype(float) for i, c in enumerate(classes)})
        cols.update(cand_x=xy[:, 0], cand_y=xy[:, 1])
        if "dark" in cand:
            cols.update(dark=cand["dark"].to_numpy(), eosin=cand["eosin"].to_numpy())
        if first is not None:  # the first pass's probabilities
            cols.update(zip(first_cols, first.T, strict=True))
        det = pd.DataFrame(cols)
        if not keep_all:
            det = det[det["class"] != ""].reset_index(drop=True)
            if len(det) > 1:
                det = det.iloc[nms(det[["x", "y"]].to_numpy(), det["score"].to_numpy(), nms_px)].reset_index(drop=True)
        det.attrs["mpp"] = slide_mpp
    return {"tile": (int(x), int(y), int(w), int(h)), "detections": det, "candidates": int(n_blobs),
            "screened": len(cand), "background": bool(background), "error": None,
            "seconds": time.perf_counter() - t0}


# ------------------------------------------------------------------------ tiles of a slide
def plan_tiles(slide, roi=None, tissue=None, tile_um: float = TILE_UM, mpp: float | None = None) -> list[tuple]:
    """Tile cores (x, y, w, h, level-0 px) covering ``roi`` (default: the slide), without tissue-free ones."""
    slide_mpp = check_detect_mpp(slide, mpp)
    x, y, w, h = check_roi(slide, roi, DetectError)
    t = max(int(round(tile_um / slide_mpp)), 64)
    tiles = []
    for ty in range(y, y + h, t):
        for tx in range(x, x + w, t):
            tw, th = min(t, x + w - tx), min(t, y + h - ty)
            if tissue is not None and tissue.fraction_in(tx, ty, tw, th) == 0:
                continue
            tiles.append((tx, ty, tw, th))
    return tiles


def merge_tiles(frames: list, mpp: float, nms_um: float) -> pd.DataFrame:
    """All tiles' detections in one table, sorted, with a global NMS across seams."""
    frames = [f for f in frames if f is not None and len(f)]
    if not frames:
        return empty_detections(mpp)
    df = pd.concat(frames, ignore_index=True)
    df = df.sort_values(["y", "x", "class"], kind="mergesort").reset_index(drop=True)
    if len(df) > 1:
        df = df.iloc[nms(df[["x", "y"]].to_numpy(), df["score"].to_numpy(), nms_um / mpp)].reset_index(drop=True)
    df = check_detections(df)
    df.attrs["mpp"] = mpp
    return df


_THREAD_SLIDES = ThreadSlides()  # a per-thread Slide of the same file for the tile threads


def detect_task(
    slide,
    roi=None,
    all_tissue: bool = True,
    tissue=None,
    candidates: str = "dense",
    normalize=None,
    device: str = "auto",
    model: str | None = None,
    thresholds: dict | None = None,
    mpp: float | None = None,
    tile_um: float = TILE_UM,
    workers: int = 1,
    model_folder: str | None = None,
    first_pass: str | None = "cell-screen",
    operating_point: str = "balanced",
    views: int | None = None,
) -> Task:
    """Detect mitotic figures and granulocytes in a region of a slide (or all its tissue).

    Parameters
    ----------
    slide : Slide
    roi : (x, y, w, h), optional
        Level-0 pixels; default the whole slide.
    all_tissue : bool
        Skip tiles without tissue (the tissue mask is computed when ``tissue`` is None).
    candidates : {"dense", "nuclei", "heatmap", "both"}
        Peaks of cell-dense's likelihood maps (default), or the earlier hematoxylin-blob
        screening, peaks of the weakly supervised heatmap, or both.
    normalize : None, method name or fitted StainNormalizer
        Optional stain normalisation of what the detector sees.
    device : "auto", "cpu", "cuda"
    model : str, optional
        The second stage (default cell-effnet with dense candidates, cell-gstn otherwise).
    thresholds : dict, optional
        Overrides of the ``detect_*`` thresholds (default: the model card's).
    operating_point : {"balanced", "screening"}
        Which of the model card's operating points: the best F1 on the validation domains, or
        the highest thresholds that keep recall >= 0.9 on each of them (more to review).
    first_pass : str or None
        Candidates "nuclei" only: the learned first pass (``cell-screen``) on the screening image: a class's score is
        ``sqrt(p_first * p_gstn)`` and cell-gstn runs only where that can reach the threshold.
        None: cell-gstn on every screened blob, its probability is the score (slower; the
        card's ``gstn_only`` thresholds).
    workers : int
        Tiles run concurrently in this many threads (each with its own file handle).
    views : {1, 2, 4, 8}, optional
        Test-time views: the classifier's mean over this many flips and rotations of each
        candidate (default: the model card's, which its thresholds were chosen with).

    Yields
    ------
    Progress, with ``partial`` = the detections of the tile just finished
    (level-0 coordinates, io/detections schema; a last, global NMS may still drop
    a duplicate on a seam from the final result).

    Returns
    -------
    DataFrame of detections (``x, y, class, score, status`` and ``p_<class>``);
    ``attrs``: ``mpp``, ``tiles``, ``failed_tiles`` (list of (tile, message)),
    ``partial`` (True when tiles failed), ``tissue_mm2``, ``no_tissue``,
    ``candidates``, ``screened``.
    """
    from ..io.slide import SlideError

    slide_mpp = check_detect_mpp(slide, mpp)
    if candidates not in CANDIDATE_MODES:
        raise DetectError(f"candidates must be one of {', '.join(CANDIDATE_MODES)}, got {candidates!r}")
    params = make_params(model=model, device=device, candidates=candidates, thresholds=thresholds, tile_um=tile_um,
                         model_folder=model_folder, screen_model=first_pass, operating_point=operating_point,
                         views=views)
    if normalize is not None:
        params = yield from _with_normalizer(slide, params, normalize, device)
    if all_tissue and tissue is None:
        from .tissue import tissue_task

        tissue = yield from tissue_task(slide)
    tiles = plan_tiles(slide, roi, tissue if all_tissue else None, params.tile_um, slide_mpp)
    total = len(tiles)
    yield Progress(0, max(total, 1), f"detecting in {total} tiles")
    load_models(params)
    frames, failed, n_cand, n_scr = [], [], 0, 0

    def one(t):
        s = _THREAD_SLIDES.reopen(slide) if workers > 1 else slide
        try:
            return detect_tile(s, *t, params, slide_mpp)
        except SlideError as exc:
            return {"tile": t, "detections": None, "error": str(exc), "candidates": 0, "screened": 0}

    done = 0
    if workers > 1:
        from concurrent.futures import ThreadPoolExecutor, as_completed

        with ThreadPoolExecutor(workers) as pool:
            pending = {}
            it = iter(tiles)
            try:
                for t in it:  # keep at most 2 * workers tiles in flight
                    pending[pool.submit(one, t)] = t
                    if len(pending) >= 2 * workers:
                        break
                while pending:
                    fut = next(as_completed(pending))
                    del pending[fut]
                    res = fut.result()
                    nxt = next(it, None)
                    if nxt is not None:
                        pending[pool.submit(one, nxt)] = nxt
                    done += 1
                    yield _record(res, frames, failed, done, total)
                    n_cand += res["candidates"]
                    n_scr += res["screened"]
            finally:
                for fut in pending:
                    fut.cancel()
    else:
        for t in tiles:
            res = one(t)
            done += 1
            n_cand += res["candidates"]
            n_scr += res["screened"]
            yield _record(res, frames, failed, done, total)
    result = merge_tiles(frames, slide_mpp, params.thr("detect_nms_um"))
    result.attrs.update(finish_attrs(slide, tissue, tiles, failed, n_cand, n_scr, roi, all_tissue))
    return result


def _record(res, frames, failed, done, total) -> Progress:
    if res.get("error"):
        failed.append((res["tile"], res["error"]))
        return Progress(done, total, f"tile {res['tile'][:2]} failed: {res['error']}", partial=None)
    det = res["detections"]
    frames.append(det)
    part = check_detections(det) if len(det) else empty_detections(det.attrs.get("mpp"))
    part.attrs["mpp"] = det.attrs.get("mpp")
    return Progress(done, total, f"tile {done}/{total}: {int((det['class'] == 'mitotic_figure').sum()) if len(det) else 0} "
                    "mitotic figures", partial=part)


def finish_attrs(slide, tissue, tiles, failed, n_cand, n_scr, roi=None, all_tissue=True) -> dict:
    area = None
    if tissue is not None and tissue.area_mm2 is not None:
        if roi is None:
            area = float(tissue.area_mm2)
        else:
            x, y, w, h = roi
            area = float(tissue.fraction_in(x, y, w, h) * w * h * (slide.mpp or 0) ** 2 / 1e6)
    elif slide.mpp is not None:  # no tissue mask: the region counts as tissue
        x, y, w, h = roi if roi is not None else (0, 0, slide.shape[1], slide.shape[0])
        area = float(w * h * slide.mpp**2 / 1e6)
    return {
        "tiles": len(tiles),
        "failed_tiles": [(list(t), msg) for t, msg in failed],
        "partial": bool(failed),
        "tissue_mm2": area,
        "no_tissue": bool(all_tissue and tissue is not None and not tissue.mask.any()),
        "candidates": int(n_cand),
        "screened": int(n_scr),
    }


def make_params(model=None, device="auto", candidates="dense", thresholds=None, tile_um=TILE_UM,
                model_folder=None, screen_model: str | None = "cell-screen", operating_point: str = "balanced",
                views: int | None = None, **kw) -> DetectParams:
    """Detection parameters: the second stage ``model`` (default: the one the candidate mode was
    validated with, :data:`DEFAULT_MODEL`), its thresholds at ``operating_point`` ("balanced" or
    "screening"), then the ``thresholds`` given (``detect_*`` keys) on top; ``views``: test-time
    views of each candidate (default: the model card's, which its thresholds were chosen with)."""
    from ..models.registry import resolve_device

    if candidates not in CANDIDATE_MODES:
        raise DetectError(f"candidates must be one of {', '.join(CANDIDATE_MODES)}, got {candidates!r}")
    model = model or DEFAULT_MODEL[candidates]
    thr = model_thresholds(model, model_folder, first_pass=bool(screen_model) or candidates == "dense",
                           operating_point=operating_point)
    if thresholds:
        unknown = sorted(set(thresholds) - set(DEFAULT_THRESHOLDS))
        if unknown:
            raise DetectError(f"unknown threshold(s) {unknown}; known: {sorted(DEFAULT_THRESHOLDS)}")
        thr.update({k: float(v) for k, v in thresholds.items()})
    if not tile_um > 2 * 32:
        raise DetectError(f"tile_um must be larger than 64 um, got {tile_um}")
    if views is None:
        views = model_views(model, model_folder)
    if views not in VIEW_COUNTS:
        raise DetectError(f"views (test-time views of each candidate) must be one of "
                          f"{', '.join(map(str, VIEW_COUNTS))}, got {views!r}")
    return DetectParams(views=int(views), model=model, device=str(resolve_device(device)), candidates=candidates, thresholds=thr,
                        tile_um=float(tile_um), model_folder=None if model_folder is None else str(model_folder),
                        screen_model=screen_model or None, operating_point=operating_point, **kw)


def _with_normalizer(slide, params: DetectParams, normalize, device):
    from .stain import make_normalizer, slide_source_stats

    norm = normalize
    if isinstance(normalize, str):
        norm = make_normalizer(normalize, device=device)
    if not getattr(norm, "fitted", True):
        raise DetectError(f"stain normalisation {getattr(norm, 'method', normalize)!r} is not fitted to a target; "
                          "fit it first (napari-mitosis normalize --target REF) or use normalize=None")
    yield Progress(0, 1, "stain statistics of the slide")
    source = slide_source_stats(slide, norm)
    return replace(params, normalizer=norm, norm_source=source)


def params_dict(params: DetectParams) -> dict:
    d = asdict(params)
    d.pop("normalizer", None)
    d.pop("norm_source", None)
    return d
