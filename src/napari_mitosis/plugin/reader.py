"""npe2 reader: whole-slide images as multiscale RGB Image layers in micrometres."""

from __future__ import annotations

import warnings
from pathlib import Path

from ..io.slide import Slide, SlideError, open_slide

SUFFIXES = (".svs", ".ndpi", ".tif", ".tiff", ".btf", ".png", ".jpg", ".jpeg", ".zarr")


def get_reader(path):
    """Return a reader for ``path`` when napari-mitosis can open it, else None.

    The slide is opened here (it takes milliseconds and reads no pixels), so
    a file we cannot read is declined with a warning that says why, rather
    than failing later inside napari.
    """
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(path)
    if not (p.suffix.lower() in SUFFIXES or (p.is_dir() and any((p / f).exists() for f in (".zattrs", "zarr.json")))):
        return None
    try:
        slide = open_slide(p)
    except SlideError as exc:
        warnings.warn(f"napari-mitosis cannot open this file: {exc}", stacklevel=2)
        return None
    except Exception as exc:  # never raise into napari
        warnings.warn(f"napari-mitosis cannot open {p}: {type(exc).__name__}: {exc}", stacklevel=2)
        return None

    def reader(_path=None):
        return [layer_data(slide)]

    return reader


def layer_data(slide: Slide) -> tuple:
    """The ``(data, kwargs, 'image')`` tuple of a slide.

    ``scale`` is the pixel size in um (1 when unknown, then the axes are in
    pixels); ``contrast_limits`` are fixed to (0, 255) so napari never
    computes them over the dask pyramid.
    """
    mpp = slide.mpp
    scale = (mpp, mpp) if mpp else (1.0, 1.0)
    units = ("micrometer", "micrometer") if mpp else ("pixel", "pixel")
    meta = {
        "napari_mitosis": slide.info(),
        "slide": slide,  # the open Slide, for the plugin's widgets
        "mpp": mpp,
        "path": str(slide.path),
    }
    kwargs = {
        "name": Path(slide.path).name,
        "rgb": True,
        "multiscale": True,
        "scale": scale,
        "units": units,
        "axis_labels": ("y", "x"),
        "contrast_limits": (0, 255),
        "metadata": meta,
    }
    if slide.level_count > slide.file_levels:
        # levels computed by coarsening would fill napari's dask cache with decoded tiles
        kwargs["cache"] = False
    return (slide.levels, kwargs, "image")
