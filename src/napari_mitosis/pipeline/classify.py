"""Cell classification: crops, or an image/slide plus cell positions -> class probabilities and refined positions.

The shipped model is the guided spatial transformer network ``cell-gstn``
(:mod:`napari_mitosis.models.gstn`): it takes a 128 x 128 px crop at
0.25 um/px (32 x 32 um) with the cell anywhere inside, and returns the class
probabilities together with the position of the cell its localizer settled on.
Inputs at other pixel sizes are rescaled to 0.25 um/px first.

Two entry points, both task generators (yield :class:`Progress`, return a
``pandas.DataFrame``):

- :func:`classify_crops_task` -- crops (arrays or image files) that each cover
  32 um on a side at their pixel size; ``x``, ``y`` are in crop pixels;
- :func:`classify_points_task` -- a :class:`~napari_mitosis.io.Slide` (or any
  file :func:`~napari_mitosis.io.open_slide` opens) and points in level-0
  pixels (e.g. nucleus candidates); ``x``, ``y`` are in level-0 pixels.

Result columns: ``file`` or ``id``, ``p_<class>`` for each class, ``class``
(thresholds of the model's spec applied, else the most probable class),
``x``, ``y`` (the localised cell) and ``shift_um`` (how far the localised cell
lies from the crop centre or the given point).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import NapariMitosisError
from .progress import Progress

#: Physical side of the network's input (um): 128 px at 0.25 um/px.
FIELD_UM = 32.0
#: Crops whose side is this far (relative) from FIELD_UM are refused.
SIZE_TOLERANCE = 0.15
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")

_MODELS: dict = {}


class ClassifyError(NapariMitosisError, ValueError):
    """Input the classifier cannot take; the message says what is wrong and what to do."""


def get_model(name: str = "cell-gstn", device: str = "auto"):
    """Load (once per process) a shipped classifier and its spec."""
    from ..models.registry import load_model, resolve_device

    key = (name, str(resolve_device(device)))
    if key not in _MODELS:
        _MODELS[key] = load_model(name, device=device)
    return _MODELS[key]


def to_classifier_input(rgb: np.ndarray, size: int) -> np.ndarray:
    """Resize an RGB uint8 array to size x size (anti-aliased when shrinking), float32 0..1."""
    if rgb.shape[:2] == (size, size):
        return rgb.astype(np.float32) / 255.0
    from skimage.transform import resize

    shrink = rgb.shape[0] > size
    return resize(rgb, (size, size), order=1, anti_aliasing=shrink, preserve_range=True).astype(np.float32) / 255.0


def _check_rgb(arr, name) -> np.ndarray:
    from ..core.stain import as_rgb

    try:
        return as_rgb(arr, str(name))
    except ValueError as exc:
        raise ClassifyError(f"{exc}; the classifier needs RGB H&E crops") from None


def check_crop(arr, mpp: float, name: str = "crop") -> np.ndarray:
    """Validate one crop: RGB, square, and 32 um a side at ``mpp`` (within 15%)."""
    arr = _check_rgb(arr, name)
    h, w = arr.shape[:2]
    if h != w:
        raise ClassifyError(f"{name}: is {w} x {h} px; crops must be square (32 x 32 um, i.e. 128 px at 0.25 um/px)")
    side = h * mpp
    if abs(side / FIELD_UM - 1) > SIZE_TOLERANCE:
        raise ClassifyError(
            f"{name}: {w} px at {mpp:g} um/px covers {side:.1f} um, but the classifier needs {FIELD_UM:g} um "
            f"(128 px at 0.25 um/px, {FIELD_UM / mpp:.0f} px at {mpp:g} um/px): pass the right --mpp, or give "
            "the image with --points instead of crops"
        )
    return arr


def list_crops(folder) -> list[Path]:
    folder = Path(folder)
    if not folder.exists():
        raise ClassifyError(f"{folder}: no such file or folder")
    if folder.is_file():
        return [folder]
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if not files:
        raise ClassifyError(f"{folder}: holds no crops (no {', '.join(IMAGE_SUFFIXES)} files)")
    return files


def _run_batches(net, spec, inputs, device, batch, names, label):
    """Score an (N, 128, 128, 3) float array in batches; yields Progress, returns probs and (x, y) in input px."""
    import torch

    from ..models.gstn import theta_to_xy

    n = len(inputs)
    probs = np.zeros((n, len(spec.classes)), np.float32)
    xy = np.full((n, 2), np.nan, np.float32)
    with torch.no_grad():
        for i in range(0, n, batch):
            x = torch.from_numpy(np.ascontiguousarray(inputs[i : i + batch].transpose(0, 3, 1, 2))).to(device)
            logits, theta = net(x)
            probs[i : i + batch] = torch.softmax(logits, 1).cpu().numpy()
            if theta is not None:
                px, py = theta_to_xy(theta.cpu())
                xy[i : i + batch] = torch.stack([px, py], 1).numpy()
            yield Progress(min(i + batch, n), n, f"{label}: {min(i + batch, n)}/{n} cells")
    return probs, xy


def _frame(key, ids, probs, spec):
    from ..core.decision import classify_by_thresholds

    df = pd.DataFrame({key: ids})
    for i, c in enumerate(spec.classes):
        df[f"p_{c}"] = probs[:, i]
    df["class"] = [spec.classes[k] for k in classify_by_thresholds(probs, list(spec.classes), spec.thresholds)] if len(probs) else []
    return df


def classify_crops_task(crops, mpp: float | None = None, model: str = "cell-gstn", device: str = "auto",
                        batch: int = 64, names=None):
    """Classify crops (arrays, image files or a folder of them) that each cover 32 um a side.

    Parameters
    ----------
    crops : folder, file, or sequence of paths / (rows, cols, 3) arrays
    mpp : float, optional
        Pixel size of the crops (um/px); default the model's 0.25.

    Returns (after yielding Progress) a DataFrame with ``file``, ``p_<class>``,
    ``class``, ``x``, ``y`` (localised cell in crop pixels), ``shift_um``.
    """
    if isinstance(crops, (str, Path)):
        crops = list_crops(crops)
    crops = list(crops)
    if not crops:
        raise ClassifyError("no crops to classify")
    net, spec = get_model(model, device)
    mpp = spec.mpp if mpp is None else float(mpp)
    if not (np.isfinite(mpp) and mpp > 0):
        raise ClassifyError(f"the pixel size must be a positive number of um/px, got {mpp!r}")
    size = spec.patch_size
    names = list(names) if names is not None else [str(c) if isinstance(c, (str, Path)) else f"crop{i}" for i, c in enumerate(crops)]
    inputs = np.zeros((len(crops), size, size, 3), np.float32)
    sides = np.zeros(len(crops))
    for i, c in enumerate(crops):
        if isinstance(c, (str, Path)):
            from skimage.io import imread

            try:
                arr = imread(str(c))
            except Exception as exc:
                raise ClassifyError(f"{c}: cannot be read as an image ({type(exc).__name__}: {exc})") from exc
        else:
            arr = c
        arr = check_crop(arr, mpp, names[i])
        sides[i] = arr.shape[0]
        inputs[i] = to_classifier_input(arr, size)
        if i % 256 == 0:
            yield Progress(0, len(crops), f"reading crops {i + 1}/{len(crops)}")
    device_ = next(net.parameters()).device
    probs, xy = yield from _run_batches(net, spec, inputs, device_, batch, names, "classifying crops")
    df = _frame("file", [Path(n).name if isinstance(n, str) and Path(n).exists() else n for n in names], probs, spec)
    scale = sides / size  # crop px per input px
    df["x"] = (xy[:, 0] + 0.5) * scale - 0.5
    df["y"] = (xy[:, 1] + 0.5) * scale - 0.5
    centre = (sides - 1) / 2
    df["shift_um"] = np.hypot(df["x"] - centre, df["y"] - centre) * mpp
    df.attrs.update(model=spec.name, mpp=mpp)
    return df


def read_points(path) -> pd.DataFrame:
    """A CSV of cell positions: columns ``x``, ``y`` (level-0 pixels) and optionally ``id``."""
    path = Path(path)
    if not path.exists():
        raise ClassifyError(f"{path}: no such file")
    try:
        df = pd.read_csv(path)
    except Exception as exc:
        raise ClassifyError(f"{path}: cannot be read as CSV ({type(exc).__name__}: {exc})") from exc
    return check_points(df, str(path))


def check_points(points, name: str = "points") -> pd.DataFrame:
    df = pd.DataFrame(points).copy()
    cols = {c.lower(): c for c in df.columns}
    if "x" not in cols or "y" not in cols:
        raise ClassifyError(f"{name}: needs columns x and y (level-0 pixels), has {list(df.columns)}")
    df = df.rename(columns={cols["x"]: "x", cols["y"]: "y"})
    if "id" in cols:
        df = df.rename(columns={cols["id"]: "id"})
    else:
        df["id"] = np.arange(len(df))
    if df.empty:
        raise ClassifyError(f"{name}: holds no points")
    xy = df[["x", "y"]].apply(pd.to_numeric, errors="coerce")
    bad = xy.isna().any(axis=1)
    if bad.any():
        raise ClassifyError(f"{name}: x/y of point id {df['id'][bad].iloc[0]!r} is not a number")
    df[["x", "y"]] = xy.astype(float)
    return df


def classify_points_task(slide, points, mpp: float | None = None, model: str = "cell-gstn", device: str = "auto",
                         batch: int = 64, chunk: int = 2048):
    """Classify the cells at ``points`` (level-0 pixels) of a slide or image.

    Each point gets a 32 x 32 um field around it, read from the pyramid level
    closest to 0.25 um/px and rescaled to 128 x 128 px. Points outside the
    image are refused (naming them); the field of a point near the border is
    filled white beyond it. Returns a DataFrame with ``id``, ``p_<class>``,
    ``class``, ``x``, ``y`` (the localised cell, level-0 pixels), ``shift_um``.
    """
    from ..io import Slide, open_slide

    owned = not isinstance(slide, Slide)
    if owned:
        slide = open_slide(slide, mpp=mpp)
    try:
        if mpp is not None and not owned:
            slide_mpp = float(mpp)
        else:
            slide_mpp = slide.mpp
        if slide_mpp is None:
            raise ClassifyError(f"{slide.path}: pixel size unknown; pass --mpp (um/px) so cells can be rescaled to 0.25 um/px")
        pts = check_points(points)
        h, w = slide.shape
        out = (pts.x < 0) | (pts.y < 0) | (pts.x > w - 1) | (pts.y > h - 1)
        if out.any():
            ids = ", ".join(str(v) for v in pts["id"][out].head(5))
            raise ClassifyError(
                f"{int(out.sum())} point(s) lie outside the {w} x {h} px image (ids {ids}{', ...' if out.sum() > 5 else ''}); "
                "x and y must be level-0 pixels of this image"
            )
        net, spec = get_model(model, device)
        size = spec.patch_size
        field_l0 = size * spec.mpp / slide_mpp  # level-0 px covered by the input
        level = slide.best_level_for_downsample(field_l0 / size)
        ds = slide.level_downsamples[level]
        side = max(int(round(field_l0 / ds)), 1)  # px read at that level
        device_ = next(net.parameters()).device
        frames = []
        n = len(pts)
        for c0 in range(0, n, chunk):
            part = pts.iloc[c0 : c0 + chunk]
            inputs = np.zeros((len(part), size, size, 3), np.float32)
            origin = np.zeros((len(part), 2))
            for i, (x, y) in enumerate(zip(part.x, part.y)):
                x0, y0 = x - field_l0 / 2 + 0.5, y - field_l0 / 2 + 0.5
                origin[i] = (int(round(x0)), int(round(y0)))
                region = slide.read_region(level, int(origin[i, 0]), int(origin[i, 1]), side, side)
                inputs[i] = to_classifier_input(region, size)
                if i % 256 == 0:  # reading is the first half of each chunk's work, scoring the second
                    yield Progress(2 * c0 + i, 2 * n, f"reading cells {c0 + i + 1}/{n}")
            sub = _run_batches(net, spec, inputs, device_, batch, None, "classifying cells")
            while True:
                try:
                    p = next(sub)
                except StopIteration as stop:
                    probs, xy = stop.value
                    break
                yield Progress(2 * c0 + len(part) + p.done, 2 * n, f"classifying cells: {c0 + p.done}/{n}")
            df = _frame("id", part["id"].to_numpy(), probs, spec)
            f = side * ds / size  # level-0 px per input px
            df["x"] = origin[:, 0] + (xy[:, 0] + 0.5) * f - 0.5
            df["y"] = origin[:, 1] + (xy[:, 1] + 0.5) * f - 0.5
            df["shift_um"] = np.hypot(df["x"].to_numpy() - part.x.to_numpy(), df["y"].to_numpy() - part.y.to_numpy()) * slide_mpp
            frames.append(df)
        result = pd.concat(frames, ignore_index=True)
        result.attrs.update(model=spec.name, mpp=slide_mpp, level=level)
        return result
    finally:
        if owned:
            slide.close()
