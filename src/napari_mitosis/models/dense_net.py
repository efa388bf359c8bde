"""cell-dense: the detector's first stage, a fully convolutional network that turns a tile into
likelihood maps of mitotic figures and granulocytes (one channel each) at 2 um/px: input at
0.5 um/px with the maps at a quarter of its resolution (``out_stride=4``), or input at 1.0 um/px
with the maps at half of it (``out_stride=2``, four times fewer pixels to run). Their local maxima are the candidates the second stage
classifies ("fast and slow" two-stage detection as in the MIDOG 2021/2022 winners; a
centroid heatmap as CenterNet).

The encoder is EfficientNet-Lite0 cut after its third stage (blocks 0-4, stride 8, 40
channels; ImageNet weights at training start); a two-level decoder adds the stride-4 features
(and with ``out_stride=2`` a third level the stride-2 features).

>>> import torch
>>> net = CellDense()
>>> net(torch.zeros(1, 3, 128, 96)).shape
torch.Size([1, 2, 32, 24])
>>> CellDense(out_stride=2)(torch.zeros(1, 3, 64, 48)).shape
torch.Size([1, 2, 32, 24])
>>> heat = torch.zeros(1, 2, 8, 8); heat[0, 0, 3, 5] = 0.9; heat[0, 1, 6, 1] = 0.4
>>> heatmap_peaks(heat[0].numpy(), 0.3).round(2).tolist()
[[5.0, 3.0, 0.0, 0.9], [1.0, 6.0, 1.0, 0.4]]
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .effnet import EfficientNetLite0

#: Input pixel size (um/px) and the output's stride of the first design (``out_stride=4``); a
#: model's own are its spec's ``mpp`` and ``config.out_stride``.
DENSE_MPP = 0.5
STRIDE = 4
#: The map's pixel size (um/px), the same for both designs: targets and peaks are in these units.
MAP_MPP = DENSE_MPP * STRIDE
CLASSES = ("mitotic_figure", "granulocyte")


class CellDense(nn.Module):
    """EfficientNet-Lite0 blocks 0-4 and a small decoder; outputs logits (N, 2, H/s, W/s) for
    ``out_stride`` s (4 or 2)."""

    def __init__(self, width: int = 32, n_classes: int = 2, unit_input: bool = False, out_stride: int = 4):
        super().__init__()
        if out_stride not in (2, 4):
            raise ValueError(f"out_stride must be 2 or 4, got {out_stride}")
        self.stride = out_stride
        self.encoder = EfficientNetLite0(n_classes=1, depth=5, head=False, unit_input=unit_input)
        del self.encoder._fc  # the encoder's classifier is not used
        self.lat4 = nn.Conv2d(24, width, 1)
        self.lat8 = nn.Conv2d(40, width, 1)
        self.fuse = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        if out_stride == 2:
            self.lat2 = nn.Conv2d(16, width, 1)
        self.out = nn.Conv2d(width, n_classes, 1)
        nn.init.constant_(self.out.bias, -4.0)  # rare positives: start near p = 0.02

    def forward(self, x):
        e = self.encoder
        x = e.stem(x)
        f2 = f4 = None
        for i, block in enumerate(e._blocks):
            x = block(x)
            if i == 0:
                f2 = x
            elif i == 2:
                f4 = x
        y = self.lat8(x)
        y = F.interpolate(y, size=f4.shape[-2:], mode="bilinear", align_corners=False) + self.lat4(f4)
        y = self.fuse(F.relu(y))
        if self.stride == 2:
            y = F.relu(F.interpolate(y, size=f2.shape[-2:], mode="bilinear", align_corners=False) + self.lat2(f2))
        return self.out(y)


def build_cell_dense(width: int = 32, unit_input: bool = True, out_stride: int = 4):
    """Registry builder: cell-dense on [0, 1] RGB inputs."""
    return CellDense(width=width, unit_input=unit_input, out_stride=out_stride)


def heatmap_peaks(prob: np.ndarray, threshold: float, min_distance: int = 1) -> np.ndarray:
    """Local maxima of each class map above ``threshold``: rows (x, y, class index, value) in
    map pixels, sorted by class then decreasing value. A peak must be the maximum of its
    (2 * min_distance + 1) square neighbourhood across both classes' own map."""
    import cv2

    out = []
    k = np.ones((2 * min_distance + 1,) * 2, np.uint8)
    for c in range(prob.shape[0]):
        p = np.ascontiguousarray(prob[c], np.float32)
        mx = cv2.dilate(p, k)
        ys, xs = np.nonzero((p >= mx) & (p >= threshold))
        v = p[ys, xs]
        order = np.argsort(-v, kind="stable")
        out.append(np.column_stack([xs[order], ys[order], np.full(len(order), c), v[order]]).astype(float))
    return np.vstack(out) if out else np.zeros((0, 4))


