"""Tissue detection on a slide, as a task with progress."""

from __future__ import annotations

import numpy as np

from ..core.tissue import TissueMask, tissue_mask
from .progress import Progress, Task, run

#: Pixel size the tissue mask is computed at (um/px).
TISSUE_MPP = 8.0
#: Without a known pixel size, the tissue mask's longer side in pixels.
TISSUE_SIDE = 2048


def tissue_task(slide, target_mpp: float = TISSUE_MPP, rows_per_step: int = 512) -> Task:
    """Detect tissue on a slide at low resolution.

    Reads the coarsest level that is still at least as fine as
    ``target_mpp`` (in row bands, yielding progress), shrinks it to about
    ``target_mpp`` and thresholds it with :func:`~napari_mitosis.core.tissue.tissue_mask`.

    Returns
    -------
    TissueMask
    """
    from skimage.transform import resize

    if slide.mpp is not None:
        level = slide.best_level_for_downsample(target_mpp / slide.mpp)
    else:
        sides = [max(s) for s in slide.level_shapes]
        fits = [i for i, s in enumerate(sides) if s >= TISSUE_SIDE]
        level = fits[-1] if fits else slide.level_count - 1
    arr = slide.levels[level]
    h, w = arr.shape[:2]
    steps = max(1, int(np.ceil(h / rows_per_step)))
    ds = slide.level_downsamples[level]
    if slide.mpp is not None:
        factor = max(1.0, target_mpp / (slide.mpp * ds))
    else:
        factor = max(1.0, max(h, w) / TISSUE_SIDE)
    out_h, out_w = max(1, round(h / factor)), max(1, round(w / factor))
    bands = []
    for i in range(steps):
        yield Progress(i, steps + 1, f"reading level {level} for the tissue mask")
        y0 = i * rows_per_step
        band = slide.read_region(level, 0, int(round(y0 * ds)), w, min(rows_per_step, h - y0))
        bands.append(band)
    image = np.concatenate(bands) if len(bands) > 1 else bands[0]
    if factor > 1.0:
        image = (resize(image, (out_h, out_w), anti_aliasing=True, preserve_range=True) + 0.5).astype(np.uint8)
    yield Progress(steps, steps + 1, "thresholding tissue")
    mask_mpp = None if slide.mpp is None else slide.mpp * slide.shape[1] / out_w
    mask = tissue_mask(image, mpp=mask_mpp)
    result = TissueMask(mask=mask, level=level, downsample=slide.shape[1] / out_w, mpp=mask_mpp, image=image)
    yield Progress(steps + 1, steps + 1, "tissue mask done")
    return result


def detect_tissue(slide, target_mpp: float = TISSUE_MPP) -> TissueMask:
    """Tissue mask of a slide (see :func:`tissue_task`), without progress."""
    return run(tissue_task(slide, target_mpp))
