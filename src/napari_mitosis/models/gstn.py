"""The guided spatial transformer network (GSTN) for cell differentiation, and its baseline.

Aubreville et al., *A Guided Spatial Transformer Network for Histology Cell
Differentiation* (VCBM 2017), sections 4.1-4.4:

- input: ``d_i = 128`` px at 0.25 um/px, the cell anywhere inside it;
- **localizer**: two convolution + max-pool stages, one inception block and two
  fully connected layers regress the affine matrix ``theta`` (2 x 3);
- **spatial transformer**: :func:`torch.nn.functional.affine_grid` /
  :func:`~torch.nn.functional.grid_sample` sample a 64 x 64 crop at scale
  ``theta_s = d_c / d_i = 0.5`` around the cell (``d_c = 64`` px);
- **classifier**: 7 layers (convolution, max-pool, convolution, max-pool,
  inception, two fully connected) give the class scores.

Coordinates follow the paper: the STN grid runs from -1 to 1 across the input
with 0 at its centre, and a crop whose origin was shifted by ``Delta`` pixels
has the ground-truth matrix of equations 1-3::

    theta = [[s, 0, tx], [0, s, ty]],  s = 0.5,  t = -2 * Delta / d_i

i.e. ``(tx, ty)`` is the cell's position in normalised coordinates and the
cell lies at ``centre - Delta`` pixels. :func:`theta_to_xy` and
:func:`xy_to_theta` convert between the two (``align_corners=False``).

The baseline (section 4.4) is a 12-layer CNN in the style of Ciresan et al.
(MICCAI 2013): five convolution + max-pool pairs and two fully connected
layers on the full 128 x 128 input.

Both networks return raw class scores (logits); apply ``softmax`` for
probabilities. Layers are written here (no torchvision).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: Input side (px) and working pixel size (um/px) of the paper.
INPUT_SIZE = 128
WORK_MPP = 0.25
#: Side of the crop the transformer hands to the classifier (the expected cell size d_c).
CROP_SIZE = 64
#: theta_s = d_c / d_i (equation 2).
THETA_SCALE = CROP_SIZE / INPUT_SIZE


def conv_bn(cin: int, cout: int, k: int, stride: int = 1) -> nn.Sequential:
    """Convolution (same padding), batch normalisation and ReLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class Inception(nn.Module):
    """An inception block (Szegedy et al. 2014): 1x1, 1x1-3x3, 1x1-5x5 and pool-1x1 branches, concatenated."""

    def __init__(self, cin: int, c1: int, c3r: int, c3: int, c5r: int, c5: int, cp: int):
        super().__init__()
        self.b1 = conv_bn(cin, c1, 1)
        self.b3 = nn.Sequential(conv_bn(cin, c3r, 1), conv_bn(c3r, c3, 3))
        self.b5 = nn.Sequential(conv_bn(cin, c5r, 1), conv_bn(c5r, c5, 5))
        self.bp = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), conv_bn(cin, cp, 1))
        self.out_channels = c1 + c3 + c5 + cp

    def forward(self, x):
        return torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(x)], 1)


