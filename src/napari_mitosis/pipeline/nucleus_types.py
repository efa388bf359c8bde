"""Unsupervised nucleus typing: each segmented nucleus gets the InfoGAN's type (issue #9).

Every nucleus is cut out as in training (:func:`nucleus_patches`): the region
is read at :data:`WORK_MPP` (0.5 um/px), stain-normalised with the model's
stored normaliser (statistics of the slide's overview), and a 40 x 40 px
(20 x 20 um) window is centred on the nucleus centroid. The discriminator's
auxiliary head ``D_Q`` infers the categorical code ``c``: its argmax is the
``type`` (0..K-1), its softmax the ``p_type_<k>`` columns.

Nuclei cut by the region's or the image's border (a label touching the edge
of the label image, or a centroid closer than :data:`EDGE_UM` to the image
edge) are not typed: ``type`` = -1, ``type_name`` = ``"border (not typed)"``,
and a :class:`TypingWarning` says how many.

Helpers for the viewer: :func:`type_colors`, :func:`type_legend`,
:func:`points_layer_kwargs` (``plugin/layers.py`` colours a Labels layer by type).
"""

from __future__ import annotations

import math
import warnings
from functools import lru_cache

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from ..core.detections import hex_color
from ..errors import NapariMitosisError
from ..models.tensors import rgb_to_tensor
from .checks import check_mpp
from .progress import Progress, Task, run

#: Default model.
MODEL = "nuclei-infogan"
#: Working pixel size (um/px): 40 px = 20 um holds any nucleus with a rim of context.
WORK_MPP = 0.5
#: Side of the network input (px at WORK_MPP), as in the paper.
PATCH = 40
#: Side stored for training (>= 40 * sqrt(2)) so any rotation still fills the 40 x 40 input.
STORE = 58
#: A centroid closer than this (um) to the image edge belongs to a nucleus cut by the edge.
EDGE_UM = 4.0
#: type value and name of nuclei that are not typed.
UNTYPED = -1
UNTYPED_NAME = "border (not typed)"
#: Nuclei per tile read (tile side in working pixels).
TILE = 1024
#: Colour-blind-safe palette (Okabe-Ito, then Tol's muted), RGB 0..1.
PALETTE = [
    (0.902, 0.624, 0.000),
    (0.337, 0.706, 0.914),
    (0.000, 0.620, 0.451),
    (0.800, 0.475, 0.655),
    (0.941, 0.894, 0.259),
    (0.000, 0.447, 0.698),
    (0.835, 0.369, 0.000),
    (0.533, 0.133, 0.333),
    (0.267, 0.667, 0.600),
    (0.600, 0.600, 0.200),
]
UNTYPED_COLOR = (0.6, 0.6, 0.6, 1.0)


class TypingError(NapariMitosisError, ValueError):
    """Nucleus typing cannot run on this input; the message says what is wrong and what to do."""


class TypingWarning(UserWarning):
    """Some nuclei were not typed (cut by a border) or the result is doubtful."""


# --------------------------------------------------------------- patches
def _slide_of(source, mpp):
    """A :class:`Slide` from a Slide, a path or an in-memory RGB array (and whether we opened it)."""
    from ..io.slide import Slide

    if isinstance(source, Slide):
        if mpp is not None:
            import dataclasses

            source = dataclasses.replace(source, mpp=float(mpp))
        return source, False
    if isinstance(source, np.ndarray):
        from pathlib import Path

        import dask.array as da

        from ..core.stain import as_rgb

        try:
            rgb = as_rgb(source, "image")
        except ValueError as exc:
            raise TypingError(str(exc)) from None
        return Slide(path=Path("<array>"), levels=[da.from_array(rgb, chunks=(2048, 2048, 3))], mpp=mpp, format="image"), False
    from ..io import open_slide

    return open_slide(source, mpp=mpp), True


