"""npe2 reader and writers for detection files: Points layers <-> CSV / QuPath GeoJSON.

Points layers hold ``(y, x)`` in level-0 pixels of the slide with the slide's
scale (um per pixel), as the review widget makes them; the files hold
``x, y`` in level-0 pixels and record the pixel size. The class, score and
status travel as the layer's features.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ..io.detections import (
    DetectionsError,
    check_detections,
    class_color,
    read_detections,
    write_csv,
    write_geojson,
)


def _table(data, meta: dict) -> pd.DataFrame:
    data = np.asarray(data, float).reshape(-1, np.asarray(data).shape[-1] if np.asarray(data).size else 2)
    feats = meta.get("features")
    feats = pd.DataFrame(feats) if feats is not None else pd.DataFrame(meta.get("properties") or {})
    df = pd.DataFrame({"x": data[:, -1], "y": data[:, -2]}) if len(data) else pd.DataFrame({"x": [], "y": []})
    for c in feats.columns:
        if len(feats) == len(df):
            df[c] = feats[c].astype(object).to_numpy() if str(feats[c].dtype) == "category" else feats[c].to_numpy()
    if "class" not in df:
        df["class"] = "mitotic_figure"
    return check_detections(df)


def _mpp(meta: dict):
    m = (meta.get("metadata") or {}).get("mpp")
    if m:
        return float(m)
    scale = meta.get("scale")
    units = meta.get("units")
    if scale is not None and units is not None and "micrometer" in str(units[-1]):
        return float(scale[-1])
    return None


def write_points_csv(path: str, data, meta: dict) -> list[str]:
    """npe2 writer: a Points layer to a detection CSV."""
    write_csv(_table(data, meta), path, mpp=_mpp(meta))
    return [str(path)]


def write_points_geojson(path: str, data, meta: dict) -> list[str]:
    """npe2 writer: a Points layer to QuPath-compatible GeoJSON."""
    slide = (meta.get("metadata") or {}).get("slide_path")
    write_geojson(_table(data, meta), path, mpp=_mpp(meta), slide=Path(slide).name if slide else None)
    return [str(path)]


def points_layer_data(df: pd.DataFrame, name: str = "detections") -> tuple:
    """A napari Points layer-data tuple of a detection table (level-0 px; scale from its mpp)."""
    mpp = df.attrs.get("mpp")
    kwargs = {
        "name": name,
        "features": df.drop(columns=["x", "y"]).reset_index(drop=True),
        "face_color": np.array([class_color(c, 1.0) for c in df["class"]]) if len(df) else "red",
        "symbol": "ring",
        "size": 14 / mpp if mpp else 28,
        "metadata": {"mpp": mpp},
    }
    if mpp:
        kwargs["scale"] = (mpp, mpp)
        kwargs["units"] = ("micrometer", "micrometer")
    return df[["y", "x"]].to_numpy(float), kwargs, "points"


def get_detections_reader(path):
    """npe2 reader for detection files (``.csv`` with x, y columns; ``.geojson``): None when it is not one."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(path)
    if p.suffix.lower() not in (".csv", ".geojson", ".json"):
        return None
    try:
        df = read_detections(p)
    except DetectionsError as exc:
        if p.suffix.lower() == ".geojson":
            warnings.warn(f"napari-mitosis cannot read {p.name}: {exc}", stacklevel=2)
        return None  # not a detection file: let other readers try
    except Exception as exc:  # noqa: BLE001 -- never raise into napari's File > Open
        warnings.warn(f"napari-mitosis cannot read {p.name}: {type(exc).__name__}: {exc}", stacklevel=2)
        return None

    def reader(_path=None):
        return [points_layer_data(df, name=p.stem)]

    return reader
