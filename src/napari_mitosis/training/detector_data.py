"""Training and validation data for the two-stage mitosis / granulocyte detector
(cell-dense -> cell-effnet, see docs/detection.md).

Every image of ../shared/data is brought to the two working resolutions once and cached
(``build_cache``, about a minute; the cache is a few hundred MB in a git-ignored folder):

- DENSE_MPP (0.5 um/px): whole images (MITOS frames, EoE tiles, nucleus-set images) and the
  128 px positive crops (64 px here), each with its labelled points per class;
- the second stage reads patches at CLS_MPP around candidate points from the same images
  resampled to CLS_MPP.

Domains (for leave-one-domain-out): amibr_<scanner>, atnorm_md, atnorm_br, mitos14, eoe,
nuclei (negatives only).
"""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from ..models.dense_net import DENSE_MPP
from .cell_data import MITOS14_SCALE_FIX, midog_scanner

#: cell-effnet's input pixel size (um/px): 64 px are 24 um, a mitotic figure and its surroundings.
CLS_MPP = 0.375
MITOS_MPP = 0.2455 * MITOS14_SCALE_FIX  # the data README's scale caveat (nuclei look 1.5x larger)
CROP_MPP = 0.25
ROOT = Path(__file__).resolve().parents[3]
DEFAULT_DATA = ROOT.parent / "shared" / "data"
DEFAULT_CACHE = ROOT / "benchmarks" / "data" / "detector"


def read_rgb(path) -> np.ndarray:
    """An image file as RGB uint8 (OpenCV's decoder: the shared sets are JPEG and PNG)."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise OSError(f"cannot read {path}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def rescale(img: np.ndarray, src_mpp: float, dst_mpp: float) -> np.ndarray:
    """``img`` resampled from ``src_mpp`` to ``dst_mpp`` (area averaging when shrinking).

    >>> rescale(np.zeros((100, 60, 3), np.uint8), 0.25, 0.5).shape
    (50, 30, 3)
    """
    f = src_mpp / dst_mpp
    if abs(f - 1) < 1e-3:
        return img
    h, w = img.shape[:2]
    size = (max(1, round(w * f)), max(1, round(h * f)))
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)


def image_records(data: Path = DEFAULT_DATA) -> list[dict]:
    """One record per source image: path, mpp, domain, group, kind, points per label."""
    data = Path(data)
    recs = []
    m = data / "mitosis"
    lab = pd.read_csv(m / "amibr_midog21" / "labels.csv")
    for r in lab.itertuples():
        recs.append(dict(path=m / "amibr_midog21" / r.file, mpp=CROP_MPP, domain="amibr_" + midog_scanner(r.slide),
                         group="amibr/" + r.slide, kind="crop", mit=[(63.5, 63.5)], gran=[], neg=[]))
    for name in ("atnorm_md", "atnorm_br"):
        lab = pd.read_csv(m / name / "labels.csv")
        for i, r in enumerate(lab.itertuples()):
            recs.append(dict(path=m / name / r.file, mpp=CROP_MPP, domain=name, group=f"{name}/{i % 10}",
                             kind="crop", mit=[(63.5, 63.5)], gran=[], neg=[]))
    pts = pd.read_csv(m / "mitos_atypia14" / "points.csv")
    for f in sorted((m / "mitos_atypia14" / "frames").glob("*.jpg")):
        df = pts[pts.frame == "frames/" + f.name]
        recs.append(dict(path=f, mpp=MITOS_MPP, domain="mitos14", group="mitos14/" + f.stem[:6], kind="frame",
                         mit=df[df.label == "mitosis"][["x", "y"]].to_numpy(float).tolist(), gran=[],
                         neg=df[df.label == "not_mitosis"][["x", "y"]].to_numpy(float).tolist()))
    eoe = data / "granulocytes" / "eoe_eosinophils"
    pts = pd.read_csv(eoe / "points.csv")
    for t in sorted((eoe / "tiles").glob("*.jpg")):
        df = pts[pts.tile == "tiles/" + t.name]
        mm = re.search(r"x(\d+)_y(\d+)", t.name)
        ox, oy = (int(mm.group(1)), int(mm.group(2))) if mm else (0, 0)
        recs.append(dict(path=t, mpp=0.5, domain="eoe", group=f"eoe/{ox // 1344}_{oy // 1344}", kind="frame", mit=[],
                         gran=df[df["class"].isin(["Eos", "Papilla Eos"])][["x", "y"]].to_numpy(float).tolist(),
                         neg=[], ignore=df[df["class"] == "RBC Cluster"][["x", "y"]].to_numpy(float).tolist()))
    nuc = data / "nuclei"
    sets = {"monuseg_train": lambda s: 0.25, "miccai15": lambda s: 0.5 if int(re.sub(r"\D", "", s) or 0) <= 7 else 0.25,
            "gbm40": lambda s: 0.5}
    for name, mpp_of in sets.items():
        for img in sorted((nuc / name / "images").glob("*")):
            recs.append(dict(path=img, mpp=mpp_of(img.stem), domain="nuclei", group=f"{name}/{img.stem}", kind="frame",
                             mit=[], gran=[], neg=[], nuclei_set=name))
    return recs


def load_at(rec: dict, mpp: float):
    """The record's image at ``mpp`` and its points scaled alike."""
    img = read_rgb(rec["path"])
    f = rec["mpp"] / mpp
    img = rescale(img, rec["mpp"], mpp)
    sc = lambda p: (np.asarray(p, float).reshape(-1, 2) + 0.5) * f - 0.5  # noqa: E731
    return img, {k: sc(rec.get(k, [])) for k in ("mit", "gran", "neg", "ignore")}


def build_cache(data: Path = DEFAULT_DATA, out: Path = DEFAULT_CACHE, log=print) -> None:
    """Write ``out/dense.npz`` (images at DENSE_MPP) and ``out/cls.npz`` (at CLS_MPP)."""
    recs = image_records(data)
    out.mkdir(parents=True, exist_ok=True)
    for mpp, name in ((DENSE_MPP, "dense"), (CLS_MPP, "cls")):
        imgs, meta = [], []
        for i, r in enumerate(recs):
            img, pts = load_at(r, mpp)
            imgs.append(img)
            meta.append(dict(domain=r["domain"], group=r["group"], kind=r["kind"], path=str(r["path"]),
                             **{k: v.tolist() for k, v in pts.items()}))
            if i % 1000 == 0:
                log(f"{name}: {i}/{len(recs)}")
        arr = np.empty(len(imgs), object)
        arr[:] = imgs
        np.save(out / f"{name}_images.npy", arr, allow_pickle=True)
        pd.DataFrame(meta).to_json(out / f"{name}_meta.json")
    log("done")


def load_cache(out: Path, name: str):
    """Images and their table (domain, group, kind, path and points per label) at one resolution:
    ``name`` "dense" (DENSE_MPP) or "cls" (CLS_MPP)."""
    imgs = np.load(Path(out) / f"{name}_images.npy", allow_pickle=True)
    meta = pd.read_json(Path(out) / f"{name}_meta.json")
    for k in ("mit", "gran", "neg", "ignore"):
        meta[k] = [np.asarray(v if isinstance(v, list) else [], float).reshape(-1, 2) for v in meta[k]]
    return list(imgs), meta