def _check_mpp(slide) -> float:
    return check_mpp(slide, None, TypingError, "nuclei cannot be cut out at 0.5 um/px", "--mpp 0.25 or mpp=0.25")


def sample_patches(image: np.ndarray, xs, ys, size: int = PATCH) -> np.ndarray:
    """``size`` x ``size`` windows of ``image`` centred on ``(xs, ys)`` (pixels, floats), bilinear.

    Outside the image is mirrored. Returns uint8 (N, size, size, 3).

    Examples
    --------
    >>> img = np.zeros((50, 60, 3), np.uint8); img[20:30, 30:40] = 200
    >>> p = sample_patches(img, [34.5], [24.5], size=10)
    >>> p.shape, int(p[0].min())
    ((1, 10, 10, 3), 200)
    """
    xs = np.asarray(xs, float).reshape(-1)
    ys = np.asarray(ys, float).reshape(-1)
    out = np.empty((xs.size, size, size, 3), np.uint8)
    if xs.size == 0:
        return out
    off = np.arange(size, dtype=np.float32) - (size - 1) / 2
    img = np.asarray(image, np.float32)
    for i in range(0, xs.size, 1024):  # all windows of a chunk in one call per channel
        yy = (ys[i : i + 1024, None, None] + off[None, :, None]) * np.ones((1, 1, size), np.float32)
        xx = (xs[i : i + 1024, None, None] + off[None, None, :]) * np.ones((1, size, 1), np.float32)
        for c in range(3):
            v = ndi.map_coordinates(img[..., c], [yy, xx], order=1, mode="mirror")
            out[i : i + 1024, ..., c] = np.clip(np.rint(v), 0, 255)
    return out


def nucleus_patches(
    slide, x0, y0, norm=None, source_stats=None, size: int = PATCH, tile: int = TILE
) -> np.ndarray:
    """Windows of ``size`` px at :data:`WORK_MPP` centred on level-0 points ``(x0, y0)``, stain-normalised.

    The slide is read in tiles (``tile`` working px plus a margin) so memory
    does not depend on how far apart the nuclei are. ``norm`` is a fitted
    :class:`~napari_mitosis.core.stain_norm.StainNormalizer` (None: no
    normalisation) and ``source_stats`` the slide's statistics for it
    (default: from the slide's overview).
    """
    from ..io.working import read_working

    m0 = _check_mpp(slide)
    ds = WORK_MPP / m0
    x0 = np.asarray(x0, float).reshape(-1)
    y0 = np.asarray(y0, float).reshape(-1)
    out = np.empty((x0.size, size, size, 3), np.uint8)
    if x0.size == 0:
        return out
    if norm is not None and source_stats is None:
        from .stain import slide_source_stats

        try:
            source_stats = slide_source_stats(slide, norm)
        except ValueError:
            source_stats = None  # all glass: nothing to normalise
    xw = (x0 + 0.5) / ds - 0.5  # working-pixel coordinates of the centroids
    yw = (y0 + 0.5) / ds - 0.5
    margin = size // 2 + 3
    tx, ty = np.floor(xw / tile).astype(int), np.floor(yw / tile).astype(int)
    for key in sorted(set(zip(tx.tolist(), ty.tolist()))):
        sel = np.flatnonzero((tx == key[0]) & (ty == key[1]))
        bx0 = math.floor(xw[sel].min()) - margin
        by0 = math.floor(yw[sel].min()) - margin
        bw = math.ceil(xw[sel].max()) + margin + 1 - bx0
        bh = math.ceil(yw[sel].max()) + margin + 1 - by0
        region = read_working(slide, bx0 * ds, by0 * ds, ds, bw, bh)
        if norm is not None and source_stats is not None:
            region = norm.transform(region, source=source_stats, mpp=WORK_MPP)
        out[sel] = sample_patches(region, xw[sel] - bx0, yw[sel] - by0, size)
    return out


