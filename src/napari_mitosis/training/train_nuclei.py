"""Training and validation of the nucleus U-Net (``napari-mitosis train nuclei``).

Data: ``../shared/data/nuclei`` (MoNuSeg 2018 train, MICCAI 2015, GBM40), every
image rescaled by its pixel size to the working resolution (0.5 um/px). The
validation split is by image (:data:`VALIDATION`): whole images never seen in
training, from every source. MoNuSeg images that have only a binary mask
(17 of 30) are used for training, with their connected components as nuclei
(touching nuclei then share no boundary, which is the best such masks allow).

Augmentation, per patch: a random rotation (any angle) and scale (0.8-1.25x)
in one affine resampling, a random flip, and stain jitter in
hematoxylin/eosin optical-density space (each stain's concentration scaled by
0.75-1.25 and shifted by +-0.05, after Tellez et al. 2018), plus brightness.

Loss: cross-entropy over background / nucleus / boundary (boundary weighted
x2) plus a soft Dice loss on the foreground. Adam, learning rate 1e-3 with
cosine decay over the time budget. Training is time-limited (``minutes``) and
resumable: a checkpoint with the optimiser is written at every validation.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.nuclei import (
    NUCLEI_MPP,
    aggregated_jaccard_index,
    instances_to_classes,
    log_nuclei,
    pixel_metrics,
    probabilities_to_instances,
    segmentation_metrics,
)
from ..core.stain import hed_jitter
from ..errors import NapariMitosisError

#: Model registry name.
MODEL_NAME = "nuclei-unet"

#: Validation images (by file stem), per source: whole images, never trained on.
VALIDATION = {
    "monuseg_train": [
        "TCGA-21-5784-01Z-00-DX1",  # lung
        "TCGA-A7-A13E-01Z-00-DX1",  # breast
        "TCGA-B0-5710-01Z-00-DX1",  # kidney
        "TCGA-CH-5767-01Z-00-DX1",  # prostate
    ],
    "miccai15": ["image03", "image08", "image12"],
    "gbm40": ["05", "10", "15", "20", "25", "30", "35", "40"],
}


#: Default stain-normalisation reference (``--normalize`` without ``--norm-reference``):
#: a fixed *training* image (MoNuSeg, breast, TCGA-A7-A13F), relative to the data folder.
DEFAULT_NORM_REFERENCE = "monuseg_train/images/TCGA-A7-A13F-01Z-00-DX1.jpg"

#: Stain normalisations the trainer can apply at load time.
NORMALIZATIONS = ("none", "macenko", "reinhard", "neural")


class DataError(NapariMitosisError, ValueError):
    """The training data folder is missing or malformed; the message says what to do."""


@dataclass
class Sample:
    """One image at the working resolution."""

    name: str
    source: str
    mpp: float
    rgb: np.ndarray
    labels: np.ndarray
    instances: bool  # labels are true instances (False: components of a binary mask)
    native_shape: tuple = ()
    native_labels: np.ndarray | None = field(default=None, repr=False)


def source_mpp(source: str, stem: str) -> float:
    """Nominal pixel size of a training image (see ../shared/data/README.md)."""
    if source == "monuseg_train":
        return 0.25
    if source == "gbm40":
        return 0.5
    if source == "miccai15":
        return 0.5 if int(stem.replace("image", "")) <= 7 else 0.25
    raise DataError(f"unknown nuclei data source {source!r}")


def list_images(data_dir) -> list[dict]:
    """Every image of the nuclei data with its label file, pixel size and split."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: no such folder; pass --data pointing at shared/data/nuclei")
    items = []
    for source in ("monuseg_train", "miccai15", "gbm40"):
        folder = data_dir / source
        if not folder.is_dir():
            continue
        for img in sorted((folder / "images").glob("*")):
            stem = img.stem
            lab = folder / "labels" / f"{stem}.png"
            mask = folder / "masks" / f"{stem}.png"
            if lab.exists():
                target, inst = lab, True
            elif mask.exists():
                target, inst = mask, False
            else:
                continue
            items.append(
                {
                    "name": stem,
                    "source": source,
                    "image": img,
                    "target": target,
                    "instances": inst,
                    "mpp": source_mpp(source, stem),
                    "split": "val" if stem in VALIDATION.get(source, []) else "train",
                }
            )
    if not items:
        raise DataError(f"{data_dir}: found no images with labels (expected monuseg_train/, miccai15/, gbm40/)")
    return items