def _inception(cin: int, width: int) -> Inception:
    """An inception block of ``4 * width`` output channels (GoogLeNet 3a proportions)."""
    return Inception(cin, width, width, width, max(width // 2, 4), width, width)


class Localizer(nn.Module):
    """Two conv + max-pool stages, an inception block, two fully connected layers -> theta (N, 2, 3).

    The last layer starts at zero weight with the bias of the centred crop,
    ``[[s, 0, 0], [0, s, 0]]``, the usual spatial-transformer initialisation.
    """

    def __init__(self, width: int = 16, hidden: int = 64, dropout: float = 0.2):
        super().__init__()
        self.features = nn.Sequential(
            conv_bn(3, width, 5, stride=2),  # 128 -> 64 (the stride keeps it cheap on a CPU)
            nn.MaxPool2d(2),  # -> 32
            conv_bn(width, 2 * width, 3),
            nn.MaxPool2d(2),  # -> 16
        )
        self.inception = _inception(2 * width, width)
        self.pool = nn.AdaptiveAvgPool2d(8)  # -> 8 x 8
        self.fc1 = nn.Linear(self.inception.out_channels * 64, hidden)
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, 6)
        nn.init.zeros_(self.fc2.weight)
        with torch.no_grad():
            self.fc2.bias.copy_(torch.tensor([THETA_SCALE, 0, 0, 0, THETA_SCALE, 0], dtype=torch.float32))

    def forward(self, x):
        h = self.pool(self.inception(self.features(x)))
        h = self.drop(F.relu(self.fc1(h.flatten(1)), inplace=True))
        return self.fc2(h).view(-1, 2, 3)


class Classifier(nn.Module):
    """The 7-layer classifier on the 64 x 64 crop: conv, pool, conv, pool, inception, fc, fc."""

    def __init__(self, n_classes: int = 3, width: int = 24, hidden: int = 128, dropout: float = 0.3):
        super().__init__()
        self.features = nn.Sequential(
            conv_bn(3, width, 3),
            nn.MaxPool2d(2),  # 64 -> 32
            conv_bn(width, 2 * width, 3),
            nn.MaxPool2d(2),  # -> 16
        )
        self.inception = _inception(2 * width, width)
        self.pool = nn.AdaptiveAvgPool2d(4)  # -> 4 x 4
        self.fc1 = nn.Linear(self.inception.out_channels * 16, hidden)
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, n_classes)

    def forward(self, x):
        h = self.pool(self.inception(self.features(x)))
        return self.fc2(self.drop(F.relu(self.fc1(h.flatten(1)), inplace=True)))


class GSTN(nn.Module):
    """Guided spatial transformer network: localizer -> affine_grid/grid_sample -> classifier.

    Parameters
    ----------
    n_classes : int
        Number of output classes.
    loc_width, cls_width : int
        Channel widths of the localizer and the classifier.

    ``forward(x, theta=None)`` takes ``x`` of shape (N, 3, 128, 128), RGB scaled
    to 0..1 (see :func:`normalise`), and returns ``(logits, theta)``. With
    ``theta`` given (e.g. the ground truth of equations 1-3) the localizer is
    bypassed, which is how stage 1 trains the classifier on centred crops.
    """

    def __init__(self, n_classes: int = 3, loc_width: int = 16, cls_width: int = 24):
        super().__init__()
        self.n_classes = n_classes
        self.localizer = Localizer(width=loc_width)
        self.classifier = Classifier(n_classes=n_classes, width=cls_width)

    def crop(self, x, theta):
        """The 64 x 64 crop the transformer samples from ``x`` under ``theta``."""
        grid = F.affine_grid(theta, (x.shape[0], x.shape[1], CROP_SIZE, CROP_SIZE), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def forward(self, x, theta=None):
        _check_input(x)
        x = normalise(x)
        if theta is None:
            theta = self.localizer(x)
        return self.classifier(self.crop(x, theta)), theta


class CiresanCNN(nn.Module):
    """The baseline: a 12-layer CNN after Ciresan et al. (2013) on the 128 x 128 input.

    Layers: five (convolution, max-pool) pairs with kernels 2, 3, 3, 2, 2 and
    ``width`` maps each, then two fully connected layers (``hidden`` units, then
    the classes). ``forward(x)`` returns ``(logits, None)`` so it can stand in
    for :class:`GSTN`.
    """

    def __init__(self, n_classes: int = 3, width: int = 16, hidden: int = 100, dropout: float = 0.3):
        super().__init__()
        self.n_classes = n_classes
        layers, cin, size = [], 3, INPUT_SIZE
        for k in (2, 3, 3, 2, 2):
            layers += [nn.Conv2d(cin, width, k), nn.BatchNorm2d(width), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            cin, size = width, (size - k + 1) // 2
        self.features = nn.Sequential(*layers)
        self.fc1 = nn.Linear(width * size * size, hidden)
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, n_classes)

    def forward(self, x, theta=None):
        _check_input(x)
        h = self.features(normalise(x)).flatten(1)
        return self.fc2(self.drop(F.relu(self.fc1(h), inplace=True))), None


def build_gstn(**config) -> GSTN:
    """Registry builder for :class:`GSTN`."""
    return GSTN(**config)


def build_baseline(**config) -> CiresanCNN:
    """Registry builder for :class:`CiresanCNN`."""
    return CiresanCNN(**config)


# ------------------------------------------------------------------ helpers
def normalise(x):
    """RGB in 0..1 -> roughly zero mean, unit range (fixed constants, no data statistics)."""
    return (x - 0.5) / 0.25


def _check_input(x):
    if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] != INPUT_SIZE or x.shape[3] != INPUT_SIZE:
        raise ValueError(
            f"expected a batch of RGB crops (N, 3, {INPUT_SIZE}, {INPUT_SIZE}) at {WORK_MPP} um/px, got {tuple(x.shape)}"
        )


