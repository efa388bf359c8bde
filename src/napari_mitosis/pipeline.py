"""Long tasks as generators: they yield :class:`Progress`, then return the result.

The same generator drives a napari thread worker (yielded values update the
progress bar, the return value reaches ``worker.returned``; closing the
generator between two yields cancels it) and the CLI (:func:`run`).

Examples
--------
>>> def task():
...     for i in range(3):
...         yield Progress(i, 3, "working")
...     return "result"
>>> seen = []
>>> run(task(), on_progress=seen.append)
'result'
>>> [p.done for p in seen]
[0, 1, 2]
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .core.tissue import TissueMask, tissue_mask

#: Pixel size the tissue mask is computed at (um/px).
TISSUE_MPP = 8.0
#: Without a known pixel size, the tissue mask's longer side in pixels.
TISSUE_SIDE = 2048


@dataclass(frozen=True)
class Progress:
    """One step of a long task: ``done`` of ``total`` units, and what is going on."""

    done: int
    total: int
    message: str = ""

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0


Task = Generator[Progress, None, object]


def run(task: Task, on_progress: Callable[[Progress], None] | None = None):
    """Drive a task generator to its end and return its result."""
    while True:
        try:
            p = next(task)
        except StopIteration as stop:
            return stop.value
        if on_progress is not None:
            on_progress(p)


# --------------------------------------------------------------------------- tissue
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


# ----------------------------------------------------------------------------- demo
DEMO_SHAPE = (4096, 6144)


def synthetic_slide_path(
    folder, shape=DEMO_SHAPE, seed: int = 0, progress: Callable[[int, int], None] | None = None
) -> tuple[Path, object]:
    """Write (or reuse) a synthetic demo slide in ``folder``; returns its path and generator."""
    from .core.synthetic import SyntheticHE
    from .io.pyramid_writer import write_synthetic_slide

    synth = SyntheticHE(shape=tuple(shape), seed=seed, mitosis_fraction=0.01)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"synthetic_seed{seed}_{shape[0]}x{shape[1]}.ome.tif"
    if not path.exists():
        write_synthetic_slide(path, synth, progress=progress)
    return path, synth


def demo_task(slide_path, out_dir, mpp: float | None = None, truth=None) -> Task:
    """What the demo runs on a slide: open it, detect tissue, write results.

    Writes into ``out_dir``: ``slide_info.json``, ``tissue_mask.png``,
    ``overview.png`` (tissue outlined in green, ground-truth mitoses in red
    and granulocytes in orange when known), ``counts.csv`` (tissue area) and,
    for a synthetic slide, ``ground_truth.csv``.

    Returns
    -------
    dict summary (also written as ``summary.json``).
    """
    from skimage.io import imsave

    from .io import open_slide

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    yield Progress(0, 3, f"opening {Path(slide_path).name}")
    slide = open_slide(slide_path, mpp=mpp)
    with slide:
        open_s = time.perf_counter() - t0
        info = slide.info()
        (out / "slide_info.json").write_text(json.dumps(info, indent=2))
        tissue = yield from _scaled(tissue_task(slide), 1, 2)
        imsave(out / "tissue_mask.png", (tissue.mask * 255).astype(np.uint8), check_contrast=False)
        thumb = slide.thumbnail(1600)
        overview = draw_overview(thumb, tissue.mask)
        cells = None
        if truth is not None:
            cells = truth.cells()
            cells.to_csv(out / "ground_truth.csv", index=False)
            overview = draw_points(overview, cells, slide.shape[1] / thumb.shape[1])
        imsave(out / "overview.png", overview, check_contrast=False)
        summary = {
            "slide": str(slide_path),
            "format": slide.format,
            "size_px": list(slide.dimensions),
            "mpp": slide.mpp,
            "levels": slide.level_count,
            "open_seconds": round(open_s, 4),
            "tissue_area_mm2": None if tissue.area_mm2 is None else round(tissue.area_mm2, 3),
            "tissue_fraction": round(tissue.fraction, 4),
        }
        if cells is not None:
            summary["truth_mitotic_figures"] = int((cells["class"] == "mitotic_figure").sum())
            summary["truth_granulocytes"] = int((cells["class"] == "granulocyte").sum())
        import pandas as pd

        pd.DataFrame([summary]).to_csv(out / "counts.csv", index=False)
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    yield Progress(3, 3, "done")
    return summary


def _scaled(task: Task, start: int, total: int):
    """Re-yield a sub-task's progress as one step of an outer task."""
    while True:
        try:
            p = next(task)
        except StopIteration as stop:
            return stop.value
        yield Progress(start, total + 1, p.message)


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