def load_sample(item: dict, mpp: float = NUCLEI_MPP, keep_native: bool = False) -> Sample:
    """Read one image and its labels and rescale both to ``mpp``."""
    from skimage.io import imread
    from skimage.transform import resize

    rgb = imread(item["image"])[..., :3]
    target = imread(item["target"])
    if target.ndim == 3:
        target = target[..., 0]
    if item["instances"]:
        labels = target.astype(np.int32)
    else:
        from scipy import ndimage as ndi

        labels = ndi.label(target > 0)[0].astype(np.int32)
    native = labels if keep_native else None
    f = item["mpp"] / mpp
    shape = rgb.shape[:2]
    if abs(f - 1) > 1e-3:
        out = (max(1, round(shape[0] * f)), max(1, round(shape[1] * f)))
        rgb = (resize(rgb, out, anti_aliasing=f < 1, preserve_range=True) + 0.5).astype(np.uint8)
        labels = resize(labels, out, order=0, anti_aliasing=False, preserve_range=True).astype(np.int32)
    return Sample(item["name"], item["source"], item["mpp"], rgb, labels, item["instances"], shape, native)


def make_load_normalizer(method: str, data_dir, reference=None, device: str = "cpu"):
    """A stain normaliser fitted on the reference image (at the working resolution), or None.

    ``reference``: an image path (default :data:`DEFAULT_NORM_REFERENCE` in ``data_dir``).
    Its pixel size is taken from the nuclei data sources when it is one of their images,
    else 0.5 um/px (the working resolution) is assumed.
    """
    method = (method or "none").lower()
    if method == "none":
        return None
    if method not in NORMALIZATIONS:
        raise ValueError(f"unknown stain normalisation {method!r}; choose one of {', '.join(NORMALIZATIONS)}")
    from skimage.io import imread
    from skimage.transform import resize

    from ..pipeline.stain import make_normalizer

    ref = Path(reference) if reference else Path(data_dir) / DEFAULT_NORM_REFERENCE
    if not ref.exists():
        raise DataError(f"{ref}: stain-normalisation reference not found; pass --norm-reference")
    rgb = imread(ref)[..., :3]
    mpp = NUCLEI_MPP
    if ref.parent.name == "images" and ref.parent.parent.name in ("monuseg_train", "miccai15", "gbm40"):
        mpp = source_mpp(ref.parent.parent.name, ref.stem)
    f = mpp / NUCLEI_MPP
    if abs(f - 1) > 1e-3:
        out = (max(1, round(rgb.shape[0] * f)), max(1, round(rgb.shape[1] * f)))
        rgb = (resize(rgb, out, anti_aliasing=f < 1, preserve_range=True) + 0.5).astype(np.uint8)
    norm = make_normalizer(method, device=device)
    norm.reference_path = str(ref)
    norm.fit(rgb, mpp=NUCLEI_MPP)
    return norm


def normalize_sample(sample: Sample, norm) -> Sample:
    """Stain-normalise a loaded sample's RGB (at the working resolution) in place; returns it."""
    if norm is not None:
        sample.rgb = norm.transform(sample.rgb, mpp=NUCLEI_MPP)
    return sample


# ------------------------------------------------------------ augmentation
def stain_jitter(rgb: np.ndarray, rng: np.random.Generator, scale: float = 0.25, shift: float = 0.05) -> np.ndarray:
    """Random H&E stain variation (:func:`~napari_mitosis.core.stain.hed_jitter`) and brightness."""
    out = hed_jitter(rgb, rng, scale, shift) * rng.uniform(0.92, 1.08)
    return np.clip(out, 0, 255).astype(np.uint8)


def random_patch_labels(rgb, labels, size: int, rng: np.random.Generator, scale_range=(0.8, 1.25)):
    """A rotated, scaled (>1 magnifies), flipped, stain-jittered ``size`` px patch of ``rgb`` and
    the same patch of the instance ``labels`` (nearest neighbour), around a random centre."""
    from scipy import ndimage as ndi

    h, w = labels.shape
    theta = rng.uniform(0, 2 * np.pi)
    s = rng.uniform(*scale_range)
    c, si = np.cos(theta) / s, np.sin(theta) / s
    mat = np.array([[c, -si], [si, c]])
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)  # the output centre maps to a random input centre
    offset = np.array([cy, cx]) - mat @ np.array([size / 2 - 0.5, size / 2 - 0.5])
    img = np.empty((size, size, 3), np.uint8)
    for ch in range(3):
        img[..., ch] = ndi.affine_transform(rgb[..., ch], mat, offset, (size, size), order=1, mode="reflect")
    lab = ndi.affine_transform(labels, mat, offset, (size, size), order=0, mode="reflect")
    if rng.random() < 0.5:
        img, lab = img[:, ::-1], lab[:, ::-1]
    return np.ascontiguousarray(stain_jitter(img, rng)), np.ascontiguousarray(lab)


