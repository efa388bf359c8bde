"""What a review exports: counts, detections (CSV, QuPath GeoJSON) and a retraining dataset.

The retraining dataset is the format ``napari-mitosis train classifier``
reads (:func:`napari_mitosis.training.cell_data.read_export`): ``cells.csv``
plus one crop per reviewed cell, centred on it, at the slide's own pixel size:

- confirmed, corrected and hand-added cells with their class;
- model detections the pathologist removed, as class ``other`` with status
  ``hard_negative`` (the look-alikes a model most needs to see);
- unreviewed model detections are left out (nobody checked them).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .progress import Progress, Task

#: Side of an exported crop (um): room for the classifier's 32 um field plus shifts and rotations.
CROP_UM = 64.0
COUNT_COLUMNS = ["slide", "class", "count", "tissue_mm2", "per_mm2", "per_2.37mm2", "hotspot_count",
                 "hotspot_per_2.37mm2", "hotspot_x", "hotspot_y", "hotspot_width", "hotspot_height", "hotspot_clipped",
                 "mpp"]


def counts_frame(rows, hotspot=None, mpp=None, slide: str | None = None) -> pd.DataFrame:
    """``counts.csv`` as a table: one row per class (see :func:`napari_mitosis.core.counting.count_table`),
    the hotspot's level-0 rectangle, the pixel size and the slide.

    >>> from napari_mitosis.core.counting import count_table
    >>> counts_frame(count_table(["mitotic_figure"], 2.37), mpp=0.25)[["class", "count", "per_2.37mm2"]].values.tolist()
    [['mitotic_figure', 1, 1.0], ['granulocyte', 0, 0.0]]
    """
    df = pd.DataFrame(rows)
    for c in ("hotspot_count", "hotspot_per_2.37mm2"):
        if c not in df:
            df[c] = np.nan
    for k in ("x", "y", "width", "height", "clipped"):
        df[f"hotspot_{k}"] = np.nan if hotspot is None else getattr(hotspot, k)
    df["mpp"] = mpp
    df["slide"] = slide
    return df[COUNT_COLUMNS]


def write_review_files(folder, detections: pd.DataFrame, rows, hotspot, tissue_mm2, mpp, slide: str) -> dict:
    """Write ``counts.csv``, ``detections.csv`` and ``detections.geojson`` (atomically) into ``folder``."""
    from ..io.detections import atomic_write_text, safe_csv_text, write_csv, write_geojson

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    counts = counts_frame(rows, hotspot, mpp, slide)
    paths = {
        "counts": atomic_write_text(folder / "counts.csv", safe_csv_text(counts, float_format="%.6g")),
        "detections": write_csv(detections, folder / "detections.csv", mpp=mpp),
        "geojson": write_geojson(detections, folder / "detections.geojson", mpp=mpp, slide=slide),
    }
    return paths


def _crop(slide, x: float, y: float, side: int) -> tuple[np.ndarray, float, float]:
    """A level-0 crop of ``side`` px centred on (x, y); returns it and the cell's position in it."""
    x0, y0 = round(x - side / 2), round(y - side / 2)
    crop = slide.read_region(0, x0, y0, side, side)
    return crop, x - x0, y - y0


def training_export_task(slide, cells: pd.DataFrame, rejected: pd.DataFrame, folder, mpp: float | None = None,
                         crop_um: float = CROP_UM) -> Task:
    """Write a retraining dataset of the reviewed cells; returns the path of ``cells.csv``."""
    from ..io.cell_export import write_export

    mpp = mpp or slide.mpp
    if not mpp:
        raise ValueError("the slide's pixel size is unknown: set it before exporting a training set")
    reviewed = cells[cells["status"].isin(["confirmed", "corrected", "added"])]
    neg = rejected.copy()
    neg["class"], neg["status"] = "other", "hard_negative"
    todo = pd.concat([reviewed, neg], ignore_index=True) if len(neg) else reviewed.reset_index(drop=True)
    if todo.empty:
        raise ValueError("nothing reviewed yet: confirm, correct or add cells (or remove wrong ones) first")
    name = Path(str(slide.path)).name
    stem = name.split(".")[0]
    side = max(round(crop_um / mpp), 8)
    images, rows = {}, []
    for i, r in enumerate(todo.to_dict("records")):
        crop, cx, cy = _crop(slide, r["x"], r["y"], side)
        rel = f"crops/{stem}_{int(r['id'])}_{r['class']}.png"
        images[rel] = crop
        rows.append({"image": rel, "x": cx, "y": cy, "class": r["class"], "status": r["status"], "mpp": mpp,
                     "source": stem, "group": name})
        if i % 50 == 0:
            yield Progress(i, len(todo), f"cutting crops {i + 1}/{len(todo)}")
    table = pd.DataFrame(rows)
    path = write_export(folder, table, images)
    yield Progress(len(todo), len(todo), f"wrote {len(todo)} cells")
    return path
