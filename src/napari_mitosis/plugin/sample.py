"""npe2 sample data: a synthetic H&E slide with its ground truth."""

from __future__ import annotations

import os
from pathlib import Path

from ..io.slide import open_slide
from .reader import layer_data

#: Synthetic sample slide size (rows, columns) at 0.25 um/px.
SAMPLE_SHAPE = (4096, 4096)


def cache_dir() -> Path:
    """Where generated samples are kept (``$NAPARI_MITOSIS_CACHE`` or ~/.cache/napari-mitosis)."""
    root = os.environ.get("NAPARI_MITOSIS_CACHE") or Path.home() / ".cache" / "napari-mitosis"
    return Path(root)


def synthetic_slide(shape=SAMPLE_SHAPE, seed: int = 0):
    """A synthetic slide (pyramidal OME-TIFF, generated once and cached) and truth points."""
    from ..pipeline.demo import synthetic_slide_path

    path, synth = synthetic_slide_path(cache_dir(), shape=shape, seed=seed)
    slide = open_slide(path)
    image = layer_data(slide)
    cells = synth.cells()
    special = cells[cells["class"] != "other"]
    mpp = slide.mpp
    colours = {"mitotic_figure": "red", "granulocyte": "orange"}
    points = (
        special[["y", "x"]].to_numpy(),
        {
            "name": "ground truth (synthetic)",
            "scale": (mpp, mpp),
            "units": ("micrometer", "micrometer"),
            "size": 12.0 / mpp,  # 12 um circles
            "face_color": "transparent",
            "border_color": [colours[c] for c in special["class"]],
            "border_width": 0.1,
            "properties": {"class": special["class"].to_numpy(), "shape": special["shape"].to_numpy()},
            "visible": True,
        },
        "points",
    )
    return [image, points]
