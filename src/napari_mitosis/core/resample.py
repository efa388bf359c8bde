"""Small resampling helpers for pyramids."""

from __future__ import annotations

import numpy as np


def mean2x2(block: np.ndarray) -> np.ndarray:
    """Halve an image by averaging 2x2 pixel blocks (rounded; an odd last row/column is dropped).

    Examples
    --------
    >>> mean2x2(np.array([[0, 2, 9], [4, 6, 9], [9, 9, 9]], np.uint8))
    array([[3]], dtype=uint8)
    """
    h, w = block.shape[0] // 2 * 2, block.shape[1] // 2 * 2
    b = block[:h, :w].astype(np.uint16)
    s = b[0::2, 0::2] + b[1::2, 0::2] + b[0::2, 1::2] + b[1::2, 1::2]
    return ((s + 2) // 4).astype(block.dtype)