def dense_probabilities(net, rgb: np.ndarray, stride: int = STRIDE) -> np.ndarray:
    """Class likelihood maps (2, ceil(H/s), ceil(W/s)) of an RGB uint8 image at the network's
    pixel size, for its output stride s (the image is mirrored up to a multiple of 8 px; ``net``
    takes [0, 1] inputs)."""
    import cv2

    h, w = rgb.shape[:2]
    x = cv2.copyMakeBorder(np.ascontiguousarray(rgb), 0, (-h) % 8, 0, (-w) % 8, cv2.BORDER_REFLECT101)
    device = next(iter(net.parameters())).device if hasattr(net, "parameters") else "cpu"
    t = torch.from_numpy(x).to(device).permute(2, 0, 1)[None].float().div_(255.0)
    with torch.no_grad():
        p = torch.sigmoid(net(t.contiguous(memory_format=torch.channels_last)))[0].cpu().numpy()
    return p[:, : -(-h // stride), : -(-w // stride)]


def dense_candidates(prob: np.ndarray, thresholds, merge_px: float | None = None,
                     stride: int = STRIDE) -> tuple[np.ndarray, np.ndarray]:
    """Candidates from the likelihood maps: the peaks of each class map at or above that class's
    threshold (``thresholds``: one per class), refined to the weighted centroid of their 3 x 3
    neighbourhood, in pixels of the network's input image (``stride`` of them per map pixel);
    peaks of the two maps closer than ``merge_px`` (default 4 um) are one candidate (the
    stronger). Returns positions (n, 2) and each candidate's value in both maps (n, 2),
    strongest first.

    >>> p = np.zeros((2, 6, 6), np.float32); p[0, 2, 3] = 0.8; p[0, 2, 4] = 0.8; p[1, 2, 3] = 0.5
    >>> xy, v = dense_candidates(p, (0.3, 0.3))
    >>> xy.round(1).tolist(), v.round(2).tolist()
    ([[15.5, 9.5]], [[0.8, 0.5]])
    """
    from scipy.spatial import cKDTree

    if merge_px is None:
        merge_px = 4.0 / (MAP_MPP / stride)
    n_cls, H, W = prob.shape
    xy, vals = [], []
    for c in range(n_cls):
        pk = heatmap_peaks(prob[c : c + 1], float(thresholds[c]))
        for x, y, _, _ in pk:
            x, y = int(x), int(y)
            y0, y1, x0, x1 = max(y - 1, 0), min(y + 2, H), max(x - 1, 0), min(x + 2, W)
            win = prob[c, y0:y1, x0:x1].astype(float)
            yy, xx = np.mgrid[y0:y1, x0:x1]
            xy.append(((win * xx).sum() / win.sum(), (win * yy).sum() / win.sum()))
            vals.append(prob[:, y, x])
    if not xy:
        return np.zeros((0, 2)), np.zeros((0, n_cls))
    xy = (np.asarray(xy) + 0.5) * stride - 0.5
    vals = np.asarray(vals, float)
    order = np.argsort(-vals.max(1), kind="stable")
    xy, vals = xy[order], vals[order]
    alive = np.ones(len(xy), bool)
    keep = []
    tree = cKDTree(xy)
    for i in range(len(xy)):
        if alive[i]:
            keep.append(i)
            alive[tree.query_ball_point(xy[i], merge_px)] = False
    return xy[keep], vals[keep]
