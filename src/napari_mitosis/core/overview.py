"""Overview pictures: the tissue boundary and the detections drawn on a slide thumbnail (RGB uint8)."""

from __future__ import annotations

import numpy as np


def draw_overview(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Overview with the tissue boundary drawn in green."""
    from skimage.segmentation import find_boundaries
    from skimage.transform import resize

    img = rgb.copy()
    if mask.shape != img.shape[:2]:
        mask = resize(mask, img.shape[:2], order=0) > 0
    edge = find_boundaries(mask, mode="inner")
    img[edge] = (0, 170, 0)
    return img


def draw_points(img: np.ndarray, cells, downsample: float, radius: int = 6) -> np.ndarray:
    """Mark mitotic figures (red) and granulocytes (orange) on an overview."""
    from skimage.draw import circle_perimeter

    img = img.copy()
    colours = {"mitotic_figure": (220, 0, 0), "granulocyte": (255, 140, 0)}
    for cls, colour in colours.items():
        sel = cells[cells["class"] == cls]
        for x, y in zip(sel["x"] / downsample, sel["y"] / downsample, strict=True):
            rr, cc = circle_perimeter(int(y), int(x), radius, shape=img.shape[:2])
            img[rr, cc] = colour
    return img