def to_tensor(patches: np.ndarray):
    """uint8 (N, H, W, 3) -> float tensor (N, 3, H, W) in -1..1 (the networks' input range)."""
    return rgb_to_tensor(patches, scale=127.5, offset=1.0)


# ----------------------------------------------------------------- nuclei
def nuclei_from_labels(labels, origin=(0, 0), downsample: float = 1.0) -> pd.DataFrame:
    """A nucleus table (``id``, ``x``, ``y`` in level-0 px, ``touches_border``) from an instance label image.

    ``labels`` covers the region whose level-0 corner is ``origin`` with
    ``downsample`` level-0 pixels per label pixel (1 for labels at the image's
    own size; :func:`~napari_mitosis.pipeline.nuclei.segment_task`'s labels have
    ``table.attrs['downsample']``).
    """
    lab = np.asarray(labels)
    if lab.ndim != 2 or not np.issubdtype(lab.dtype, np.integer):
        raise TypingError(f"labels must be a 2-D integer instance image, got shape {lab.shape} and dtype {lab.dtype}")
    ids = np.unique(lab)
    ids = ids[ids > 0]
    if ids.size == 0:
        return pd.DataFrame({"id": [], "x": [], "y": [], "touches_border": []})
    c = np.asarray(ndi.center_of_mass(np.ones(lab.shape, np.float32), lab, ids)).reshape(-1, 2)
    edge = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
    return pd.DataFrame(
        {
            "id": ids.astype(np.int64),
            "x": origin[0] + (c[:, 1] + 0.5) * downsample - 0.5,
            "y": origin[1] + (c[:, 0] + 0.5) * downsample - 0.5,
            "touches_border": np.isin(ids, edge),
        }
    )


@lru_cache(maxsize=4)
def _model(name: str, device: str):
    from ..models.registry import ModelError, load_model

    try:
        return load_model(name, device=device)
    except ModelError as exc:
        raise TypingError(str(exc)) from exc


def model_normalizer(spec):
    """The stain normaliser stored with a typing model (None when trained without)."""
    from ..models.stain_net import normalizer_from_dict

    data = spec.training.get("normalizer")
    return normalizer_from_dict(data) if data else None


def type_names(spec) -> list[str]:
    """The K type names of a model (``type 1`` ... unless its card names them)."""
    return list(spec.classes) or [f"type {k + 1}" for k in range(int(spec.config.get("n_classes", 3)))]


def predict_types(net, patches: np.ndarray, batch: int = 256, device=None) -> np.ndarray:
    """Softmax of ``D_Q`` (N, K) for uint8 patches (N, 40, 40, 3) already normalised."""
    import torch

    if device is None:
        device = next(net.parameters()).device
    probs = []
    with torch.no_grad():
        for i in range(0, len(patches), batch):
            x = to_tensor(patches[i : i + batch]).to(device)
            probs.append(torch.softmax(net.classify(x), dim=1).cpu().numpy())
    k = net.n_classes
    return np.concatenate(probs) if probs else np.zeros((0, k), np.float32)