def random_patch(sample: Sample, size: int, rng: np.random.Generator, scale_range=(0.8, 1.25)):
    """A rotated, scaled, flipped, stain-jittered patch and its 3-class target."""
    img, lab = random_patch_labels(sample.rgb, sample.labels, size, rng, scale_range)
    return img, instances_to_classes(lab)


# ----------------------------------------------------------------- training
@dataclass
class TrainConfig:
    data: str
    out: str
    minutes: float = 30.0
    patch: int = 160
    batch: int = 8
    lr: float = 1e-3
    base: int = 16
    seed: int = 0
    val_every: int = 150
    threads: int = 1
    resume: bool = True
    max_steps: int | None = None
    weights_dir: str | None = None
    command: str = ""
    normalize: str = "none"  # stain-normalise every image once at load time (after rescaling)
    norm_reference: str | None = None  # default: DEFAULT_NORM_REFERENCE (a training image)


def _loss(logits, target):
    import torch
    from torch.nn import functional as F

    w = torch.tensor([1.0, 1.0, 2.0], device=logits.device)
    ce = F.cross_entropy(logits, target, weight=w)
    p = torch.softmax(logits, 1)
    fg = 1 - p[:, 0]
    t = (target > 0).float()
    dice = 1 - (2 * (fg * t).sum() + 1) / (fg.sum() + t.sum() + 1)
    return ce + dice


def evaluate_unet(net, samples, params=None, native=False, device=None) -> dict:
    """Mean metrics of the U-Net over samples (at working resolution, or native)."""
    from ..models.unet import predict_probabilities

    params = params or {}
    rows = []
    for s in samples:
        probs = predict_probabilities(net, s.rgb, device)
        lab = probabilities_to_instances(probs, mpp=NUCLEI_MPP, **params)
        rows.append(_metrics(s, lab, native))
    return _mean(rows)


def evaluate_log(samples, native=False, **kw) -> dict:
    """Mean metrics of the LoG baseline over samples."""
    return _mean([_metrics(s, log_nuclei(s.rgb, mpp=NUCLEI_MPP, **kw), native) for s in samples])


def _metrics(s: Sample, lab, native):
    if native and s.native_labels is not None:
        from skimage.transform import resize

        lab = resize(lab, s.native_shape, order=0, anti_aliasing=False, preserve_range=True).astype(np.int32)
        truth = s.native_labels
    else:
        truth = s.labels
    m = segmentation_metrics(truth, lab) if s.instances else pixel_metrics(lab, truth)
    m["source"] = s.source
    return m


def _mean(rows) -> dict:
    keys = list(dict.fromkeys(k for r in rows for k in r if k != "source"))
    out = {k: float(np.mean([r[k] for r in rows if k in r])) for k in keys}
    out["per_source"] = {
        src: {k: float(np.mean([r[k] for r in rows if r["source"] == src and k in r])) for k in keys}
        for src in sorted({r["source"] for r in rows})
    }
    out["images"] = len(rows)
    return out


def tune_postprocessing(net, samples, device=None) -> dict:
    """Choose the watershed thresholds by AJI on (training) samples."""
    from ..models.unet import predict_probabilities

    probs = [predict_probabilities(net, s.rgb, device) for s in samples]
    best, best_params = -1.0, {}
    for fg in (0.4, 0.5, 0.6):
        for mk in (0.2, 0.4, 0.6):
            params = {"foreground": fg, "marker": mk}
            aji = np.mean(
                [
                    aggregated_jaccard_index(s.labels, probabilities_to_instances(p, mpp=NUCLEI_MPP, **params))
                    for s, p in zip(samples, probs, strict=True)
                ]
            )
            if aji > best:
                best, best_params = float(aji), params
    return best_params


