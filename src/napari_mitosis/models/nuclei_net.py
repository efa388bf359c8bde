"""nuclei-hover: nucleus instance segmentation with an ImageNet-initialised encoder.

The encoder is the project's EfficientNet-Lite0 (:mod:`napari_mitosis.models.effnet`, the same
module as the detector's ``cell-dense``) cut after block 10 (stride 16, 112 channels; ImageNet
weights at training start). A light U-Net decoder adds the stride-8, -4 and -2 features and a
small full-resolution branch on the image itself, and predicts at the input's resolution:

- 3 logits: background / nucleus interior / nuclear boundary (softmax), and
- 2 maps in [-1, 1]: the horizontal and vertical distance of each nuclear pixel to its nucleus's
  centre, normalised by the nucleus's extent (HoVer-Net, Graham et al. 2019).

:func:`napari_mitosis.core.nuclei.hover_to_instances` turns them into instances with a
marker-controlled watershed (touching nuclei separate where the distance maps flip sign).

>>> import torch
>>> net = NucleiNet()
>>> net(torch.zeros(1, 3, 40, 56)).shape
torch.Size([1, 5, 40, 56])
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .effnet import EfficientNetLite0, load_imagenet

#: Output channels, in order.
CHANNELS = ("background", "nucleus", "boundary", "h", "v")
#: Encoder blocks kept and the blocks whose outputs are skip connections (strides 2, 4, 8).
DEPTH = 11
SKIPS = {0: 16, 2: 24, 4: 40}


def _conv(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class NucleiNet(nn.Module):
    """EfficientNet-Lite0 (blocks 0-10) + U-Net decoder; logits (N, 5, H, W) for inputs in [0, 1].

    Any input size works: the input is padded (reflection) to a multiple of 16 inside and the
    output cropped back.
    """

    multiple = 16

    def __init__(self, width: int = 48, unit_input: bool = True):
        super().__init__()
        self.encoder = EfficientNetLite0(n_classes=1, depth=DEPTH, head=False, unit_input=unit_input)
        del self.encoder._fc
        w = width
        self.lat16 = _conv(112, w, 1)
        self.up8 = _conv(w + SKIPS[4], w)
        self.up4 = _conv(w + SKIPS[2], w // 2)
        self.up2 = _conv(w // 2 + SKIPS[0], w // 2)
        self.full = _conv(3, 8)
        self.up1 = _conv(w // 2 + 8, 16)
        self.head = nn.Conv2d(16, len(CHANNELS), 1)

    def forward(self, x):
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.multiple, (-w) % self.multiple
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect" if min(h, w) > max(ph, pw) else "replicate")
        e = self.encoder
        y = e.stem(x)
        skips = {}
        for i, block in enumerate(e._blocks):
            y = block(y)
            if i in SKIPS:
                skips[i] = y
        y = self.lat16(y)
        for conv, i in ((self.up8, 4), (self.up4, 2), (self.up2, 0)):
            y = F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False)
            y = conv(torch.cat([y, skips[i]], 1))
        y = F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False)
        y = self.up1(torch.cat([y, self.full(x)], 1))
        return self.head(y)[..., :h, :w]


def build_nuclei_net(width: int = 48, unit_input: bool = True) -> NucleiNet:
    """Registry builder (``napari_mitosis.models.nuclei_net:build_nuclei_net``)."""
    return NucleiNet(width=width, unit_input=unit_input)


def imagenet_nuclei_net(width: int = 48) -> NucleiNet:
    """A NucleiNet whose encoder starts from the ImageNet weights (training only)."""
    net = NucleiNet(width=width)
    load_imagenet(net.encoder)
    return net


def split_output(out: torch.Tensor):
    """(softmax probabilities (N, 3, H, W), distance maps in [-1, 1] (N, 2, H, W)) of the logits."""
    return torch.softmax(out[:, :3], 1), torch.tanh(out[:, 3:])


@torch.no_grad()
def predict_maps(net: nn.Module, rgb, device=None) -> np.ndarray:
    """Float32 maps ``(5, H, W)`` of one RGB uint8 image: P(background), P(nucleus),
    P(boundary), h, v.

    >>> p = predict_maps(NucleiNet().eval(), np.zeros((20, 30, 3), np.uint8))
    >>> p.shape, bool(np.allclose(p[:3].sum(0), 1, atol=1e-5)), bool(np.abs(p[3:]).max() <= 1)
    ((5, 20, 30), True, True)
    """
    a = np.ascontiguousarray(np.asarray(rgb)[..., :3])
    if device is None:
        device = next(net.parameters()).device
    net = net.to(memory_format=torch.channels_last)
    x = torch.from_numpy(a).to(device).permute(2, 0, 1)[None].float().div_(255.0)
    probs, hv = split_output(net(x.contiguous(memory_format=torch.channels_last)))
    return torch.cat([probs, hv], 1)[0].float().cpu().numpy()
