"""Fine-tuning the neural stain normaliser to a reference style (and the crops it learns from).

:meth:`napari_mitosis.models.stain_net.NeuralStainNormalizer.fit` adapts the shipped
network to a reference image with :func:`finetune` (a few hundred steps of the chroma
loss): part of using the normaliser, so it lives with the network; the full training
(:mod:`napari_mitosis.training.train_stain`) uses the same crops and pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from .stain_net import AB_SCALE, StainTransferNet, rgb_to_lab


@dataclass
class StyleImage:
    name: str
    group: str
    rgb: np.ndarray  # at WORK_MPP
    points: np.ndarray  # (n, 3): x, y at WORK_MPP, class index (1 mitosis, 2 look-alike)


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
