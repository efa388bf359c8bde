"""The paper's nucleus-segmentation U-Net, small enough for a CPU.

Architecture (paper section 3.2, after Ronneberger et al.): 4 down-sampling
stages and 4 symmetrical up-sampling stages, two 3x3 convolutions per stage,
skip connections that concatenate the encoder features of the same size into
the decoder, and a 1x1 convolution to 3 classes per pixel: background,
nucleus, nuclear boundary.

Differences from the paper, on purpose:

- The base width is 16 channels (16-32-64-128-256) instead of 64 (up to
  512/1024): 1.9 M parameters (3.9 MB of float16 weights) instead of about
  31 M (16x fewer operations), so that it trains in half an hour and runs at
  about a megapixel per second on one CPU core. ``base=32`` is accepted for a
  wider model.
- Batch normalisation after each convolution (faster, steadier training with
  small batches) and "same" padding, so the output has the input's size.
  Input sides must be multiples of 16 (``UNet.multiple``).

Examples
--------
>>> import torch
>>> net = UNet(base=8)
>>> net(torch.zeros(1, 3, 32, 48)).shape
torch.Size([1, 3, 32, 48])
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .tensors import rgb_to_tensor

#: Output classes, in channel order.
CLASSES = ("background", "nucleus", "boundary")


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """U-Net with 4 down / 4 up stages predicting 3 classes per pixel.

    Parameters
    ----------
    base : int
        Channels of the first stage; doubled at each down-sampling (default 16).
    in_channels : int
        Input channels (3 for RGB scaled to 0..1).
    classes : int
        Output channels (3: background, nucleus, boundary). The forward pass
        returns logits; apply ``softmax(dim=1)`` for probabilities.
    """

    #: Input sides must be a multiple of this (2**4 for 4 poolings).
    multiple = 16

    def __init__(self, base: int = 16, in_channels: int = 3, classes: int = 3):
        super().__init__()
        widths = [base * 2**i for i in range(5)]
        self.down = nn.ModuleList()
        c = in_channels
        for w in widths[:4]:
            self.down.append(_block(c, w))
            c = w
        self.bottom = _block(widths[3], widths[4])
        self.upconv = nn.ModuleList()
        self.up = nn.ModuleList()
        for w in reversed(widths[:4]):
            self.upconv.append(nn.ConvTranspose2d(w * 2, w, 2, stride=2))
            self.up.append(_block(w * 2, w))
        self.head = nn.Conv2d(widths[0], classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h % self.multiple or w % self.multiple:
            raise ValueError(f"UNet input sides must be multiples of {self.multiple}, got {h}x{w}")
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottom(x)
        for upconv, block, skip in zip(self.upconv, self.up, reversed(skips), strict=True):
            x = block(torch.cat([upconv(x), skip], dim=1))
        return self.head(x)


def build_unet(base: int = 16, in_channels: int = 3, classes: int = 3) -> UNet:
    """Registry builder (``napari_mitosis.models.unet:build_unet``)."""
    return UNet(base=base, in_channels=in_channels, classes=classes)


def count_parameters(net: nn.Module) -> int:
    """Number of trainable parameters.

    Examples
    --------
    >>> count_parameters(UNet(base=16)) < 2_000_000
    True
    """
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def to_tensor(rgb) -> torch.Tensor:
    """``(H, W, 3)`` uint8 (or a batch ``(N, H, W, 3)``) to a float ``(N, 3, H, W)`` tensor in 0..1."""
    return rgb_to_tensor(rgb, scale=255.0)


@torch.no_grad()
def predict_probabilities(net: nn.Module, rgb, device=None):
    """Softmax probabilities ``(3, H, W)`` float32 numpy for one RGB image of any size.

    The image is padded by reflection to a multiple of 16 and the padding is
    cropped from the output. Runs in channels-last memory format (about twice
    as fast on a CPU).

    Examples
    --------
    >>> import numpy as np
    >>> p = predict_probabilities(UNet(base=4).eval(), np.zeros((20, 30, 3), np.uint8))
    >>> p.shape, bool(np.allclose(p.sum(0), 1, atol=1e-5))
    ((3, 20, 30), True)
    """
    import numpy as np

    a = np.asarray(rgb)
    h, w = a.shape[:2]
    m = UNet.multiple
    ph, pw = (-h) % m, (-w) % m
    if ph or pw:
        a = np.pad(a, ((0, ph), (0, pw), (0, 0)), mode="reflect" if min(h, w) > max(ph, pw) else "edge")
    if device is None:
        device = next(net.parameters()).device
    net = net.to(memory_format=torch.channels_last)
    x = to_tensor(a).to(device).contiguous(memory_format=torch.channels_last)
    p = torch.softmax(net(x), dim=1)[0, :, :h, :w]
    return p.float().cpu().numpy()
