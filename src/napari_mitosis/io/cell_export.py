"""Retraining exports: ``cells.csv`` and the images it names, written from reviewed cells.

The review widget's "export for training" (:func:`napari_mitosis.pipeline.export.training_export_task`)
writes one; the trainers read it back with
:func:`napari_mitosis.training.cell_data.read_export`. Columns: ``image`` (relative
path), ``x``, ``y`` (the cell in the image, px), ``class``, ``status``, ``mpp``,
``source``, ``group``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..core.stain import as_rgb
from ..errors import NapariMitosisError

#: The table of an export folder.
EXPORT_TABLE = "cells.csv"


class CellDataError(NapariMitosisError, ValueError):
    """A cell data set is missing, empty or malformed; the message says which file and what to do."""


def write_export(folder, cells: pd.DataFrame, images: dict | None = None) -> Path:
    """Write a retraining export (``cells.csv`` + images) that :func:`napari_mitosis.training.cell_data.read_export` reads.

    ``cells`` has the export columns; ``images`` maps a relative image name to
    an RGB array to save beside it (e.g. crops cut by the review widget).
    """
    from skimage.io import imsave

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in (images or {}).items():
        out = folder / name
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            rgb = as_rgb(arr, str(name))
        except ValueError as exc:
            raise CellDataError(str(exc)) from None
        imsave(out, rgb, check_contrast=False)
    cols = [c for c in ["image", "x", "y", "class", "status", "mpp", "source", "group"] if c in cells.columns]
    from .detections import safe_csv_text

    (folder / EXPORT_TABLE).write_text(safe_csv_text(cells[cols]))
    return folder / EXPORT_TABLE