def type_nuclei_task(
    source,
    nuclei,
    mpp: float | None = None,
    model: str = MODEL,
    device: str = "auto",
    roi=None,
    batch: int = 256,
) -> Task:
    """Type the nuclei of a region with the InfoGAN's ``D_Q`` head.

    Parameters
    ----------
    source : Slide, path or (H, W, 3) uint8 array
        The image the nuclei were segmented in.
    nuclei : DataFrame or 2-D int array
        A nucleus table with ``x``, ``y`` in level-0 pixels (e.g. from
        :func:`~napari_mitosis.pipeline.nuclei.segment_task`; its ``attrs`` and
        other columns are kept), or an instance label image at the image's own
        pixel size covering ``roi`` (or the whole image).
    mpp : float, optional
        Level-0 pixel size (um/px) when the source does not record it.
    model : str
        Registry name of the typing model.
    roi : (x, y, w, h), optional
        Where a label image lies in the image (level-0 px); default the origin.

    Yields
    ------
    Progress

    Returns
    -------
    DataFrame
        The nucleus table with ``type`` (0..K-1; -1 for nuclei cut by a border),
        ``type_name``, ``p_type_<k>`` (k = 0..K-1) and ``at_border`` columns;
        ``attrs['type_names']``, ``attrs['type_colors']`` and ``attrs['typing_model']``.

    Raises
    ------
    TypingError
        No nuclei, a table without ``x``/``y``, an unknown pixel size or model.
    """
    yield Progress(0, 4, f"loading {model}")
    if isinstance(nuclei, pd.DataFrame):
        if not {"x", "y"} <= set(nuclei.columns):
            raise TypingError(
                f"the nucleus table needs x and y columns (level-0 pixels), it has {list(nuclei.columns)}; "
                "segment nuclei first (napari-mitosis segment --table nuclei.csv)"
            )
        table = nuclei.copy()
        table.attrs = dict(nuclei.attrs)
        if "touches_border" not in table.columns:
            table["touches_border"] = False
    else:
        origin = (0, 0) if roi is None else (roi[0], roi[1])
        table = nuclei_from_labels(nuclei, origin=origin)
    if len(table) == 0:
        raise TypingError("there are no nuclei to type in this region; segment nuclei first, or choose a region with tissue")
    slide, opened = _slide_of(source, mpp)
    try:
        m0 = _check_mpp(slide)
        net, spec = _model(model, str(device))
        names = type_names(spec)
        k = len(names)
        norm = model_normalizer(spec)
        yield Progress(1, 4, f"cutting out {len(table)} nuclei")
        H0, W0 = slide.shape
        x = table["x"].to_numpy(float)
        y = table["y"].to_numpy(float)
        edge_px = EDGE_UM / m0
        cut = table["touches_border"].to_numpy(bool) | (x < edge_px - 0.5) | (y < edge_px - 0.5)
        cut |= (x > W0 - 0.5 - edge_px) | (y > H0 - 0.5 - edge_px)
        half = PATCH / 2 * WORK_MPP / m0
        at_border = (x - half < -0.5) | (y - half < -0.5) | (x + half > W0 - 0.5) | (y + half > H0 - 0.5)
        keep = np.flatnonzero(~cut)
        patches = nucleus_patches(slide, x[keep], y[keep], norm=norm)
    finally:
        if opened:
            slide.close()
    yield Progress(2, 4, f"typing {keep.size} nuclei")
    probs = predict_types(net, patches, batch=batch)
    types = np.full(len(table), UNTYPED, np.int64)
    types[keep] = probs.argmax(1) if keep.size else []
    p = np.full((len(table), k), np.nan, np.float32)
    p[keep] = probs
    table["type"] = types
    table["type_name"] = [names[t] if t >= 0 else UNTYPED_NAME for t in types]
    for j in range(k):
        table[f"p_type_{j}"] = p[:, j]
    table["at_border"] = at_border
    table = table.drop(columns=["touches_border"])
    n_cut = int(cut.sum())
    if n_cut:
        warnings.warn(
            f"{n_cut} of {len(table)} nuclei are cut by the border of the region or image and were not typed "
            f"(type {UNTYPED}, '{UNTYPED_NAME}'); enlarge the region to type them",
            TypingWarning,
            stacklevel=2,
        )
    if keep.size == 0:
        raise TypingError(
            f"all {len(table)} nuclei are cut by the border of the region or image, so none can be typed; "
            "choose a larger region"
        )
    table.attrs.update(
        {"type_names": names, "type_colors": [list(c) for c in type_colors(k)], "typing_model": spec.name}
    )
    yield Progress(4, 4, ", ".join(f"{n}: {c}" for n, c in type_counts(table).items()))
    return table