def gt_theta(dx, dy, d_i: int = INPUT_SIZE, scale: float = THETA_SCALE) -> torch.Tensor:
    """Ground-truth theta of equations 1-3 for crop-origin offsets ``Delta`` (px), shape (N, 2, 3).

    ``theta = [[s, 0, -2 dx / d_i], [0, s, -2 dy / d_i]]``: the cell, centred
    before the shift, lies at ``centre - Delta`` after it.
    """
    dx = torch.as_tensor(dx, dtype=torch.float32).reshape(-1)
    dy = torch.as_tensor(dy, dtype=torch.float32).reshape(-1)
    theta = torch.zeros(dx.shape[0], 2, 3)
    theta[:, 0, 0] = scale
    theta[:, 1, 1] = scale
    theta[:, 0, 2] = -2.0 * dx / d_i
    theta[:, 1, 2] = -2.0 * dy / d_i
    return theta


def theta_to_xy(theta, d_i: int = INPUT_SIZE):
    """Pixel position (x, y) in the input of the centre of the crop ``theta`` samples.

    With ``align_corners=False`` normalised ``u`` is pixel ``((u + 1) * d_i - 1) / 2``
    (pixel centres at integers; the input's centre is ``(d_i - 1) / 2``).
    """
    t = theta[..., 2] if theta.ndim == 3 else theta
    return ((t[..., 0] + 1) * d_i - 1) / 2, ((t[..., 1] + 1) * d_i - 1) / 2


def xy_to_theta(x, y, d_i: int = INPUT_SIZE, scale: float = THETA_SCALE) -> torch.Tensor:
    """Theta (equation 1) of a crop centred at pixel (x, y) of the input."""
    c = (d_i - 1) / 2
    return gt_theta(c - torch.as_tensor(x, dtype=torch.float32), c - torch.as_tensor(y, dtype=torch.float32), d_i, scale)


def loc_loss(theta_hat, theta, reduction: str = "mean"):
    """The localizer loss of equation 8.

    Squared errors of the translation and of the scales of both columns
    (equations 6-7) against the ground truth, plus the penalties for unequal
    diagonal and non-opposite off-diagonal elements (a rotation with scale).
    The rotation angle itself is free.
    """
    t1, t2, tx = theta_hat[:, 0, 0], theta_hat[:, 0, 1], theta_hat[:, 0, 2]
    t3, t4, ty = theta_hat[:, 1, 0], theta_hat[:, 1, 1], theta_hat[:, 1, 2]
    s = theta[:, 0, 0]
    sx = torch.sqrt(t1**2 + t3**2 + 1e-12)
    sy = torch.sqrt(t2**2 + t4**2 + 1e-12)
    loss = (
        (tx - theta[:, 0, 2]) ** 2
        + (ty - theta[:, 1, 2]) ** 2
        + (sx - s) ** 2
        + (sy - s) ** 2
        + (t1 - t4) ** 2
        + (t2 + t3) ** 2
    )
    return loss.mean() if reduction == "mean" else loss


def count_parameters(net) -> int:
    return sum(p.numel() for p in net.parameters())
