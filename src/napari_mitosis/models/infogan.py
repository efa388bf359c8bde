"""InfoGAN for unsupervised nucleus typing (issue #9; the paper's sections 2.3, 3.3).

- **Generator** ``G(z, c)``: ``z`` is ``n_noise`` (16) standard-normal values,
  ``c`` a one-hot categorical code of ``n_classes`` (K, 3 by default); a
  DCGAN-style stack (linear to 5 x 5, three transposed convolutions) draws a
  40 x 40 RGB nucleus in -1..1.
- **Shared discriminator body** ``D``: three strided convolutions (40 -> 20 ->
  10 -> 5) with leaky ReLU, no batch normalisation (the gradient penalty is
  per sample), flattened.
- **Adversarial head** ``D_D``: one linear unit, the Wasserstein critic
  (trained with the gradient penalty of Gulrajani et al.).
- **Auxiliary head** ``D_Q``: two linear layers giving the K logits of ``c``;
  trained with the mutual-information lower bound (cross-entropy of the
  sampled ``c`` on generated nuclei). Its argmax on a real nucleus is the type.

Inputs are RGB in -1..1 (``pipeline.typing.to_tensor``). Layers are written
here; nothing is downloaded.

Examples
--------
>>> import torch
>>> g = InfoGAN(n_classes=3, width=8)
>>> z, c = g.sample_latent(4, generator=torch.Generator().manual_seed(0))
>>> x = g.generate(z, c)
>>> tuple(x.shape), tuple(g.critic(x).shape), tuple(g.classify(x).shape)
((4, 3, 40, 40), (4,), (4, 3))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: Side of the nucleus images (px), the paper's input size.
SIZE = 40
#: Dimension of the noise vector z (paper: 16).
N_NOISE = 16


class Generator(nn.Module):
    """``G(z, c)``: (N, n_noise) noise and (N, K) one-hot code -> (N, 3, 40, 40) in -1..1."""

    def __init__(self, n_noise: int = N_NOISE, n_classes: int = 3, width: int = 32):
        super().__init__()
        self.width = width
        self.fc = nn.Sequential(nn.Linear(n_noise + n_classes, 4 * width * 25), nn.BatchNorm1d(4 * width * 25), nn.ReLU(True))
        self.net = nn.Sequential(
            nn.ConvTranspose2d(4 * width, 2 * width, 4, 2, 1, bias=False),  # 5 -> 10
            nn.BatchNorm2d(2 * width),
            nn.ReLU(True),
            nn.ConvTranspose2d(2 * width, width, 4, 2, 1, bias=False),  # -> 20
            nn.BatchNorm2d(width),
            nn.ReLU(True),
            nn.ConvTranspose2d(width, 3, 4, 2, 1),  # -> 40
            nn.Tanh(),
        )

    def forward(self, z, c):
        h = self.fc(torch.cat([z, c], 1)).view(-1, 4 * self.width, 5, 5)
        return self.net(h)


class DiscriminatorBody(nn.Module):
    """The shared body ``D``: (N, 3, 40, 40) -> (N, 4 * width * 25) features."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.out_features = 4 * width * 25
        self.net = nn.Sequential(
            nn.Conv2d(3, width, 4, 2, 1),  # 40 -> 20
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(width, 2 * width, 4, 2, 1),  # -> 10
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(2 * width, 4 * width, 4, 2, 1),  # -> 5
            nn.LeakyReLU(0.2, True),
            nn.Flatten(),
        )

    def forward(self, x):
        return self.net(x)


class InfoGAN(nn.Module):
    """Generator, shared discriminator body, ``D_D`` (critic) and ``D_Q`` (code) heads.

    Parameters
    ----------
    n_classes : int
        K, the number of categories of the code ``c`` (= nucleus types).
    n_noise : int
        Dimension of ``z``.
    width : int
        Base channel width of the generator and the discriminator.
    """

    def __init__(self, n_classes: int = 3, n_noise: int = N_NOISE, width: int = 32, q_hidden: int = 128):
        super().__init__()
        if n_classes < 2:
            raise ValueError(f"the categorical code needs at least 2 classes, got {n_classes}")
        self.n_classes = n_classes
        self.n_noise = n_noise
        self.G = Generator(n_noise, n_classes, width)
        self.D = DiscriminatorBody(width)
        self.D_D = nn.Linear(self.D.out_features, 1)
        self.D_Q = nn.Sequential(nn.Linear(self.D.out_features, q_hidden), nn.LeakyReLU(0.2, True), nn.Linear(q_hidden, n_classes))

    # the pieces -------------------------------------------------------------
    def sample_latent(self, n: int, codes=None, generator=None, device=None):
        """``z`` ~ N(0, 1) and one-hot ``c`` (uniform over K unless ``codes`` are given)."""
        device = device or next(self.parameters()).device
        z = torch.randn(n, self.n_noise, generator=generator).to(device)
        if codes is None:
            codes = torch.randint(0, self.n_classes, (n,), generator=generator)
        c = F.one_hot(torch.as_tensor(codes).long().reshape(-1), self.n_classes).float().to(device)
        return z, c

    def generate(self, z, c):
        return self.G(z, c)

    def critic(self, x):
        """``D_D(D(x))``: the Wasserstein critic's score, (N,)."""
        _check(x)
        return self.D_D(self.D(x)).squeeze(1)

    def classify(self, x):
        """``D_Q(D(x))``: logits of the categorical code, (N, K)."""
        _check(x)
        return self.D_Q(self.D(x))

    def heads(self, x):
        """Both heads on one pass of the body: (critic score, code logits)."""
        _check(x)
        h = self.D(x)
        return self.D_D(h).squeeze(1), self.D_Q(h)

    def features(self, x):
        """The shared body's features (N, F)."""
        _check(x)
        return self.D(x)

    def forward(self, x):
        """Inference: the code logits of real nuclei (N, 3, 40, 40) -> (N, K)."""
        return self.classify(x)


def _check(x):
    if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] != SIZE or x.shape[3] != SIZE:
        raise ValueError(f"expected nuclei as (N, 3, {SIZE}, {SIZE}) RGB in -1..1 at 0.5 um/px, got {tuple(x.shape)}")


def gradient_penalty(model: InfoGAN, real, fake):
    """Gulrajani et al.'s penalty ``E[(||grad_x D_D(D(x))|| - 1)^2]`` on random interpolates."""
    a = torch.rand(real.shape[0], 1, 1, 1, device=real.device)
    x = (a * real + (1 - a) * fake).requires_grad_(True)
    score = model.critic(x)
    (grad,) = torch.autograd.grad(score.sum(), x, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


def build_infogan(**config) -> InfoGAN:
    """Registry builder (``napari_mitosis.models.infogan:build_infogan``)."""
    return InfoGAN(**config)


def count_parameters(net) -> int:
    return sum(p.numel() for p in net.parameters())