def type_nuclei(source, nuclei, **kwargs) -> pd.DataFrame:
    """:func:`type_nuclei_task` without progress."""
    return run(type_nuclei_task(source, nuclei, **kwargs))


# ---------------------------------------------------------------- display
def type_colors(k: int) -> list[tuple[float, float, float, float]]:
    """``k`` distinct RGBA colours (0..1), colour-blind safe for k <= 8.

    Examples
    --------
    >>> len(type_colors(3)), type_colors(3)[0][3]
    (3, 1.0)
    """
    if k < 1:
        raise TypingError(f"the number of types must be at least 1, got {k}")
    cols = [PALETTE[i % len(PALETTE)] for i in range(k)]
    return [(*c, 1.0) for c in cols]


def colors_of_types(types: np.ndarray, k: int) -> np.ndarray:
    """RGBA (n, 4) of each type in ``types`` among ``k`` (the untyped colour for -1)."""
    cols = np.asarray(type_colors(k) + [UNTYPED_COLOR], np.float32)
    t = np.asarray(types, int)
    return cols[np.where(t >= 0, t, k)]


def type_counts(table: pd.DataFrame) -> dict:
    """Nuclei per type name, in type order (untyped last, when any)."""
    names = table.attrs.get("type_names") or sorted(set(table["type_name"]) - {UNTYPED_NAME})
    counts = {n: int((table["type_name"] == n).sum()) for n in names}
    n_un = int((table["type"] == UNTYPED).sum())
    if n_un:
        counts[UNTYPED_NAME] = n_un
    return counts


def type_legend(table: pd.DataFrame) -> list[dict]:
    """One entry per type for a legend: ``name``, ``color`` (RGBA 0..1), ``hex`` and ``count``.

    Examples
    --------
    >>> t = pd.DataFrame({"type": [0, 1, 1, -1], "type_name": ["a", "b", "b", UNTYPED_NAME]})
    >>> t.attrs["type_names"] = ["a", "b"]
    >>> [(e["name"], e["count"]) for e in type_legend(t)]
    [('a', 1), ('b', 2), ('border (not typed)', 1)]
    """
    names = list(table.attrs.get("type_names") or [])
    colors = type_colors(max(len(names), 1))
    counts = type_counts(table)
    out = []
    for i, n in enumerate(names):
        out.append({"name": n, "type": i, "color": colors[i], "hex": hex_color(colors[i]), "count": counts.get(n, 0)})
    if UNTYPED_NAME in counts:
        out.append({"name": UNTYPED_NAME, "type": UNTYPED, "color": UNTYPED_COLOR, "hex": hex_color(UNTYPED_COLOR),
                    "count": counts[UNTYPED_NAME]})
    return out


def legend_text(table: pd.DataFrame) -> str:
    """A one-line legend with counts, e.g. for the viewer's status bar or the CLI."""
    return "; ".join(f"{e['name']}: {e['count']}" for e in type_legend(table))


def points_layer_kwargs(table: pd.DataFrame, level0_mpp: float | None = None, size_um: float = 8.0) -> dict:
    """napari Points layer arguments: the nuclei in micrometres (or level-0 px), coloured by type.

    ``data`` is (y, x) in um when ``level0_mpp`` is given (the slide layer's
    scale), else in level-0 pixels; the table travels as ``features`` so the
    types are saved and exported with the points.
    """
    k = len(table.attrs.get("type_names") or []) or int(table["type"].max()) + 1
    f = 1.0 if level0_mpp is None else float(level0_mpp)
    data = np.stack([table["y"].to_numpy(float) * f, table["x"].to_numpy(float) * f], axis=1) if len(table) else np.zeros((0, 2))
    return {
        "data": data,
        "features": table.reset_index(drop=True),
        "face_color": colors_of_types(table["type"].to_numpy(), k),
        "border_color": "white",
        "size": size_um if level0_mpp is not None else size_um / 0.25,
        "name": "nucleus types",
    }
