"""cell-screen: a small CNN that scores screening candidates before the GSTN (a cascade stage).

Whole-slide detection (``pipeline/detect.py``) finds hematoxylin blobs on an
image read at the screening resolution (0.5 um/px) and, for each candidate that
passes the hand-set screening thresholds, reads a 128 px crop at 0.25 um/px from
level 0 and runs the GSTN on it. This network looks at a ``P x P`` patch
(default 32 px = 16 um) of the screening image itself -- already in memory, no
extra read -- and returns the probabilities of ``mitotic_figure``,
``granulocyte`` and ``other``, so that the expensive stage runs only on the
candidates it keeps (``thresholds["keep"]`` of the shipped spec on
``max(p_mitotic_figure, p_granulocyte)``).

Network: four 3x3 conv + BN + ReLU stages (8-16-32-64 channels by default),
2x2 max pooling between them, global average + max pooling, one linear layer.
Input: RGB uint8 values as float (0-255); the scaling is inside the network.

See ``training/train_screen.py`` (data, training) and ``docs/screen_net.md``.
"""

from __future__ import annotations

import numpy as np

from .tensors import rgb_to_tensor

CLASSES = ("mitotic_figure", "granulocyte", "other")
SCREEN_MPP = 0.5
PATCH = 32


def build_screen_net(widths=(8, 16, 32, 64), n_classes: int = 3, patch_size: int = PATCH, dropout: float = 0.1):
    """The registry builder: ``ScreenNet`` with the given stage widths."""
    import torch
    from torch import nn

    class ScreenNet(nn.Module):
        def __init__(self):
            super().__init__()
            layers, c_in = [], 3
            for i, w in enumerate(widths):
                if i:
                    layers.append(nn.MaxPool2d(2))
                layers += [nn.Conv2d(c_in, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
                c_in = w
            self.features = nn.Sequential(*layers)
            self.drop = nn.Dropout(dropout)
            self.head = nn.Linear(2 * c_in, n_classes)
            self.patch_size = patch_size

        def forward(self, x):  # x: (n, 3, P, P) float, RGB values 0..255
            f = self.features(x * (1.0 / 127.5) - 1.0)
            f = torch.cat([f.mean((2, 3)), f.amax((2, 3))], 1)
            return self.head(self.drop(f))

    return ScreenNet()


def patches_at(rgb: np.ndarray, xs, ys, size: int = PATCH) -> np.ndarray:
    """``(n, size, size, 3)`` uint8 patches of ``rgb`` centred on the points (white outside the image).

    The patch of a point at pixel ``(x, y)`` spans columns ``round(x) - size // 2``
    to ``round(x) + (size - 1) // 2`` (the pixel itself is the centre, or just
    right/below of it for even sizes).

    >>> img = np.zeros((10, 10, 3), np.uint8)
    >>> p = patches_at(img, [0.0, 5.0], [0.0, 5.0], 4)
    >>> p.shape, int(p[0, 0, 0, 0]), int(p[0, 2, 2, 0]), int(p[1].max())
    ((2, 4, 4, 3), 255, 0, 0)
    """
    rgb = np.asarray(rgb)[..., :3]
    xs = np.rint(np.asarray(xs, float)).astype(np.int64).reshape(-1)
    ys = np.rint(np.asarray(ys, float)).astype(np.int64).reshape(-1)
    n = len(xs)
    if n == 0:
        return np.zeros((0, size, size, 3), np.uint8)
    h, w = rgb.shape[:2]
    lo, hi = size // 2, (size - 1) // 2
    if xs.min() >= lo and ys.min() >= lo and xs.max() < w - hi and ys.max() < h - hi:
        padded, ox, oy = rgb, -lo, -lo  # all inside: no copy of the image
    else:  # white margins wide enough for every point (points far outside see only white)
        px = int(max(lo - xs.min(), xs.max() - (w - 1 - hi), 0))
        py = int(max(lo - ys.min(), ys.max() - (h - 1 - hi), 0))
        padded = np.pad(rgb, ((py, py), (px, px), (0, 0)), constant_values=255)
        ox, oy = px - lo, py - lo
    # every patch is a window of the image: rows of `size` pixels copied as blocks, no gather
    win = np.lib.stride_tricks.sliding_window_view(padded, (size, size), axis=(0, 1))  # (H', W', 3, size, size)
    out = win[ys + oy, xs + ox]  # (n, 3, size, size)
    return np.ascontiguousarray(out.transpose(0, 2, 3, 1), dtype=np.uint8)


def to_tensor(patches: np.ndarray):
    """``(n, P, P, 3)`` uint8 -> ``(n, 3, P, P)`` float32 tensor (0-255) in channels-last memory."""
    return rgb_to_tensor(patches, scale=1.0, channels_last=True)


def screen_probs(net, rgb: np.ndarray, xs, ys, batch: int = 256) -> np.ndarray:
    """Softmax probabilities ``(n, 3)`` float32 of the candidates at ``(xs, ys)`` (pixels of ``rgb``).

    ``rgb`` must be at the network's pixel size (0.5 um/px for ``cell-screen``).
    """
    import torch

    size = int(getattr(net, "patch_size", PATCH))
    xs = np.asarray(xs, float).reshape(-1)
    ys = np.asarray(ys, float).reshape(-1)
    n_cls = net.head.out_features if hasattr(net, "head") else len(CLASSES)
    out = np.zeros((len(xs), n_cls), np.float32)
    if len(xs) == 0:
        return out
    was_training = net.training
    net.eval()
    dev = next(net.parameters()).device
    with torch.no_grad():
        for i in range(0, len(xs), batch):
            p = patches_at(rgb, xs[i : i + batch], ys[i : i + batch], size)
            logits = net(to_tensor(p).to(dev))
            out[i : i + batch] = torch.softmax(logits.float(), 1).cpu().numpy()
    if was_training:
        net.train()
    return out
