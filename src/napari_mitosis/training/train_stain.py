"""Train the neural stain transfer network on one reference style.

Default style: the MITOS-ATYPIA-14 frames of ``../shared/data`` (Aperio XT,
breast cancer; the style the mitosis data comes in). Training pairs are made
from the style images themselves: the input is the luminance of a crop whose
stains were randomly perturbed (HED optical-density jitter, brightness,
contrast, gamma: what other labs and scanners do to an image), the target is
the chroma of the untouched crop. The network so learns to give any lab's
grayscale structure the reference's colours.

The auxiliary classification task (the paper's tissue categories) uses the
labels these frames have: does the crop hold a pathologist-labelled mitotic
figure, a labelled look-alike, or neither.

Loss: ``(1 - k) * MSE(chroma) + k * CE(class)`` with ``k`` the classification
share (the paper explored 1/30 to 1/300); Adadelta with lr 1.0, rho 0.9,
eps 1e-6, no weight decay, as in the paper.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from ..models.stain_finetune import StyleImage, finetune, make_pair, perturb_stain, sample_batch  # noqa: F401 (finetune, perturb_stain: re-exported)
from ..models.stain_net import AB_SCALE, StainTransferNet, rgb_to_lab

WORK_MPP = 0.5
MITOS_MPP = 0.2455
CLASSES = ["none", "mitotic_figure", "look_alike"]


def load_mitos_frames(root) -> list[StyleImage]:
    """MITOS-ATYPIA-14 frames rescaled to :data:`WORK_MPP`, with their labelled points."""
    import pandas as pd
    from skimage.io import imread
    from skimage.transform import rescale

    root = Path(root)
    frames_dir = root / "mitosis" / "mitos_atypia14" / "frames"
    if not frames_dir.is_dir():
        raise FileNotFoundError(f"{frames_dir} not found: pass --data pointing at the shared data folder")
    pts = pd.read_csv(root / "mitosis" / "mitos_atypia14" / "points.csv")
    factor = MITOS_MPP / WORK_MPP
    images = []
    for path in sorted(frames_dir.glob("*.jpg")) + sorted(frames_dir.glob("*.png")):
        rgb = imread(path)[..., :3]
        small = np.clip(np.rint(rescale(rgb, factor, channel_axis=2, anti_aliasing=True, preserve_range=True)), 0, 255)
        sel = pts[pts["frame"].map(lambda f: Path(str(f)).stem) == path.stem]
        cls = np.where(sel["label"].to_numpy() == "mitosis", 1, 2)
        p = np.stack([sel["x"].to_numpy() * factor, sel["y"].to_numpy() * factor, cls], 1) if len(sel) else np.zeros((0, 3))
        images.append(StyleImage(path.stem, path.stem[:6], small.astype(np.uint8), p))
    if not images:
        raise FileNotFoundError(f"no frames in {frames_dir}")
    return images


def style_lightness(images: list[StyleImage]) -> list[float]:
    """Mean and standard deviation of CIE L over the tissue pixels of a style's images."""
    from skimage import color

    from ..core.stain_norm import tissue_weight

    values = [color.rgb2lab(im.rgb)[..., 0][tissue_weight(im.rgb) >= 1] for im in images]
    values = np.concatenate(values)
    return [float(values.mean()), float(values.std())]


def style_stains(images: list[StyleImage]) -> dict:
    """The style's Macenko stain vectors (hematoxylin, eosin) and 99th-percentile concentrations,
    pooled over its images: what :class:`~napari_mitosis.models.stain_net.NeuralStainNormalizer`
    renders the network's output with (``keep_hue``); goes in the spec as ``style_stains``."""
    from ..core.stain_norm import MacenkoNormalizer

    side = min(min(im.rgb.shape[:2]) for im in images)
    pooled = np.concatenate([im.rgb[:side, :side] for im in images], 0)
    st = MacenkoNormalizer().source_stats(pooled, what="style images")
    return {"stains": st["stains"].tolist(), "max_conc": st["max_conc"].tolist()}


def train(
    images: list[StyleImage],
    val: list[StyleImage],
    minutes: float = 15.0,
    steps: int = 100_000,
    batch: int = 16,
    size: int = 128,
    class_share: float = 0.01,
    width: int = 16,
    seed: int = 0,
    log=print,
):
    """Train until ``steps`` or ``minutes``; returns the net with the best validation chroma MSE."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = StainTransferNet(width=width, n_classes=len(CLASSES))
    opt = torch.optim.Adadelta(net.parameters(), lr=1.0, rho=0.9, eps=1e-6, weight_decay=0)
    val_gen = torch.Generator().manual_seed(1234)
    val_x = [make_pair(sample_batch(val, size, batch, val_gen)[0], val_gen) for _ in range(6)]
    best, best_state, history = float("inf"), None, []
    start = time.time()
    step = 0
    while step < steps and time.time() - start < minutes * 60:
        net.train()
        x, y = sample_batch(images, size, batch, gen)
        lum, target = make_pair(x, gen)
        chroma, logits = net(lum)
        mse = F.mse_loss(chroma, target)
        ce = F.cross_entropy(logits, y)
        loss = (1 - class_share) * mse + class_share * ce
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % 100 == 0:
            v = evaluate(net, val_x)
            history.append({"step": step, "train_mse": float(mse), "train_ce": float(ce), "val_mse": v, "minutes": (time.time() - start) / 60})
            log(f"step {step}: train mse {float(mse):.4f} ce {float(ce):.3f} | val mse {v:.4f} ({(time.time() - start) / 60:.1f} min)")
            if v < best:
                best, best_state = v, {k: t.detach().clone() for k, t in net.state_dict().items()}
    if best_state is not None:
        net.load_state_dict(best_state)
    return net.eval(), {"steps": step, "best_val_mse": best, "history": history}


def evaluate(net, batches) -> float:
    net.eval()
    with torch.no_grad():
        return float(np.mean([F.mse_loss(net(lum)[0], tgt).item() for lum, tgt in batches]))
