"""Checks every analysis step makes before it reads a pixel."""

from __future__ import annotations

import numpy as np

#: Pixel sizes (um/px) at which cells can be measured; outside this the value is wrong, not the slide.
MPP_RANGE = (0.05, 2.0)


def check_mpp(slide, mpp, error: type[Exception], needs: str, how: str = "--mpp 0.25, or open_slide(path, mpp=0.25)") -> float:
    """The level-0 pixel size to use (``mpp`` overrides the slide's), or ``error`` saying what to do.

    ``needs`` finishes "the pixel size is unknown, so ..." (what cannot be done
    without it); ``how`` says how to pass one.

    >>> from types import SimpleNamespace
    >>> check_mpp(SimpleNamespace(path="s.svs", mpp=0.25), None, ValueError, "x")
    0.25
    >>> check_mpp(SimpleNamespace(path="s.svs", mpp=None), None, ValueError, "cells cannot be measured")
    Traceback (most recent call last):
    ...
    ValueError: s.svs: the pixel size is unknown, so cells cannot be measured; pass it (--mpp 0.25, or open_slide(path, mpp=0.25))
    """
    m = slide.mpp if mpp is None else mpp
    if m is None:
        raise error(f"{slide.path}: the pixel size is unknown, so {needs}; pass it ({how})")
    if not (np.isfinite(m) and MPP_RANGE[0] <= m <= MPP_RANGE[1]):
        raise error(
            f"{slide.path}: pixel size {m:.4g} um/px is outside {MPP_RANGE[0]}-{MPP_RANGE[1]} um/px, where cells can be "
            "seen; if the recorded value is wrong pass the true one with --mpp / mpp="
        )
    return float(m)


def check_roi(slide, roi, error: type[Exception]) -> tuple[int, int, int, int]:
    """``roi`` (level-0 ``x, y, w, h``; None = the whole slide) clipped to the slide, or ``error``.

    >>> from types import SimpleNamespace
    >>> s = SimpleNamespace(shape=(100, 200))
    >>> check_roi(s, None, ValueError), check_roi(s, (150, -10, 100, 50), ValueError)
    ((0, 0, 200, 100), (150, 0, 50, 40))
    """
    H0, W0 = slide.shape
    if roi is None:
        return 0, 0, W0, H0
    try:
        x, y, w, h = (round(float(v)) for v in roi)
    except (TypeError, ValueError):
        raise error(f"region must be (x, y, w, h) in level-0 pixels, got {roi!r}") from None
    if w <= 0 or h <= 0:
        raise error(f"region must have a positive size, got {w} x {h}")
    x1, y1 = min(x + w, W0), min(y + h, H0)
    x, y = max(x, 0), max(y, 0)
    if x1 <= x or y1 <= y:
        raise error(f"region {tuple(roi)} lies outside the slide ({W0} x {H0} level-0 px); use x,y,w,h in level-0 pixels")
    return x, y, x1 - x, y1 - y
