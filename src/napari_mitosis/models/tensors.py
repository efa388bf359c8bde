"""RGB images to network input tensors: the one conversion every network here uses.

Each network states its own input range by the ``scale`` and ``offset`` it
passes (``value / scale - offset``): 0..1 (``scale=255``), -1..1
(``scale=127.5, offset=1``) or the raw 0..255 values (``scale=1``).
"""

from __future__ import annotations

import numpy as np


def rgb_to_tensor(rgb, scale: float = 255.0, offset: float = 0.0, channels_last: bool = False):
    """``(H, W, 3)`` or ``(N, H, W, 3)`` RGB -> float32 tensor ``(N, 3, H, W)`` of ``value / scale - offset``.

    ``channels_last`` keeps the pixels' own memory order (NHWC strides, what
    convolutions in channels-last memory format want) instead of copying to
    NCHW-contiguous memory; the values are the same either way. ``scale=1``
    and ``offset=0`` leave the values as they are.

    Examples
    --------
    >>> t = rgb_to_tensor(np.full((2, 4, 5, 3), 255, np.uint8), scale=127.5, offset=1.0)
    >>> tuple(t.shape), float(t.min()), float(t.max())
    ((2, 3, 4, 5), 1.0, 1.0)
    >>> tuple(rgb_to_tensor(np.zeros((4, 5, 3), np.uint8)).shape)
    (1, 3, 4, 5)
    """
    import torch

    a = np.asarray(rgb)
    if a.ndim == 3:
        a = a[None]
    if channels_last:
        t = torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2).float()
    else:
        t = torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2))).float()
    if scale != 1:
        t = t.div_(scale)
    if offset:
        t = t.sub_(offset)
    return t
