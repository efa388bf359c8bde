"""Training and evaluation of the unsupervised nucleus typer (InfoGAN, issue #9).

Paper: *Neural stain normalization and unsupervised classification of cell
nuclei in histopathological breast cancer images*, sections 2.3, 3.3, 4.2.

1. **Nuclei** (:func:`extract_image`): an image is read at 0.5 um/px,
   stain-normalised (Reinhard to a fixed reference by default, the
   normaliser is stored with the model), its nuclei are segmented with the
   project's U-Net (``nuclei-unet``) and every nucleus whose window lies inside
   the image is cut out centred on its centroid. We store 58 x 58 px so a
   rotation of any angle still fills the paper's 40 x 40 input (20 x 20 um).
2. **Training** (:func:`train_gan`): WGAN-GP critic ``D_D`` plus the
   mutual-information loss through ``D_Q``, learning rates as in the paper
   (``D_Q`` 2e-4, ``G`` 1e-4, ``D``/``D_D`` 1e-4), Adam (0.5, 0.9), random
   rotations and flips of the real nuclei. No labels are used.
3. **Evaluation** (:func:`evaluate_clusters`): clusters are matched to
   labelled classes with the Hungarian algorithm; per-class precision,
   sensitivity, F1, accuracy and the confusion matrix, for the InfoGAN's
   ``D_Q`` and for the two k-means baselines (raw pixel vectors, and features
   of the project's own nuclei U-Net encoder in place of the paper's ImageNet
   ResNet-152, which cannot be downloaded here).

Labelled cells (:func:`shared_cells`) come from ``../shared/data``; see
``docs/typing.md`` for exactly which.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..pipeline.nucleus_types import PATCH, STORE, WORK_MPP, TypingError, sample_patches

NAME = "nuclei-infogan"
#: Fewest nuclei a model can be trained on, and per type.
MIN_NUCLEI = 200
MIN_PER_TYPE = 50
MAX_TYPES = 10
#: Labelled classes of the evaluation (K >= 4) and their 3-class grouping (K = 3, as the paper's 3 classes).
EVAL_CLASSES = ("mitotic_figure", "look_alike", "eosinophil", "other_nucleus")
EVAL_CLASSES_3 = ("mitotic_figure", "eosinophil", "other_nucleus")
#: MITOS-ATYPIA-14 nuclei look ~1.5x larger than nominal (data README; same correction as cell_data).
MITOS14_MPP = 0.2455 / 1.5
#: A labelled point is snapped to the nearest segmented nucleus centroid within this (um).
SNAP_UM = 4.0
#: Segmented nuclei at least this far (um) from every labelled point count as 'other nuclei'.
AWAY_UM = 12.0
#: Default stain reference (a breast TCGA image of MoNuSeg) relative to the data folder.
REFERENCE = "nuclei/monuseg_train/images/TCGA-A7-A13F-01Z-00-DX1.jpg"


# ================================================================== nuclei
def _norm_for(method: str, reference, device="cpu"):
    if method == "none":
        return None
    from ..pipeline.stain import make_normalizer, read_reference

    norm = make_normalizer(method, device=device)
    if reference is not None:
        norm.fit(*read_reference(reference))
    elif not norm.fitted:
        raise TypingError(f"stain normalisation {method!r} needs a reference image (--norm-reference)")
    return norm


def extract_image(rgb: np.ndarray, mpp: float, norm=None, points=None, snap_um: float = SNAP_UM):
    """Segment the nuclei of one image and cut them out (normalised, 58 x 58 at 0.5 um/px).

    Parameters
    ----------
    rgb : (H, W, 3) uint8
    mpp : float
        The image's pixel size (um/px).
    norm : StainNormalizer, optional
        Fitted normaliser (the image's own statistics are used as the source).
    points : (M, 2) array, optional
        Labelled positions (x, y, image px): each is snapped to the nearest
        segmented nucleus within ``snap_um``, or kept as it is.

    Returns
    -------
    dict
        ``patches`` (N, 58, 58, 3) of the segmented nuclei whose 40 x 40
        window lies inside the image, ``xy`` their centroids (image px),
        ``area_um2``; with ``points``: ``point_patches``, ``point_xy``,
        ``snapped`` (bool) and ``inside`` (the window lies inside the image).
    """
    from ..pipeline.nuclei import segment_image

    h, w = rgb.shape[:2]
    _, table = segment_image(rgb, mpp, device="cpu")
    f = WORK_MPP / mpp  # image px per working px
    work_h, work_w = round(h / f), round(w / f)
    from skimage.transform import resize

    work = resize(rgb, (work_h, work_w), order=1, anti_aliasing=f > 1.3, preserve_range=True).astype(np.uint8)
    if norm is not None:
        try:
            work = norm.transform(work)
        except ValueError:
            pass
    sx, sy = work_w / w, work_h / h

    def to_work(x, y):
        return (np.asarray(x) + 0.5) * sx - 0.5, (np.asarray(y) + 0.5) * sy - 0.5

    def inside(xw, yw, half):
        return (xw - half >= -0.5) & (yw - half >= -0.5) & (xw + half <= work_w - 0.5) & (yw + half <= work_h - 0.5)

    xy = table[["x", "y"]].to_numpy(float)
    xw, yw = to_work(xy[:, 0], xy[:, 1])
    ok = inside(xw, yw, PATCH / 2)
    out = {
        "patches": sample_patches(work, xw[ok], yw[ok], STORE),
        "xy": xy[ok],
        "area_um2": table["area_um2"].to_numpy(float)[ok],
        "all_xy": xy,
    }
    if points is not None:
        pts = np.asarray(points, float).reshape(-1, 2)
        snapped = np.zeros(len(pts), bool)
        where = pts.copy()
        if len(xy) and len(pts):
            d = np.hypot(pts[:, None, 0] - xy[None, :, 0], pts[:, None, 1] - xy[None, :, 1])
            j = d.argmin(1)
            snapped = d[np.arange(len(pts)), j] <= snap_um / mpp
            where[snapped] = xy[j[snapped]]
        pxw, pyw = to_work(where[:, 0], where[:, 1])
        out.update(
            point_patches=sample_patches(work, pxw, pyw, STORE),
            point_xy=where,
            snapped=snapped,
            inside=inside(pxw, pyw, PATCH / 2),
        )
    return out


def _read(path) -> np.ndarray:
    from skimage.io import imread

    from ..core.stain import as_rgb

    return as_rgb(np.asarray(imread(str(path))), str(path))


def _away(xy, taken, min_px):
    if len(xy) == 0 or len(taken) == 0:
        return np.ones(len(xy), bool)
    d = np.hypot(xy[:, None, 0] - taken[None, :, 0], xy[:, None, 1] - taken[None, :, 1]).min(1)
    return d >= min_px


def _take(n_have, n, rng):
    idx = np.arange(n_have)
    return idx if n_have <= n else np.sort(rng.choice(n_have, n, replace=False))


def shared_cells(
    data_dir,
    norm=None,
    pool_per_image: int = 80,
    amibr_max: int = 250,
    others: dict | None = None,
    seed: int = 0,
    log=print,
):
    """Unlabelled training nuclei and labelled evaluation cells from ``../shared/data``.

    Returns ``(pool, cells)``: ``pool`` uint8 (N, 58, 58, 3) of segmented
    nuclei from every image of every set (at most ``pool_per_image`` each,
    plus the labelled cells: the paper also trained on the nuclei it
    evaluated); ``cells`` a dict with ``patches``, ``label`` (names of
    :data:`EVAL_CLASSES`), ``source``, ``image``, ``x``, ``y``, ``snapped``.
    """
    data_dir = Path(data_dir)
    rng = np.random.default_rng(seed)
    others = others or {"mitos14": 100, "eoe": 60, "amibr": 50, "monuseg": 90}
    pool, cells = [], {k: [] for k in ("patches", "label", "source", "image", "x", "y", "snapped")}

    def add_cells(res, sel, label, source, image):
        sel = np.asarray(sel, int)
        sel = sel[res["inside"][sel]] if len(sel) else sel
        cells["patches"].append(res["point_patches"][sel])
        n = len(sel)
        cells["label"] += [label] * n
        cells["source"] += [source] * n
        cells["image"] += [image] * n
        cells["x"] += list(res["point_xy"][sel, 0])
        cells["y"] += list(res["point_xy"][sel, 1])
        cells["snapped"] += list(res["snapped"][sel])

    def add_pool(res):
        pool.append(res["patches"][_take(len(res["patches"]), pool_per_image, rng)])

    t0 = time.time()
    # MITOS-ATYPIA-14: mitoses, look-alikes, other nuclei far from both
    root = data_dir / "mitosis" / "mitos_atypia14"
    if root.exists():
        pts = pd.read_csv(root / "points.csv")
        frames = sorted(pts.frame.unique()) if len(pts) else []
        frames = sorted(set(frames) | {"frames/" + p.name for p in (root / "frames").glob("*.jpg")})
        other_rows = []
        for i, frame in enumerate(frames):
            df = pts[pts.frame == frame]
            lab = df[["x", "y"]].to_numpy(float)
            res = extract_image(_read(root / frame), MITOS14_MPP, norm, points=lab)
            add_pool(res)
            labels = df.label.to_numpy()
            add_cells(res, np.flatnonzero(labels == "mitosis"), "mitotic_figure", "mitos14", frame)
            add_cells(res, np.flatnonzero(labels == "not_mitosis"), "look_alike", "mitos14", frame)
            far = np.flatnonzero(_away(res["xy"], lab, AWAY_UM / MITOS14_MPP))
            other_rows += [(frame, res["patches"][j], res["xy"][j]) for j in far]
            if i % 16 == 0:
                log(f"  mitos14 {i + 1}/{len(frames)} ({time.time() - t0:.0f}s)")
        _add_others(cells, other_rows, others["mitos14"], "mitos14", rng)
    # AMi-Br: the crop centre is a mitotic figure
    root = data_dir / "mitosis" / "amibr_midog21"
    if root.exists():
        lab = pd.read_csv(root / "labels.csv")
        pick = lab.iloc[_take(len(lab), amibr_max, rng)]
        other_rows = []
        for i, r in enumerate(pick.itertuples()):
            res = extract_image(_read(root / r.file), 0.25, norm, points=[(63.5, 63.5)])
            add_pool(res)
            add_cells(res, [0], "mitotic_figure", "amibr", r.file)
            far = np.flatnonzero(_away(res["xy"], res["point_xy"], 10 / 0.25))
            other_rows += [(r.file, res["patches"][j], res["xy"][j]) for j in far]
            if i % 100 == 0:
                log(f"  amibr {i + 1}/{len(pick)} ({time.time() - t0:.0f}s)")
        _add_others(cells, other_rows, others["amibr"], "amibr", rng)
    # EoE: eosinophils (each kept once across overlapping tiles), other nuclei far from any label
    root = data_dir / "granulocytes" / "eoe_eosinophils"
    if root.exists():
        from .cell_data import eoe_eosinophils

        tiles, _, eos = eoe_eosinophils(root)
        pts = pd.read_csv(root / "points.csv")
        other_rows = []
        for i, t in enumerate(tiles):
            rel = "tiles/" + t.name
            mine = eos[eos.tile == rel][["x", "y"]].to_numpy(float)
            res = extract_image(_read(t), 0.5, norm, points=mine)
            add_pool(res)
            add_cells(res, np.arange(len(mine)), "eosinophil", "eoe", rel)
            taken = pts[pts.tile == rel][["x", "y"]].to_numpy(float)
            far = np.flatnonzero(_away(res["xy"], taken, AWAY_UM / 0.5))
            other_rows += [(rel, res["patches"][j], res["xy"][j]) for j in far]
            if i % 40 == 0:
                log(f"  eoe {i + 1}/{len(tiles)} ({time.time() - t0:.0f}s)")
        _add_others(cells, other_rows, others["eoe"], "eoe", rng)
    # Nuclei sets: unlabelled pool; MoNuSeg expert-labelled nuclei are 'other nuclei'
    for name, mpp_of in (
        ("monuseg_train", lambda s: 0.25),
        ("miccai15", lambda s: 0.5 if int("".join(c for c in s if c.isdigit()) or 0) <= 7 else 0.25),
        ("gbm40", lambda s: 0.5),
    ):
        folder = data_dir / "nuclei" / name
        if not folder.exists():
            continue
        other_rows = []
        for img in sorted((folder / "images").glob("*")):
            mpp = mpp_of(img.stem)
            lab_file = folder / "labels" / (img.stem + ".png")
            expert = None
            if name == "monuseg_train" and lab_file.exists():
                from .cell_data import label_centroids

                expert = label_centroids(lab_file)
            res = extract_image(_read(img), mpp, norm, points=expert)
            add_pool(res)
            if expert is not None:
                ok = np.flatnonzero(res["inside"])
                other_rows += [(img.name, res["point_patches"][j], res["point_xy"][j]) for j in ok]
        log(f"  {name} done ({time.time() - t0:.0f}s)")
        if name == "monuseg_train":
            _add_others(cells, other_rows, others["monuseg"], "monuseg", rng, snapped=True)
    if not pool:
        raise TypingError(f"{data_dir}: none of the shared data sets is there (see ../shared/data/README.md)")
    cells["patches"] = np.concatenate(cells["patches"]) if cells["patches"] else np.zeros((0, STORE, STORE, 3), np.uint8)
    pool = np.concatenate(pool + [cells["patches"]])
    for k in ("label", "source", "image", "snapped"):
        cells[k] = np.asarray(cells[k])
    cells["x"], cells["y"] = np.asarray(cells["x"], float), np.asarray(cells["y"], float)
    return pool, cells


def _add_others(cells, rows, n, source, rng, snapped=True):
    if not rows:
        return
    sel = _take(len(rows), n, rng)
    cells["patches"].append(np.stack([rows[i][1] for i in sel]))
    cells["label"] += ["other_nucleus"] * len(sel)
    cells["source"] += [source] * len(sel)
    cells["image"] += [rows[i][0] for i in sel]
    cells["x"] += [float(rows[i][2][0]) for i in sel]
    cells["y"] += [float(rows[i][2][1]) for i in sel]
    cells["snapped"] += [snapped] * len(sel)


def slide_nuclei(paths, norm=None, mpp=None, tiles_per_slide: int = 8, tile_um: float = 256.0, per_tile: int = 400,
                 seed: int = 0, log=print) -> np.ndarray:
    """Unlabelled nuclei from any slides or images: random tissue tiles, segmented and cut out."""
    from ..io import open_slide
    from ..core.screening import is_background

    rng = np.random.default_rng(seed)
    out = []
    for path in paths:
        with open_slide(path, mpp=mpp) as slide:
            if slide.mpp is None:
                raise TypingError(f"{path}: the pixel size is unknown; pass --mpp")
            H, W = slide.shape
            side = round(tile_um / slide.mpp)
            if H <= side * 2 and W <= side * 2:
                boxes = [(0, 0, W, H)]
            else:
                boxes = [(int(rng.integers(0, max(W - side, 1))), int(rng.integers(0, max(H - side, 1))), min(side, W), min(side, H))
                         for _ in range(tiles_per_slide * 4)]
            n_ok = 0
            for x, y, w, h in boxes:
                if n_ok >= tiles_per_slide:
                    break
                rgb = slide.read_region(0, x, y, w, h)
                if is_background(rgb):
                    continue
                res = extract_image(rgb, slide.mpp, norm)
                out.append(res["patches"][_take(len(res["patches"]), per_tile, rng)])
                n_ok += 1
            log(f"  {Path(path).name}: {n_ok} tiles, {sum(len(o) for o in out)} nuclei so far")
    return np.concatenate(out) if out else np.zeros((0, STORE, STORE, 3), np.uint8)


def cached_shared(data_dir, norm_method: str = "reinhard", reference=None, cache_dir=None, seed: int = 0, log=print):
    """:func:`shared_cells` with a cache in ``~/.cache/napari-mitosis`` (extraction takes minutes).

    Returns ``(pool, cells, norm)``.
    """
    data_dir = Path(data_dir)
    reference = reference or (data_dir / REFERENCE)
    norm = _norm_for(norm_method, reference)
    cache_dir = Path(cache_dir or Path.home() / ".cache" / "napari-mitosis")
    key = hashlib.sha1(f"{data_dir.resolve()}|{norm_method}|{Path(reference).resolve()}|{seed}|typing-v1".encode()).hexdigest()[:12]
    cache = cache_dir / f"typing-{key}.npz"
    if cache.exists():
        z = np.load(cache, allow_pickle=False)
        cells = {k[5:]: z[k] for k in z.files if k.startswith("cell_")}
        return z["pool"], cells, norm
    log(f"cutting out nuclei of {data_dir} (cached in {cache})")
    pool, cells = shared_cells(data_dir, norm, seed=seed, log=log)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".part.npz")
    np.savez(tmp, pool=pool, **{f"cell_{k}": v for k, v in cells.items()})
    tmp.replace(cache)
    return pool, cells, norm


# ================================================================ training
@dataclass
class TrainConfig:
    out: str
    k: int = 3
    minutes: float = 15.0
    batch: int = 32
    n_critic: int = 1
    lr_g: float = 1e-4
    lr_d: float = 1e-4
    lr_q: float = 2e-4
    gp: float = 10.0
    info: float = 1.0
    q_body: bool = True  # the MI loss also trains the shared body (paper); False: only the D_Q head
    width: int = 16
    n_noise: int = 16
    seed: int = 0
    threads: int = 1
    max_iters: int | None = None
    checkpoint_every: int = 200
    resume: bool = True
    name: str = NAME
    command: str = ""
    data: list = field(default_factory=list)


def check_k(k: int, n: int) -> None:
    """Refuse a K the data cannot support (clear message, what to do)."""
    if not 2 <= k <= MAX_TYPES:
        raise TypingError(f"the number of types K must be between 2 and {MAX_TYPES}, got {k}")
    if n < MIN_NUCLEI:
        raise TypingError(
            f"only {n} nuclei to learn from; at least {MIN_NUCLEI} are needed (give more or larger images/slides, "
            "or more tiles per slide with --tiles)"
        )
    if n < MIN_PER_TYPE * k:
        raise TypingError(
            f"{n} nuclei cannot support K={k} types (at least {MIN_PER_TYPE} per type, i.e. {MIN_PER_TYPE * k}); "
            f"use K <= {n // MIN_PER_TYPE} or give more nuclei"
        )


def augment_batch(store, generator=None):
    """Random rotation (any angle) and flip of uint8 (N, 58, 58, 3) nuclei -> (N, 3, 40, 40) in -1..1."""
    import torch
    import torch.nn.functional as F

    from ..pipeline.nucleus_types import to_tensor

    x = to_tensor(store)
    n = x.shape[0]
    ang = torch.rand(n, generator=generator) * 2 * math.pi
    flip = (torch.rand(n, generator=generator) < 0.5).float() * 2 - 1
    s = PATCH / STORE
    cos, sin = torch.cos(ang) * s, torch.sin(ang) * s
    theta = torch.stack([torch.stack([cos * flip, -sin, torch.zeros(n)], 1), torch.stack([sin * flip, cos, torch.zeros(n)], 1)], 1)
    grid = F.affine_grid(theta, (n, 3, PATCH, PATCH), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def centre(store: np.ndarray) -> np.ndarray:
    """The central 40 x 40 of 58 x 58 nuclei (no augmentation)."""
    o = (store.shape[1] - PATCH) // 2
    return store[:, o : o + PATCH, o : o + PATCH]


def train_gan(pool: np.ndarray, cfg: TrainConfig, log=print, eval_fn=None):
    """Train the InfoGAN on unlabelled nuclei ``pool`` (N, 58, 58, 3) under a time budget.

    Checkpoints to ``cfg.out/checkpoint.pt`` (resumed unless ``cfg.resume`` is
    False). ``eval_fn(model) -> dict`` is called at each checkpoint (e.g. the
    evaluation on labelled cells; logged, never used for training).
    Returns ``(model, history)``.
    """
    import torch
    import torch.nn.functional as F

    from ..models.infogan import InfoGAN, gradient_penalty

    check_k(cfg.k, len(pool))
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    model = InfoGAN(n_classes=cfg.k, n_noise=cfg.n_noise, width=cfg.width)
    opt_g = torch.optim.Adam(model.G.parameters(), lr=cfg.lr_g, betas=(0.5, 0.9))
    opt_d = torch.optim.Adam(list(model.D.parameters()) + list(model.D_D.parameters()), lr=cfg.lr_d, betas=(0.5, 0.9))
    opt_q = torch.optim.Adam(model.D_Q.parameters(), lr=cfg.lr_q, betas=(0.5, 0.9))
    history, it, spent = [], 0, 0.0
    ckpt = out / "checkpoint.pt"
    if cfg.resume and ckpt.exists():
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        opt_q.load_state_dict(state["opt_q"])
        it, spent = int(state["iter"]), float(state["spent"])
        hist_file = out / "history.json"
        history = json.loads(hist_file.read_text()) if hist_file.exists() else []
        rng = np.random.default_rng(cfg.seed + it)
        gen = torch.Generator().manual_seed(cfg.seed + it)
        log(f"resumed at iteration {it} ({spent / 60:.1f} min spent)")
    model.train()
    t0 = time.time() - spent
    acc = {"d": 0.0, "g": 0.0, "gp": 0.0, "q": 0.0, "q_acc": 0.0, "w": 0.0, "n": 0}

    def save():
        torch.save({"model": model.state_dict(), "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
                    "opt_q": opt_q.state_dict(), "iter": it, "spent": time.time() - t0}, out / ".checkpoint.part")
        (out / ".checkpoint.part").replace(ckpt)
        (out / "history.json").write_text(json.dumps(history, indent=1))

    while time.time() - t0 < cfg.minutes * 60 and (cfg.max_iters is None or it < cfg.max_iters):
        # --- critic and D_Q: n_critic steps
        for _ in range(cfg.n_critic):
            real = augment_batch(pool[rng.integers(0, len(pool), cfg.batch)], gen)
            z, c = model.sample_latent(cfg.batch, generator=gen)
            codes = c.argmax(1)
            with torch.no_grad():
                fake = model.G(z, c)
            h_real = model.D(real)
            h_fake = model.D(fake)
            wdist = model.D_D(h_real).mean() - model.D_D(h_fake).mean()
            gp = gradient_penalty(model, real, fake)
            q_logits = model.D_Q(h_fake if cfg.q_body else h_fake.detach())
            q_loss = F.cross_entropy(q_logits, codes)
            loss = -wdist + cfg.gp * gp + cfg.info * q_loss
            opt_d.zero_grad(set_to_none=True)
            opt_q.zero_grad(set_to_none=True)
            loss.backward()
            opt_d.step()
            opt_q.step()
        # --- generator: fool D_D, keep c recoverable by D_Q (mutual information)
        z, c = model.sample_latent(cfg.batch, generator=gen)
        codes = c.argmax(1)
        fake = model.G(z, c)
        score, q_logits = model.heads(fake)
        g_q = F.cross_entropy(q_logits, codes)
        g_loss = -score.mean() + cfg.info * g_q
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        it += 1
        acc["d"] += loss.item()
        acc["g"] += g_loss.item()
        acc["gp"] += gp.item()
        acc["q"] += g_q.item()
        acc["w"] += wdist.item()
        acc["q_acc"] += (q_logits.argmax(1) == codes).float().mean().item()
        acc["n"] += 1
        if it % cfg.checkpoint_every == 0:
            row = {"iter": it, "minutes": round((time.time() - t0) / 60, 2)}
            row.update({k: round(v / acc["n"], 4) for k, v in acc.items() if k != "n"})
            acc = dict.fromkeys(acc, 0.0)
            acc["n"] = 0
            if eval_fn is not None:
                model.eval()
                row.update(eval_fn(model))
                model.train()
            history.append(row)
            log(" ".join(f"{k}={v}" for k, v in row.items()))
            save()
    save()
    model.eval()
    return model, history


# ============================================================== clustering
def kmeans(x: np.ndarray, k: int, n_init: int = 10, iters: int = 100, seed: int = 0):
    """L2 k-means (k-means++ seeding, best of ``n_init``): ``(labels, centres)``.

    Examples
    --------
    >>> x = np.r_[np.zeros((20, 2)), np.ones((20, 2)) * 5]
    >>> lab, _ = kmeans(x, 2)
    >>> len(set(lab[:20])), len(set(lab[20:])), bool(lab[0] != lab[-1])
    (1, 1, True)
    """
    x = np.asarray(x, np.float64)
    if len(x) < k:
        raise TypingError(f"{len(x)} nuclei cannot make {k} clusters; use K <= {len(x)}")
    rng = np.random.default_rng(seed)
    sq = (x**2).sum(1)
    best = (np.inf, None, None)
    for _ in range(n_init):
        c = [x[rng.integers(len(x))]]
        for _ in range(1, k):
            d = np.min([((x - ci) ** 2).sum(1) for ci in c], axis=0)
            p = d / d.sum() if d.sum() > 0 else np.full(len(x), 1 / len(x))
            c.append(x[rng.choice(len(x), p=p)])
        c = np.array(c)
        lab = None
        for _ in range(iters):
            d = sq[:, None] - 2 * x @ c.T + (c**2).sum(1)[None]
            new = d.argmin(1)
            if lab is not None and np.array_equal(new, lab):
                break
            lab = new
            for j in range(k):
                if np.any(lab == j):
                    c[j] = x[lab == j].mean(0)
        inertia = float(np.min(sq[:, None] - 2 * x @ c.T + (c**2).sum(1)[None], axis=1).sum())
        if inertia < best[0]:
            best = (inertia, lab.copy(), c.copy())
    return best[1], best[2]


def raw_features(patches: np.ndarray) -> np.ndarray:
    """The paper's first baseline: each 40 x 40 RGB nucleus as one pixel vector (0..1)."""
    return centre(patches).reshape(len(patches), -1).astype(np.float32) / 255.0


def unet_features(patches: np.ndarray, model: str = "nuclei-unet", batch: int = 256) -> np.ndarray:
    """Learned CNN features: the project's nuclei U-Net encoder, global-average-pooled at each of its 5 stages.

    Stands in for the paper's ImageNet ResNet-152 (2048 average-pool
    features), which cannot be downloaded here. The U-Net was trained to
    segment nuclei (MoNuSeg, MICCAI 2015, GBM40), never on nucleus types. The
    48 x 48 centre (40 x 40 plus 4 px of context, a multiple of 16) is used;
    the 496 features are standardised.
    """
    import torch
    import torch.nn.functional as F

    from ..models.registry import load_model

    net, _ = load_model(model, device="cpu")
    o = (patches.shape[1] - 48) // 2
    feats = []
    with torch.no_grad():
        for i in range(0, len(patches), batch):
            x = torch.from_numpy(np.ascontiguousarray(patches[i : i + batch, o : o + 48, o : o + 48].transpose(0, 3, 1, 2))).float() / 255
            parts = []
            for block in net.down:
                x = block(x)
                parts.append(x.mean((2, 3)))
                x = F.max_pool2d(x, 2)
            parts.append(net.bottom(x).mean((2, 3)))
            feats.append(torch.cat(parts, 1).numpy())
    f = np.concatenate(feats)
    return (f - f.mean(0)) / (f.std(0) + 1e-6)


def infogan_types(net, patches: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``D_Q``'s type (argmax) and probabilities on the centred 40 x 40 nuclei."""
    from ..pipeline.nucleus_types import predict_types

    p = predict_types(net, centre(patches))
    return p.argmax(1), p


# ============================================================== evaluation
def evaluate_clusters(y_true, clusters, classes, k: int | None = None) -> dict:
    """Hungarian-matched clustering metrics, as the paper (section 4.2.1).

    Each cluster is matched to at most one class (and each class to at most
    one cluster) maximising the matched cells; a cell counts as correct when
    its cluster is matched to its class. Returns the matching, per-class
    precision / sensitivity / F1, accuracy, the confusion matrix (rows:
    classes, columns: clusters in matched order), and the normalised mutual
    information (independent of the matching).
    """
    from scipy.optimize import linear_sum_assignment

    classes = list(classes)
    y = np.asarray([classes.index(v) for v in y_true]) if not np.issubdtype(np.asarray(y_true).dtype, np.integer) else np.asarray(y_true)
    cl = np.asarray(clusters, int)
    C = len(classes)
    K = int(k or cl.max() + 1)
    conf = np.zeros((C, K), np.int64)
    np.add.at(conf, (y, cl), 1)
    rows, cols = linear_sum_assignment(-conf)
    match = {int(c): int(r) for r, c in zip(rows, cols, strict=True)}  # cluster -> class
    pred = np.array([match.get(int(c), -1) for c in cl])
    per = {}
    for i, name in enumerate(classes):
        tp = int(np.sum((pred == i) & (y == i)))
        npred, ntrue = int(np.sum(pred == i)), int(np.sum(y == i))
        p = tp / npred if npred else 0.0
        s = tp / ntrue if ntrue else 0.0
        per[name] = {"precision": p, "sensitivity": s, "f1": 2 * p * s / (p + s) if p + s else 0.0, "n": ntrue,
                     "cluster": next((c for c, r in match.items() if r == i), None)}
    order = [next((c for c, r in match.items() if r == i), None) for i in range(C)]
    order = [c for c in order if c is not None] + [c for c in range(K) if c not in match]
    return {
        "accuracy": float(np.mean(pred == y)),
        "per_class": per,
        "macro_f1": float(np.mean([v["f1"] for v in per.values()])),
        "nmi": nmi(y, cl),
        "match": {f"cluster {c}": classes[r] for c, r in sorted(match.items())},
        "cluster_order": order,
        "confusion": conf[:, order].tolist(),
        "classes": classes,
        "cluster_sizes": np.bincount(cl, minlength=K).tolist(),
        "majority_baseline": float(np.bincount(y, minlength=C).max() / len(y)),
    }


def nmi(a, b) -> float:
    """Normalised mutual information (arithmetic mean of the entropies)."""
    a, b = np.asarray(a), np.asarray(b)
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    joint = np.zeros((ai.max() + 1, bi.max() + 1))
    np.add.at(joint, (ai, bi), 1)
    p = joint / joint.sum()
    pa, pb = p.sum(1), p.sum(0)
    nz = p > 0
    mi = float((p[nz] * np.log(p[nz] / (pa[:, None] * pb[None])[nz])).sum())
    ha = -float((pa[pa > 0] * np.log(pa[pa > 0])).sum())
    hb = -float((pb[pb > 0] * np.log(pb[pb > 0])).sum())
    return 0.0 if ha + hb == 0 else 2 * mi / (ha + hb)


def eval_labels(cells: dict, k: int) -> tuple[np.ndarray, tuple]:
    """The labelled classes used for a K: 3 classes (look-alikes are other nuclei) for K = 3, else 4."""
    lab = np.asarray(cells["label"]).astype(object)
    if k == 3:
        lab = np.where(lab == "look_alike", "other_nucleus", lab)
        return lab, EVAL_CLASSES_3
    return lab, EVAL_CLASSES


def evaluate_all(net, cells: dict, k: int, baselines: bool = True, seed: int = 0) -> dict:
    """InfoGAN vs k-means on raw pixels vs k-means on U-Net features, on the labelled cells."""
    y, classes = eval_labels(cells, k)
    out = {"infogan": evaluate_clusters(y, infogan_types(net, cells["patches"])[0], classes, k)}
    if baselines:
        out["kmeans_raw"] = evaluate_clusters(y, kmeans(raw_features(cells["patches"]), k, seed=seed)[0], classes, k)
        out["kmeans_unet"] = evaluate_clusters(y, kmeans(unet_features(cells["patches"]), k, seed=seed)[0], classes, k)
    # how much the clusters follow the data source rather than the cell type (a confound to report)
    src = np.asarray(cells["source"])
    out["infogan_vs_source_nmi"] = nmi(src, infogan_types(net, cells["patches"])[0])
    return out


# ================================================================== saving
def save_typing_model(net, cfg: TrainConfig, norm, metrics: dict, counts: dict, folder, names=None, extra_card: str = "",
                      history=None):
    """Write NAME.pt/.json/.md with :func:`~napari_mitosis.models.registry.save_model`."""
    from ..models.registry import ModelSpec, save_model

    names = names or [f"type {i + 1}" for i in range(cfg.k)]
    spec = ModelSpec(
        name=cfg.name,
        task="typing",
        builder="napari_mitosis.models.infogan:build_infogan",
        config={"n_classes": cfg.k, "n_noise": cfg.n_noise, "width": cfg.width},
        mpp=WORK_MPP,
        patch_size=PATCH,
        classes=list(names),
        metrics=metrics,
        training={
            "normalizer": norm.to_dict() if norm is not None else None,
            "data": cfg.data,
            "nuclei": counts,
            "iterations": int(history[-1]["iter"]) if history else 0,
            "minutes": float(history[-1]["minutes"]) if history else 0.0,
            "config": {k: v for k, v in asdict(cfg).items() if k not in ("command", "data", "out")},
            "command": cfg.command,
        },
    )
    card = model_card(spec, extra_card)
    return save_model(net, spec, card, folder=folder)


def _fmt(m: dict) -> str:
    lines = ["| class | precision | sensitivity | F1 | n |", "|---|---|---|---|---|"]
    for c, v in m["per_class"].items():
        lines.append(f"| {c} | {100 * v['precision']:.1f} | {100 * v['sensitivity']:.1f} | {100 * v['f1']:.1f} | {v['n']} |")
    return "\n".join(lines)


def model_card(spec, extra: str = "") -> str:
    m = spec.metrics
    t = spec.training
    rows = []
    for key, title in (("infogan", "InfoGAN (D_Q)"), ("kmeans_raw", "k-means, raw pixels"), ("kmeans_unet", "k-means, U-Net features")):
        if key in m:
            rows.append(f"| {title} | {100 * m[key]['accuracy']:.1f} | {100 * m[key]['macro_f1']:.1f} | {m[key]['nmi']:.3f} |")
    table = "\n".join(["| model | accuracy % | macro F1 % | NMI |", "|---|---|---|---|", *rows]) if rows else "(not evaluated)"
    return f"""# {spec.name}: unsupervised nucleus typing (InfoGAN, K = {spec.config['n_classes']})

**What it does.** Types segmented nuclei into K = {spec.config['n_classes']} groups without labels: the
auxiliary head D_Q of an InfoGAN infers the categorical code c of a nucleus. Types are
*clusters*, not diagnoses, named {', '.join(spec.classes)}; docs/typing.md shows real nuclei
of each type and how they relate to labelled cells.

**Input.** A 40 x 40 px window at {spec.mpp} um/px (20 x 20 um) centred on a nucleus centroid,
stain-normalised with the stored normaliser ({(t.get('normalizer') or {}).get('method', 'none')}),
RGB scaled to -1..1. Use `napari_mitosis.pipeline.nucleus_types.type_nuclei_task`.

**Network.** Generator G(z, c) (z: {spec.config['n_noise']} noise values, c: one-hot of K), shared
discriminator body (3 strided convolutions), D_D (Wasserstein critic, gradient penalty 10) and D_Q
(mutual-information head). Learning rates D_Q 2e-4, G 1e-4, D/D_D 1e-4 (the paper's), Adam (0.5, 0.9),
rotation + flip augmentation. Config: {json.dumps(t.get('config', {}))}.

**Training data (no labels used).** {json.dumps(t.get('nuclei', {}))}; data: {', '.join(map(str, t.get('data', [])))}.

**Evaluation** (labelled cells of ../shared/data, Hungarian matching; docs/typing.md):

{table}

{_fmt(m['infogan']) if 'infogan' in m else ''}

{extra}

**Command.** `{t.get('command', '')}`

**Limits.** Trained on CPU for minutes (the paper: 70,000 iterations on a GPU). The labelled
classes come from different data sets, so clusters can follow the source (stain, scanner) as much
as the cell type; docs/typing.md reports this. Research use only.
"""


def write_json(path, obj) -> None:
    from .cell_data import json_default

    Path(path).write_text(json.dumps(obj, indent=1, default=json_default))
