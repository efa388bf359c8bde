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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from .stain_net import AB_SCALE, StainTransferNet, rgb_to_lab

WORK_MPP = 0.5
MITOS_MPP = 0.2455
CLASSES = ["none", "mitotic_figure", "look_alike"]


@dataclass
class StyleImage:
    name: str
    group: str
    rgb: np.ndarray  # at WORK_MPP
    points: np.ndarray  # (n, 3): x, y at WORK_MPP, class index (1 mitosis, 2 look-alike)


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


def perturb_stain(rgb: torch.Tensor, gen: torch.Generator, strength: float = 1.0) -> torch.Tensor:
    """Random stain, brightness, contrast and gamma change of (B, 3, H, W) RGB in [0, 1]."""
    b = rgb.shape[0]

    def u(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(b, *shape, generator=gen)

    od = -torch.log(rgb.clamp(1 / 255, 1))
    scale = u(1 - 0.35 * strength, 1 + 0.35 * strength, 3, 1, 1)
    shift = u(-0.08 * strength, 0.08 * strength, 3, 1, 1)
    mix = torch.eye(3) + u(-0.15 * strength, 0.15 * strength, 3, 3)  # stain vectors rotate a little
    od = torch.einsum("bij,bjhw->bihw", mix, od * scale + shift * (od > 0.05))
    out = torch.exp(-od.clamp_min(0))
    gamma = u(0.75, 1.33, 1, 1, 1)
    contrast = u(0.8, 1.2, 1, 1, 1)
    bright = u(-0.06, 0.06, 1, 1, 1)
    out = (out.clamp(0, 1) ** gamma - 0.5) * contrast + 0.5 + bright
    return out.clamp(0, 1)


def sample_batch(images: list[StyleImage], size: int, batch: int, gen: torch.Generator, balanced: bool = True):
    """Random crops (B, 3, size, size) in [0, 1] with their auxiliary labels."""
    crops, labels = [], []
    rng = np.random.default_rng(int(torch.randint(0, 2**31, (1,), generator=gen)))
    for i in range(batch):
        want = i % 3 if balanced else None
        for _ in range(20):
            img = images[rng.integers(len(images))]
            h, w = img.rgb.shape[:2]
            if want in (1, 2) and len(img.points) and (img.points[:, 2] == want).any():
                px, py, _ = img.points[rng.choice(np.nonzero(img.points[:, 2] == want)[0])]
                x0 = int(np.clip(px - rng.integers(size // 4, 3 * size // 4), 0, w - size))
                y0 = int(np.clip(py - rng.integers(size // 4, 3 * size // 4), 0, h - size))
            elif want in (1, 2):
                continue
            else:
                x0, y0 = rng.integers(0, w - size + 1), rng.integers(0, h - size + 1)
            break
        crop = img.rgb[y0 : y0 + size, x0 : x0 + size]
        inside = img.points[
            (img.points[:, 0] >= x0 + 4) & (img.points[:, 0] < x0 + size - 4) & (img.points[:, 1] >= y0 + 4) & (img.points[:, 1] < y0 + size - 4)
        ]
        label = 1 if (inside[:, 2] == 1).any() else 2 if len(inside) else 0
        k = rng.integers(4)
        crop = np.rot90(crop, k)
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        crops.append(np.ascontiguousarray(crop))
        labels.append(label)
    x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255.0
    return x, torch.tensor(labels)


def make_pair(x: torch.Tensor, gen: torch.Generator, strength: float = 1.0):
    """(input luminance of a stain-perturbed copy, target chroma of the original)."""
    target = rgb_to_lab(x)[:, 1:] / AB_SCALE
    lum = rgb_to_lab(perturb_stain(x, gen, strength))[:, :1] / 100.0
    return lum, target


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


def finetune(net: StainTransferNet, reference: np.ndarray, steps: int = 150, batch: int = 8, size: int = 96, seed: int = 0):
    """Adapt the network to a new reference style (chroma loss only)."""
    gen = torch.Generator().manual_seed(seed)
    img = [StyleImage("reference", "reference", reference, np.zeros((0, 3)))]
    size = min(size, (min(reference.shape[:2]) // 8) * 8)
    params = [p for n, p in net.named_parameters() if not n.startswith("classifier")]
    opt = torch.optim.Adam(params, lr=3e-4)
    device = next(net.parameters()).device
    net.train()
    for _ in range(steps):
        x, _ = sample_batch(img, size, batch, gen, balanced=False)
        lum, target = make_pair(x, gen)
        chroma, _ = net(lum.to(device))
        loss = F.mse_loss(chroma, target.to(device))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()