def train(cfg: TrainConfig, log=print) -> dict:
    """Train (or resume) the U-Net within ``cfg.minutes``; ship it with a card.

    Returns the validation metrics of the best checkpoint.
    """
    import torch

    from ..models.registry import ModelSpec, save_model
    from ..models.unet import build_unet, count_parameters, to_tensor

    torch.set_num_threads(max(1, int(cfg.threads)))
    t_start = time.monotonic()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    items = list_images(cfg.data)
    log(f"loading {len(items)} images, rescaling to {NUCLEI_MPP} um/px")
    norm = make_load_normalizer(cfg.normalize, cfg.data, cfg.norm_reference)
    if norm is not None:
        log(f"stain normalisation: {norm.method} to {norm.reference_path} (every image, once, at {NUCLEI_MPP} um/px)")
    train_s = [normalize_sample(load_sample(i), norm) for i in items if i["split"] == "train"]
    val_s = [normalize_sample(load_sample(i, keep_native=True), norm) for i in items if i["split"] == "val"]
    val_inst = [s for s in val_s if s.instances]
    log(f"train: {len(train_s)} images; validation: {len(val_s)} images ({len(val_inst)} with instance labels)")
    weights = np.array([s.labels.size for s in train_s], float)
    weights /= weights.sum()

    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    net = build_unet(base=cfg.base)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    step, best, history, elapsed_before = 0, -1.0, [], 0.0
    ckpt = out / "checkpoint.pt"
    if cfg.resume and ckpt.exists():
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["opt"])
        step, best = int(state["step"]), float(state["best"])
        elapsed_before = float(state["elapsed"])
        history = json.loads((out / "history.json").read_text()) if (out / "history.json").exists() else []
        rng = np.random.default_rng(cfg.seed + step)
        log(f"resumed from step {step} (best validation AJI {best:.3f}, {elapsed_before / 60:.1f} min trained)")
    budget = cfg.minutes * 60.0
    log(f"U-Net base {cfg.base}: {count_parameters(net):,} parameters; budget {cfg.minutes:.1f} min")

    def elapsed():
        return elapsed_before + time.monotonic() - t_start

    def validate():
        nonlocal best
        net.eval()
        m = evaluate_unet(net, val_s)
        net.train()
        score = m.get("aji", m["dice"])
        rec = {"step": step, "minutes": round(elapsed() / 60, 2), "val_dice": m["dice"], "val_aji": m.get("aji")}
        history.append(rec)
        (out / "history.json").write_text(json.dumps(history, indent=1))
        if score > best:
            best = score
            torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, out / "best.pt")
        torch.save(
            {"net": net.state_dict(), "opt": opt.state_dict(), "step": step, "best": best, "elapsed": elapsed()},
            out / ".checkpoint.part",
        )
        (out / ".checkpoint.part").replace(ckpt)
        log(f"step {step}: val Dice {m['dice']:.3f} AJI {m.get('aji', float('nan')):.3f} (best AJI {best:.3f}), "
            f"{elapsed() / 60:.1f} min")

    net.train()
    t_log, losses = time.monotonic(), []
    while elapsed() < budget and (cfg.max_steps is None or step < cfg.max_steps):
        frac = min(1.0, elapsed() / budget)
        for g in opt.param_groups:
            g["lr"] = cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
        picks = rng.choice(len(train_s), size=cfg.batch, p=weights)
        pairs = [random_patch(train_s[i], cfg.patch, rng) for i in picks]
        x = to_tensor(np.stack([p[0] for p in pairs]))
        y = torch.from_numpy(np.stack([p[1] for p in pairs]).astype(np.int64))
        loss = _loss(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        step += 1
        if time.monotonic() - t_log > 60:
            log(f"step {step}: loss {np.mean(losses[-50:]):.3f}, lr {opt.param_groups[0]['lr']:.2e}, "
                f"{elapsed() / 60:.1f} min")
            t_log = time.monotonic()
        if step % cfg.val_every == 0:
            validate()
    if not history or history[-1]["step"] != step:
        validate()

    # ship the best checkpoint
    net.load_state_dict(torch.load(out / "best.pt", map_location="cpu", weights_only=True))
    net.eval()
    tune_on = [s for s in train_s if s.instances][::3]
    log(f"choosing watershed thresholds on {len(tune_on)} training images")
    params = tune_postprocessing(net, tune_on)
    log(f"thresholds: {params}; final validation at native resolution")
    metrics = evaluate_unet(net, val_s, params, native=True)
    baseline = evaluate_log(val_s, native=True)
    log(f"U-Net: {json.dumps(_short(metrics))}")
    log(f"LoG:   {json.dumps(_short(baseline))}")
    spec = ModelSpec(
        name=MODEL_NAME,
        task="segmentation",
        builder="napari_mitosis.models.unet:build_unet",
        config={"base": cfg.base},
        mpp=NUCLEI_MPP,
        patch_size=512,
        classes=["background", "nucleus", "boundary"],
        thresholds={**params, "min_marker_um2": 2.0, "min_area_um2": 8.0},
        metrics={"unet": _short(metrics), "log_baseline": _short(baseline)},
        training={
            "data": "../shared/data/nuclei: MoNuSeg 2018 train, MICCAI 2015, GBM40",
            "validation": VALIDATION,
            "train_images": len(train_s),
            "steps": step,
            "minutes": round(history[-1]["minutes"], 1) if history else round(elapsed() / 60, 1),
            "parameters": count_parameters(net),
            "patch": cfg.patch,
            "batch": cfg.batch,
            "command": cfg.command,
            "threads": cfg.threads,
            "stain_normalization": None if norm is None else {"method": norm.method, "reference": norm.reference_path},
        },
    )
    card = model_card(spec, metrics, baseline, history)
    dest = Path(cfg.weights_dir) if cfg.weights_dir else out
    # float16 halves the file (about 4 MB); load_model casts back to float32
    save_model(copy.deepcopy(net).half(), spec, card, folder=dest)
    (out / "metrics.json").write_text(json.dumps({"unet": metrics, "log_baseline": baseline}, indent=1))
    log(f"saved {MODEL_NAME} to {dest}")
    return metrics


def _short(m: dict) -> dict:
    return {k: round(float(v), 4) for k, v in m.items() if k in ("sensitivity", "specificity", "dice", "jaccard", "aji", "pq", "dq", "sq")}


def _norm_line(t: dict) -> str:
    sn = t.get("stain_normalization")
    if not sn:
        return ""
    return (f"\n- **Stain normalisation**: every training and validation image {sn['method']}-normalised once at "
            f"load time to `{sn['reference']}`; apply the same normalisation to images before segmenting them.")


def _threads(t: dict) -> str:
    n = int(t.get("threads", 1))
    return "one" if n == 1 else str(n)


def model_card(spec, metrics, baseline, history) -> str:
    """The Markdown model card."""
    def row(name, m):
        return f"| {name} | " + " | ".join(f"{m.get(k, float('nan')):.3f}" for k in
                                            ("sensitivity", "specificity", "dice", "jaccard", "aji", "pq")) + " |"

    per = "\n".join(row(f"U-Net, {src}", m) for src, m in metrics["per_source"].items())
    t = spec.training
    val = "; ".join(f"{k}: {', '.join(v)}" for k, v in t["validation"].items())
    return f"""# {spec.name}

Nucleus instance segmentation for H&E: a U-Net (4 down / 4 up stages, two 3x3 convolutions each,
skip connections, batch norm; base width {spec.config['base']}, {t.get('parameters', 0) / 1e6:.1f} M parameters, stored
as float16) predicting
background / nucleus / boundary per pixel at **{spec.mpp} um/px**, turned into instances by a
marker-controlled watershed (`core.nuclei.probabilities_to_instances`).

- **Data**: {t['data']} ({t['train_images']} training images; every image rescaled by its pixel size
  to {spec.mpp} um/px). Research use only (MoNuSeg CC BY-NC-SA 4.0).
- **Validation split, by image** (never trained on): {val}.
- **Augmentation**: rotation (any angle), scale 0.8-1.25, flips, H&E stain jitter, brightness.{_norm_line(t)}
- **Training**: {t['steps']} steps of {t['batch']} patches {t['patch']}x{t['patch']}, {t['minutes']} min on {_threads(t)} CPU
  thread(s); Adam 1e-3 cosine; cross-entropy (boundary x2) + foreground soft Dice. Best checkpoint by
  validation AJI.
- **Post-processing thresholds** (chosen on training images by AJI): {spec.thresholds}.
- **Command**: `{t['command']}`

## Validation

Means over the {metrics['images']} validation images of per-image metrics, computed at each image's own
resolution (predictions at {spec.mpp} um/px resampled back, nearest neighbour).

| model | sensitivity | specificity | Dice | Jaccard | AJI | PQ |
|---|---|---|---|---|---|---|
{row("U-Net (this model)", metrics)}
{row("LoG baseline", baseline)}
{per}

Paper (Weebly data, 144 px crops): Dice 0.29-0.33. HoVer-Net on Kumar/MoNuSeg: Dice 0.83, AJI 0.62;
compare those with the MoNuSeg row (4 images), not the overall mean, which GBM40 (8 images) dominates.

## Limits

Trained on ~{t['minutes']} CPU-minutes; TCGA brain, head and neck, and 7 MoNuSeg organs only. Nominal pixel
sizes are used as given. Not for diagnosis.
"""
