"""Cell samples for the cell classifier: where they come from, how they are split and augmented.

A *cell table* (pandas DataFrame, one row per cell) says where each labelled
cell is; the pixels stay in their files and are read on demand:

========== ==========================================================
column     meaning
========== ==========================================================
image      path of the image (a crop or a larger tile/frame)
x, y       the cell's centre in that image's pixels (floats)
class      class name (``mitotic_figure``, ``granulocyte``, ``other``
           or the user's own)
status     how sure the label is: ``confirmed`` (expert), ``hard_negative``
           (a look-alike judged not to be the class), ``auto`` (a nucleus
           found automatically away from labelled cells), ``corrected``...
mpp        the image's true pixel size, um/px
source     where it comes from (scanner, data set): for source-aware sampling
           and leave-one-source-out evaluation
group      the slide or frame group: cross-validation never splits one
box        ``x0,y0,x1,y1`` of the image part that may be used (empty: all)
========== ==========================================================

Readers: :func:`read_shared` (the project's ``../shared/data`` sets) and
:func:`read_export` (the retraining format the review widget exports, see
``docs/classifier.md``). :class:`CellSampler` draws class-balanced,
source-aware batches of 128 x 128 inputs at 0.25 um/px with rotation, flips,
scale, HED stain and blur augmentation, the cell randomly offset by
``Delta`` and the ground-truth theta of equations 1-3.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from ..core.nuclei import hematoxylin_od
from ..core.stain import as_rgb as _as_rgb
from ..core.stain import hed_jitter
from ..io.cell_export import EXPORT_TABLE, CellDataError, write_export  # noqa: F401 (write_export: re-exported)
from ..models.gstn import INPUT_SIZE, WORK_MPP

CLASSES = ("mitotic_figure", "granulocyte", "other")
COLUMNS = ["image", "x", "y", "class", "status", "mpp", "source", "group", "box"]

#: MITOS-ATYPIA-14 nuclei look ~1.5x larger than AMi-Br's at the same nominal
#: 0.2455 um/px (data README); the reader corrects the pixel size by this factor.
MITOS14_SCALE_FIX = 1.5
#: Slide number ranges of the MIDOG 2021 scanners (MIDOG 2021 training set layout).
MIDOG21_SCANNERS = ((1, 50, "hamamatsu_xr"), (51, 100, "hamamatsu_s360"), (101, 150, "aperio_cs2"))

EXPORT_REQUIRED = ("image", "class", "mpp")


# ------------------------------------------------------------------- images
_IMAGE_CACHE: dict[str, np.ndarray] = {}


def read_rgb(path) -> np.ndarray:
    """An image file as (rows, cols, 3) uint8 RGB (grey is refused, alpha dropped); cached."""
    key = str(path)
    img = _IMAGE_CACHE.get(key)
    if img is None:
        from skimage.io import imread

        try:
            img = np.asarray(imread(key))
        except Exception as exc:
            raise CellDataError(f"{path}: cannot be read as an image ({type(exc).__name__}: {exc})") from exc
        img = as_rgb(img, path)
        if len(_IMAGE_CACHE) > 4000:
            _IMAGE_CACHE.clear()
        _IMAGE_CACHE[key] = img
    return img


def as_rgb(img: np.ndarray, name="image") -> np.ndarray:
    """Check an array is RGB(A) and return it as RGB uint8 (clear error otherwise)."""
    try:
        return _as_rgb(img, str(name))
    except ValueError as exc:
        raise CellDataError(str(exc)) from None


# ---------------------------------------------------------- nucleus centres
def find_nuclei(rgb: np.ndarray, mpp: float, min_distance_um: float = 4.0) -> np.ndarray:
    """Approximate nucleus centres (N, 2) as (x, y): smoothed hematoxylin maxima above Otsu's level.

    Used only to pick 'other' cells away from labelled ones; precision matters more than recall.
    """
    from skimage.feature import peak_local_max
    from skimage.filters import threshold_otsu

    h = ndi.gaussian_filter(hematoxylin_od(rgb).astype(np.float32), 1.5 / mpp)
    if h.max() - h.min() < 1e-6:
        return np.zeros((0, 2))
    level = threshold_otsu(h)
    peaks = peak_local_max(h, min_distance=max(int(min_distance_um / mpp), 1), threshold_abs=level, exclude_border=False)
    return peaks[:, ::-1].astype(float)


def _away(points: np.ndarray, taken: np.ndarray, min_px: float) -> np.ndarray:
    if len(points) == 0 or len(taken) == 0:
        return points
    d = np.hypot(points[:, None, 0] - taken[None, :, 0], points[:, None, 1] - taken[None, :, 1]).min(1)
    return points[d >= min_px]


def _pick(points: np.ndarray, n: int, rng) -> np.ndarray:
    if len(points) <= n:
        return points
    return points[np.sort(rng.choice(len(points), n, replace=False))]


def _rows(image, pts, cls, status, mpp, source, group, box=""):
    return [dict(image=str(image), x=float(x), y=float(y), **{"class": cls}, status=status, mpp=float(mpp),
                 source=source, group=str(group), box=box) for x, y in pts]


# ------------------------------------------------------------ shared readers
def midog_scanner(slide: str) -> str:
    n = int(re.sub(r"\D", "", Path(slide).stem) or 0)
    for lo, hi, name in MIDOG21_SCANNERS:
        if lo <= n <= hi:
            return name
    return "unknown"


def read_amibr(root: Path, others_per_crop: int = 1, seed: int = 0) -> pd.DataFrame:
    """AMi-Br/MIDOG21 crops: the centre is a mitotic figure; nuclei >= 10 um off centre are 'other'.

    Source = scanner (from the slide number), group = slide.
    """
    rng = np.random.default_rng(seed)
    labels = pd.read_csv(root / "labels.csv")
    rows = []
    for r in labels.itertuples():
        path = root / r.file
        src = "amibr_" + midog_scanner(r.slide)
        rows += _rows(path, [(63.5, 63.5)], "mitotic_figure", "confirmed", WORK_MPP, src, "amibr/" + r.slide)
        if others_per_crop:
            nuc = find_nuclei(read_rgb(path), WORK_MPP)
            nuc = nuc[np.hypot(nuc[:, 0] - 63.5, nuc[:, 1] - 63.5) >= 10 / WORK_MPP]
            nuc = nuc[(nuc.min(1) >= 8) & (nuc.max(1) <= 119)]
            rows += _rows(path, _pick(nuc, others_per_crop, rng), "other", "auto", WORK_MPP, src, "amibr/" + r.slide)
    return pd.DataFrame(rows)


def read_mitos14(root: Path, others_per_frame: int = 40, seed: int = 0) -> pd.DataFrame:
    """MITOS-ATYPIA-14 frames: mitoses, look-alike hard negatives, and nuclei >= 12 um from any mitosis.

    Every mitosis of a frame is labelled, so automatically found nuclei away
    from them are non-mitotic. Pixel size 0.2455 um/px corrected by
    :data:`MITOS14_SCALE_FIX`; group = frame group (``A03_00`` ...).
    """
    rng = np.random.default_rng(seed)
    pts = pd.read_csv(root / "points.csv")
    mpp = 0.2455 / MITOS14_SCALE_FIX
    rows = []
    for frame, df in pts.groupby("frame"):
        path = root / frame
        group = "mitos14/" + Path(frame).stem[:6]
        mit = df[df.label == "mitosis"][["x", "y"]].to_numpy(float)
        neg = df[df.label == "not_mitosis"][["x", "y"]].to_numpy(float)
        rows += _rows(path, mit, "mitotic_figure", "confirmed", mpp, "mitos14", group)
        rows += _rows(path, neg, "other", "hard_negative", mpp, "mitos14", group)
        if others_per_frame:
            nuc = _away(find_nuclei(read_rgb(path), mpp), np.vstack([mit, neg]) if len(neg) else mit, 12 / mpp)
            rows += _rows(path, _pick(nuc, others_per_frame, rng), "other", "auto", mpp, "mitos14", group)
    # frames with no labelled point at all still hold 'other' nuclei
    return pd.DataFrame(rows)


def eoe_eosinophils(root: Path) -> tuple[list[Path], dict, pd.DataFrame]:
    """The EoE tiles and their eosinophils, each kept once across the 64 px tile overlaps.

    Returns the tile paths, each tile's slide origin (``"tiles/NAME" -> (x, y)``) and the labelled eosinophils (``Eos``, ``Papilla Eos``) with their
    slide position ``gx, gy`` and ``margin`` (distance to the tile border), one row per cell:
    the tile where it lies farthest from the border.
    """
    pts = pd.read_csv(root / "points.csv")
    tiles = sorted((root / "tiles").glob("*.jpg"))
    origin = {}
    for t in tiles:
        m = re.search(r"x(\d+)_y(\d+)", t.name)
        origin["tiles/" + t.name] = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
    pts = pts[pts["class"].isin(["Eos", "Papilla Eos"])].copy()
    pts["gx"] = [origin.get(t, (0, 0))[0] + x for t, x in zip(pts.tile, pts.x, strict=True)]
    pts["gy"] = [origin.get(t, (0, 0))[1] + y for t, y in zip(pts.tile, pts.y, strict=True)]
    pts["margin"] = np.minimum.reduce([pts.x, pts.y, 511 - pts.x, 511 - pts.y])
    pts = pts.sort_values("margin", ascending=False)
    key = (pts.gx / 4).round().astype(int).astype(str) + "," + (pts.gy / 4).round().astype(int).astype(str)
    return tiles, origin, pts[~key.duplicated()]


def read_eoe(root: Path, others_per_tile: int = 12, seed: int = 0, mpp: float = 0.5) -> pd.DataFrame:
    """Eosinophilic-oesophagitis tiles: eosinophils are 'granulocyte'; nuclei >= 8 um from any label are 'other'.

    Tiles overlap by 64 px: each labelled cell is kept once (in the tile where it is
    farthest from the border). Groups are 3 x 3-tile blocks of the slide.
    """
    rng = np.random.default_rng(seed)
    tiles, origin, pts = eoe_eosinophils(root)
    rows = []
    allpts = pd.read_csv(root / "points.csv")
    for t in tiles:
        rel = "tiles/" + t.name
        ox, oy = origin[rel]
        group = f"eoe/{ox // 1344}_{oy // 1344}"
        eos = pts[pts.tile == rel][["x", "y"]].to_numpy(float)
        rows += _rows(t, eos, "granulocyte", "confirmed", mpp, "eoe", group)
        if others_per_tile:
            taken = allpts[allpts.tile == rel][["x", "y"]].to_numpy(float)
            nuc = _away(find_nuclei(read_rgb(t), mpp), taken, 8 / mpp)
            nuc = nuc[(nuc.min(1) >= 16) & (nuc.max(1) <= 495)]
            rows += _rows(t, _pick(nuc, others_per_tile, rng), "other", "auto", mpp, "eoe", group)
    return pd.DataFrame(rows)


def label_centroids(label_file: Path) -> np.ndarray:
    from skimage.io import imread

    lab = np.asarray(imread(label_file))
    if lab.ndim == 3:
        lab = lab[..., 0]
    if lab.dtype == bool or len(np.unique(lab)) <= 2:  # a binary mask: its connected components
        lab, _ = ndi.label(lab > 0)
    idx = np.unique(lab)
    idx = idx[idx > 0]
    if idx.size == 0:
        return np.zeros((0, 2))
    c = np.asarray(ndi.center_of_mass(np.ones_like(lab), lab, idx))
    return c[:, ::-1]


def read_nuclei_sets(root: Path, per_image: int = 20, seed: int = 0) -> pd.DataFrame:
    """MoNuSeg, MICCAI 2015 and GBM40 nuclei (instance labels or masks): 'other' cells, one group per image."""
    rng = np.random.default_rng(seed)
    rows = []
    sets = {
        "monuseg": (root / "monuseg_train", lambda name: 0.25),
        "miccai15": (root / "miccai15", lambda name: 0.5 if int(re.sub(r"\D", "", name) or 0) <= 7 else 0.25),
        "gbm40": (root / "gbm40", lambda name: 0.5),
    }
    for src, (folder, mpp_of) in sets.items():
        if not folder.exists():
            continue
        for img in sorted((folder / "images").glob("*")):
            lab = folder / "labels" / (img.stem + ".png")
            if not lab.exists():
                lab = folder / "masks" / (img.stem + ".png")
            if not lab.exists():
                continue
            mpp = mpp_of(img.stem)
            h, w = read_rgb(img).shape[:2]
            c = label_centroids(lab)
            m = 16 * WORK_MPP / mpp
            c = c[(c[:, 0] >= m) & (c[:, 1] >= m) & (c[:, 0] <= w - m) & (c[:, 1] <= h - m)]
            rows += _rows(img, _pick(c, per_image, rng), "other", "confirmed", mpp, src, f"{src}/{img.stem}")
    return pd.DataFrame(rows)


def read_shared(data_dir, cache_dir=None, seed: int = 0) -> pd.DataFrame:
    """All labelled cells of the project's shared data sets (see ``../shared/data/README.md``).

    The nucleus search takes a minute; the table is cached in ``cache_dir``
    (default ``~/.cache/napari-mitosis``), keyed by the folder and this reader.
    """
    data_dir = Path(data_dir)
    parts = {
        "amibr": (data_dir / "mitosis" / "amibr_midog21", read_amibr),
        "mitos14": (data_dir / "mitosis" / "mitos_atypia14", read_mitos14),
        "eoe": (data_dir / "granulocytes" / "eoe_eosinophils", read_eoe),
        "nuclei": (data_dir / "nuclei", read_nuclei_sets),
    }
    present = {k: v for k, v in parts.items() if v[0].exists()}
    if not present:
        raise CellDataError(
            f"{data_dir}: none of the shared cell sets (mitosis/amibr_midog21, mitosis/mitos_atypia14, "
            "granulocytes/eoe_eosinophils, nuclei/) is there; pass the shared data folder or an export folder"
        )
    cache_dir = Path(cache_dir or Path.home() / ".cache" / "napari-mitosis")
    key = hashlib.sha1(f"{data_dir.resolve()}|{sorted(present)}|{seed}|v4|{MITOS14_SCALE_FIX}".encode()).hexdigest()[:12]
    cache = cache_dir / f"cells-{key}.csv"
    if cache.exists():
        return load_table(cache)
    frames = [fn(folder, seed=seed) for folder, fn in present.values()]
    table = normalise_table(pd.concat(frames, ignore_index=True))
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        table.to_csv(cache, index=False)
    except OSError:
        pass
    return table


# ------------------------------------------------------- the export format
def read_export(folder, default_mpp: float | None = None) -> pd.DataFrame:
    """Read a retraining export: ``FOLDER/cells.csv`` plus the images it names (see docs/classifier.md).

    Required columns: ``image`` (relative to the folder), ``class``, ``mpp``
    (may be omitted when ``default_mpp`` is given). Optional: ``x``, ``y``
    (empty = the image centre, i.e. a crop centred on the cell), ``status``
    (rows with ``rejected`` or ``unreviewed`` are skipped), ``source``, ``group``
    (slide; defaults to the image), ``box``.
    """
    folder = Path(folder)
    table = folder / EXPORT_TABLE
    if not folder.is_dir():
        raise CellDataError(f"{folder}: no such folder")
    if not table.exists():
        raise CellDataError(f"{folder}: has no {EXPORT_TABLE}; an export folder holds {EXPORT_TABLE} and the images it names")
    df = pd.read_csv(table, dtype={"group": str, "source": str, "status": str, "box": str})
    if df.empty:
        raise CellDataError(f"{table}: holds no cells")
    missing = [c for c in EXPORT_REQUIRED if c not in df.columns and not (c == "mpp" and default_mpp)]
    if missing:
        raise CellDataError(f"{table}: missing column(s) {', '.join(missing)}; required: {', '.join(EXPORT_REQUIRED)}")
    if "mpp" not in df.columns:
        df["mpp"] = default_mpp
    df["mpp"] = pd.to_numeric(df["mpp"], errors="coerce")
    if default_mpp:
        df["mpp"] = df["mpp"].fillna(default_mpp)
    bad = df["mpp"].isna() | ~(df["mpp"] > 0)
    if bad.any():
        raise CellDataError(f"{table}: row {int(np.argmax(bad.to_numpy())) + 2} has no valid pixel size (mpp, um/px)")
    df["status"] = df["status"].fillna("confirmed") if "status" in df.columns else "confirmed"
    df = df[~df["status"].isin(["rejected", "unreviewed"])].copy()
    df["image"] = [str(folder / p) for p in df["image"]]
    for c in ("x", "y"):
        if c not in df.columns:
            df[c] = np.nan
    for i, r in enumerate(df.itertuples()):
        p = Path(r.image)
        if not p.exists():
            raise CellDataError(f"{table}: image {p.name} (row {i + 2}) does not exist")
        if pd.isna(r.x) or pd.isna(r.y):
            h, w = read_rgb(p).shape[:2]
            df.loc[r.Index, "x"], df.loc[r.Index, "y"] = (w - 1) / 2, (h - 1) / 2
    df["source"] = df["source"].fillna("export") if "source" in df.columns else "export"
    df["group"] = df["group"].fillna(df["image"]) if "group" in df.columns else df["image"]
    return normalise_table(df)


def read_cells(data, default_mpp: float | None = None, **kw) -> pd.DataFrame:
    """A cell table from a folder: an export (has ``cells.csv``) or the shared data folder."""
    data = Path(data)
    if not data.exists():
        raise CellDataError(f"{data}: no such folder")
    if (data / EXPORT_TABLE).exists():
        return read_export(data, default_mpp)
    return read_shared(data, **kw)


def normalise_table(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    for c in COLUMNS:
        if c not in df.columns:
            df[c] = ""
    df["box"] = df["box"].fillna("").astype(str)
    df["group"] = df["group"].astype(str)
    df["source"] = df["source"].astype(str)
    df["x"] = df["x"].astype(float)
    df["y"] = df["y"].astype(float)
    return df[COLUMNS].reset_index(drop=True)


def load_table(path) -> pd.DataFrame:
    return normalise_table(pd.read_csv(path, dtype={"group": str, "source": str, "box": str}, keep_default_na=False,
                                       na_values={"x": [""], "y": [""], "mpp": [""]}))


# ------------------------------------------------------------------ splits
def group_folds(table: pd.DataFrame, k: int = 5, seed: int = 0) -> np.ndarray:
    """Fold index (0..k-1) per row: whole groups (slides, frame groups) per fold, balanced within each source.

    Within each source the groups are dealt, largest first, to the fold that
    has the fewest of that source's cells, so every fold holds every source
    that has at least ``k`` groups.
    """
    rng = np.random.default_rng(seed)
    fold_of_group = {}
    for _, df in table.groupby("source"):
        sizes = df.groupby("group").size()
        order = sizes.sample(frac=1, random_state=int(rng.integers(1 << 31))).sort_values(ascending=False, kind="stable")
        load = np.zeros(k)
        for g, n in order.items():
            if g in fold_of_group:
                continue
            f = int(np.argmin(load + rng.random(k) * 1e-3))
            fold_of_group[g] = f
            load[f] += n
    return table["group"].map(fold_of_group).to_numpy(int)


# ------------------------------------------------------------ augmentation
@dataclass
class Augment:
    """Augmentation settings (all on by default for training)."""

    rotate: bool = True
    flip: bool = True
    scale: float = 0.2  # log-uniform zoom within 1/(1+s) .. (1+s)
    stain: float = 0.15  # HED scale jitter
    blur: float = 0.3  # probability of a gaussian blur (sigma 0.3..1.2 px)
    brightness: float = 0.08
    crop_window: float = 0.5  # probability to emulate a 128 px source crop (mirror-padded outside) on large images

    @classmethod
    def off(cls):
        return cls(rotate=False, flip=False, scale=0.0, stain=0.0, blur=0.0, brightness=0.0, crop_window=0.0)


def render_input(
    image: np.ndarray,
    x: float,
    y: float,
    mpp: float,
    delta=(0.0, 0.0),
    angle: float = 0.0,
    zoom: float = 1.0,
    flip: bool = False,
    box=None,
    size: int = INPUT_SIZE,
    work_mpp: float = WORK_MPP,
) -> np.ndarray:
    """Sample a ``size`` x ``size`` input at ``work_mpp`` with the cell (x, y) at ``centre - delta``.

    One bilinear resampling does the rescaling to the working pixel size,
    rotation by ``angle`` (radians), ``zoom`` and the flip; outside ``box``
    (``x0, y0, x1, y1``, default the whole image) pixels are mirrored.
    Returns float32 RGB 0..255.
    """
    if box is not None:
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        image = image[max(y0, 0) : y1, max(x0, 0) : x1]
        x, y = x - max(x0, 0), y - max(y0, 0)
    f = work_mpp / mpp / zoom  # source pixels per output pixel
    c = (size - 1) / 2
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    rx = xx - (c - delta[0])
    ry = yy - (c - delta[1])
    if flip:
        rx = -rx
    ca, sa = np.cos(angle), np.sin(angle)
    sx = x + f * (ca * rx - sa * ry)
    sy = y + f * (sa * rx + ca * ry)
    # read only the neighbourhood needed (plus a margin), blur it when shrinking
    reach = f * size * 0.75 + 4
    ys0, ys1 = max(int(y - reach), 0), min(int(y + reach) + 1, image.shape[0])
    xs0, xs1 = max(int(x - reach), 0), min(int(x + reach) + 1, image.shape[1])
    if ys1 <= ys0 or xs1 <= xs0:
        raise CellDataError(f"cell at ({x:.0f}, {y:.0f}) lies outside the image of {image.shape[1]} x {image.shape[0]} px")
    sub = image[ys0:ys1, xs0:xs1].astype(np.float32)
    if f > 1.3:
        sub = ndi.gaussian_filter(sub, (0.45 * f, 0.45 * f, 0))
    coords = [sy - ys0, sx - xs0]
    out = np.empty((size, size, 3), np.float32)
    for ch in range(3):
        out[..., ch] = ndi.map_coordinates(sub[..., ch], coords, order=1, mode="mirror")
    return out


def parse_box(box) -> tuple | None:
    if box is None or (isinstance(box, float) and np.isnan(box)) or str(box).strip() == "":
        return None
    return tuple(float(v) for v in str(box).split(","))


class CellSampler:
    """Class-balanced, source-aware batches of augmented 128 x 128 inputs with their ground truth.

    Each draw picks a class uniformly, then a source uniformly among those
    that have the class, then a cell of that class and source (hard negatives
    make up at least ``hard_fraction`` of a source's 'other' draws when it has
    any). So no source can stand in for a class more than the data forces.

    Parameters
    ----------
    table : DataFrame
        A cell table (see the module docstring).
    classes : sequence of str
        Class names in output order; rows of other classes are dropped.
    max_offset : float
        Largest ``|Delta|`` in working pixels (32 keeps the 64 px cell area inside
        the 128 px input, as in section 4.1).
    """

    def __init__(self, table: pd.DataFrame, classes=CLASSES, augment: Augment | None = None, max_offset: float = 32.0,
                 hard_fraction: float = 0.3, seed: int = 0):
        self.classes = list(classes)
        table = table[table["class"].isin(self.classes)].reset_index(drop=True)
        if table.empty:
            raise CellDataError(f"no cells of the classes {self.classes}")
        self.table = table
        self.augment = augment or Augment()
        self.max_offset = max_offset
        self.hard_fraction = hard_fraction
        self.rng = np.random.default_rng(seed)
        self.index = {}
        for (cls, src), df in table.groupby(["class", "source"]):
            hard = df.index[df["status"] == "hard_negative"].to_numpy()
            rest = df.index[df["status"] != "hard_negative"].to_numpy()
            self.index.setdefault(cls, {})[src] = (hard, rest)
        self.present = [c for c in self.classes if c in self.index]

    def counts(self) -> pd.DataFrame:
        return self.table.groupby(["source", "class"]).size().unstack(fill_value=0)

    def draw(self, n: int) -> np.ndarray:
        rng, out = self.rng, []
        for _ in range(n):
            cls = self.present[rng.integers(len(self.present))]
            srcs = list(self.index[cls])
            hard, rest = self.index[cls][srcs[rng.integers(len(srcs))]]
            pool = hard if len(hard) and (not len(rest) or rng.random() < self.hard_fraction) else rest
            out.append(pool[rng.integers(len(pool))])
        return np.asarray(out, int)

    def make(self, rows, offset: bool = True, augment: bool = True, rng=None):
        """Inputs for table rows: (x float tensor N x 3 x 128 x 128 in 0..1, labels, theta, delta)."""
        import torch

        from ..models.gstn import gt_theta

        rng = rng or self.rng
        aug = self.augment if augment else Augment.off()
        xs, ys, deltas = [], [], []
        for i in rows:
            r = self.table.loc[int(i)]
            img = read_rgb(r.image)
            box = parse_box(r.box)
            if aug.crop_window and box is None and rng.random() < aug.crop_window:
                # the AMi-Br crops are 128 px windows mirrored outside: show other sources the same way
                half = INPUT_SIZE / 2 * WORK_MPP / r.mpp
                cx, cy = r.x + rng.uniform(-0.35, 0.35) * 2 * half, r.y + rng.uniform(-0.35, 0.35) * 2 * half
                box = (cx - half, cy - half, cx + half, cy + half)
            d = rng.uniform(-self.max_offset, self.max_offset, 2) if offset else np.zeros(2)
            zoom = float(np.exp(rng.uniform(-np.log1p(aug.scale), np.log1p(aug.scale)))) if aug.scale else 1.0
            angle = float(rng.uniform(0, 2 * np.pi)) if aug.rotate else 0.0
            flip = bool(aug.flip and rng.random() < 0.5)
            a = render_input(img, r.x, r.y, r.mpp, delta=d, angle=angle, zoom=zoom, flip=flip, box=box)
            if aug.stain:
                a = hed_jitter(a, rng, aug.stain, 0.03)
            if aug.blur and rng.random() < aug.blur:
                a = ndi.gaussian_filter(a, (rng.uniform(0.3, 1.2),) * 2 + (0,))
            if aug.brightness:
                a = a * (1 + rng.uniform(-aug.brightness, aug.brightness)) + rng.uniform(-8, 8)
            xs.append(np.clip(a, 0, 255))
            ys.append(self.classes.index(r["class"]))
            deltas.append(d)
        x = torch.from_numpy(np.stack(xs).transpose(0, 3, 1, 2) / 255.0).float()
        deltas = np.asarray(deltas, np.float32).reshape(-1, 2)
        return x, torch.as_tensor(ys), gt_theta(deltas[:, 0], deltas[:, 1]), deltas

    def batch(self, n: int, offset: bool = True, augment: bool = True):
        return self.make(self.draw(n), offset=offset, augment=augment)


def summary(table: pd.DataFrame) -> str:
    """A source x class count table as text."""
    return table.groupby(["source", "class"]).size().unstack(fill_value=0).to_string()


def json_default(o):
    """``json.dumps(..., default=json_default)``: numpy scalars and arrays as plain JSON."""
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def save_json(path, obj) -> None:
    Path(path).write_text(json.dumps(obj, indent=2, default=json_default))


__all__ = [
    "CLASSES", "Augment", "CellDataError", "CellSampler", "group_folds", "read_cells", "read_export",
    "read_shared", "render_input", "write_export", "find_nuclei",
]
