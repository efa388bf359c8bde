"""Detection tables and their files: CSV and QuPath-compatible GeoJSON, written atomically.

A detection table (:mod:`napari_mitosis.core.detections`: ``x, y`` in level-0 pixels,
``class``, ``score``, ``status``, extra columns kept) is written with the pixel size of level 0
(``df.attrs["mpp"]``) in every file (an ``mpp`` column in CSV, the collection's ``properties`` in
GeoJSON) so coordinates can be converted to um.

GeoJSON follows QuPath's import/export: a ``FeatureCollection`` of
``Feature``\\ s with a ``Point`` geometry in level-0 pixels and
``properties.objectType`` / ``properties.classification`` (``name``, ``color``).
QuPath exports (points, polygons, multi-points; detections or annotations)
import back: polygons become their centroid, class names are matched loosely
("Mitosis", "mitotic figure", "Eosinophil" ...).

Examples
--------
>>> import pandas as pd, tempfile, pathlib
>>> df = pd.DataFrame({"x": [10.0, 250.5], "y": [20.0, 40.0], "class": ["mitotic_figure", "granulocyte"],
...                    "score": [0.9, 0.7]})
>>> df = check_detections(df)
>>> list(df["status"])
['model', 'model']
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> _ = write_geojson(df, folder / "d.geojson", mpp=0.25)
>>> back = read_detections(folder / "d.geojson")
>>> back[["x", "y", "class"]].values.tolist(), back.attrs["mpp"]
([[10.0, 20.0, 'mitotic_figure'], [250.5, 40.0, 'granulocyte']], 0.25)
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from pathlib import Path

import numpy as np
import pandas as pd

from ..core.detections import (  # noqa: F401 - the schema, re-exported for file users
    CLASSES,
    COLUMNS,
    STATUSES,
    DetectionsError,
    check_detections,
    class_color,
    class_name,
    empty_detections,
)

# -- atomic files ---------------------------------------------------------------------------

def atomic_write_bytes(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that a crash leaves either the old file or the new one.

    The bytes go to a temporary file in the same folder, are flushed to disk,
    then renamed over ``path`` (an atomic rename on POSIX and Windows).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:  # a file that is replaced keeps its permissions; a new one gets those of the umask
        mode = os.stat(path).st_mode & 0o777
    except OSError:
        mode = 0o666 & ~current_umask()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        os.chmod(tmp, mode)  # mkstemp makes it 0600: colleagues on a shared folder could not read it
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


_UMASK_LOCK = __import__("threading").Lock()


def current_umask() -> int:
    """The process's umask, read without changing it where the system allows (``/proc``)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _UMASK_LOCK:  # elsewhere: set and restore at once
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def atomic_write_text(path, text: str) -> Path:
    """:func:`atomic_write_bytes` for text (UTF-8)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


# -- CSV ------------------------------------------------------------------------------------

#: A text cell starting with one of these is a formula to a spreadsheet (=HYPERLINK(...), +cmd|...).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def escape_cell(value):
    """``value`` made safe for a spreadsheet: text that starts with ``=``, ``+``, ``-``, ``@``
    (or a tab or carriage return) and is not a number gets a leading ``'`` (OWASP's advice
    against CSV/formula injection); carriage returns become line feeds (which pandas quotes);
    anything else is returned as it is."""
    if not isinstance(value, str):
        return value
    if "\r" in value:  # written unquoted, a bare CR starts a new row for some readers: make it \n (quoted)
        value = value.replace("\r\n", "\n").replace("\r", "\n")
    if value.startswith(FORMULA_START) and not _is_number(value):
        return "'" + value
    return value


def unescape_cell(value):
    """The inverse of :func:`escape_cell` (for reading our own CSV files back)."""
    if isinstance(value, str) and len(value) > 1 and value[0] == "'" and value[1:].startswith(FORMULA_START) \
            and not _is_number(value[1:]):
        return value[1:]
    return value


def escape_formulas(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``df`` whose text cells (and column names) are :func:`escape_cell`-ed."""
    out = df.copy()
    for col in out.columns:
        if out[col].dtype == object or pd.api.types.is_string_dtype(out[col]):
            out[col] = out[col].map(escape_cell)
    out.columns = [escape_cell(c) for c in out.columns]
    return out


def unescape_formulas(df: pd.DataFrame) -> pd.DataFrame:
    """The inverse of :func:`escape_formulas`."""
    for col in df.columns:
        if df[col].dtype == object or pd.api.types.is_string_dtype(df[col]):
            df[col] = df[col].map(unescape_cell)
    df.columns = [unescape_cell(c) for c in df.columns]
    return df


def safe_csv_text(df: pd.DataFrame, **kwargs) -> str:
    """``df.to_csv(**kwargs)`` (default ``index=False``) with formulas escaped: every CSV the
    package writes for people goes through this."""
    kwargs.setdefault("index", False)
    return escape_formulas(df).to_csv(**kwargs)

def _mpp(df, mpp):
    mpp = df.attrs.get("mpp") if mpp is None else mpp
    return None if mpp is None or (isinstance(mpp, float) and np.isnan(mpp)) else float(mpp)


def to_csv_text(df, mpp: float | None = None) -> str:
    """The CSV text of a detection table (``mpp`` column = level-0 pixel size in um)."""
    df = check_detections(df)
    out = df.copy()
    out["mpp"] = _mpp(df, mpp)
    return safe_csv_text(out, float_format="%.6g")


def write_csv(df, path, mpp: float | None = None) -> Path:
    """Write a detection table as CSV, atomically."""
    return atomic_write_text(path, to_csv_text(df, mpp))


def read_csv(path) -> pd.DataFrame:
    """Read a detection CSV (ours, or any CSV with x, y and optionally class/score/status)."""
    path = Path(path)
    try:
        raw = pd.read_csv(path)
    except FileNotFoundError:
        raise DetectionsError(f"{path}: no such file") from None
    except pd.errors.EmptyDataError:
        raise DetectionsError(f"{path}: the file is empty; expected a CSV with columns x, y, class") from None
    except Exception as exc:
        raise DetectionsError(f"{path}: cannot be read as CSV ({type(exc).__name__}: {exc})") from None
    raw = unescape_formulas(raw)
    mpp = None
    if "mpp" in raw.columns:
        vals = pd.to_numeric(raw.pop("mpp"), errors="coerce").dropna()
        mpp = float(vals.iloc[0]) if len(vals) else None
    df = check_detections(raw, str(path))
    df.attrs["mpp"] = mpp
    return df


# -- GeoJSON (QuPath) -----------------------------------------------------------------------

def to_geojson(df, mpp: float | None = None, slide: str | None = None, object_type: str = "annotation") -> dict:
    """A QuPath-compatible GeoJSON ``FeatureCollection`` of point features (level-0 pixels).

    ``object_type`` is QuPath's ``objectType``: ``annotation`` (editable in
    QuPath; the default) or ``detection``.
    """
    df = check_detections(df)
    mpp = _mpp(df, mpp)
    feats = []
    extra = [c for c in df.columns if c not in COLUMNS]
    for r in df.to_dict("records"):
        label, rgb = CLASSES.get(r["class"], CLASSES["other"])
        measurements = {"score": None if pd.isna(r["score"]) else float(r["score"])}
        props = {
            "objectType": object_type,
            "classification": {"name": label, "color": list(rgb)},
            "isLocked": False,
            "measurements": measurements,
            "status": r["status"],
            "class": r["class"],
        }
        for c in extra:
            v = r.get(c)
            if v is not None and not (isinstance(v, float) and np.isnan(v)):
                props[c] = v.item() if hasattr(v, "item") else v
        feats.append({
            "type": "Feature",
            "id": str(uuid.uuid4()),
            "geometry": {"type": "Point", "coordinates": [float(r["x"]), float(r["y"])]},
            "properties": props,
        })
    fc = {"type": "FeatureCollection", "features": feats,
          "properties": {"coordinates": "level-0 pixels", "mpp": mpp, "slide": slide, "software": "napari-mitosis"}}
    return fc


def write_geojson(df, path, mpp: float | None = None, slide: str | None = None, object_type: str = "annotation") -> Path:
    """Write :func:`to_geojson` atomically."""
    return atomic_write_text(path, json.dumps(to_geojson(df, mpp, slide, object_type), indent=1))


class _BadFeature(DetectionsError):
    """Raised inside :func:`from_geojson`; re-raised as a DetectionsError naming the feature."""


def _number(v, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _BadFeature(f"{what} {v!r} is not a number")
    v = float(v)
    if not np.isfinite(v):
        raise _BadFeature(f"{what} {v!r} is not a finite number")
    return v


def _position(p, what: str = "a position") -> list:
    if not isinstance(p, (list, tuple)) or len(p) < 2:
        raise _BadFeature(f"{what} {_short(p)} is not [x, y]")
    return [_number(p[0], "x"), _number(p[1], "y")]


def _positions(coords, what: str, min_len: int = 1) -> list:
    if not isinstance(coords, (list, tuple)) or len(coords) < min_len:
        raise _BadFeature(f"{what} coordinates {_short(coords)} are not a list of [x, y] positions")
    return [_position(p) for p in coords]


def _short(v, n: int = 60) -> str:
    text = repr(v)
    return text if len(text) <= n else text[: n - 3] + "..."


def _centroid(geom: dict):
    """The point(s) of a geometry: a Point, the points of a MultiPoint, the centroid of the
    outer ring(s) of a (Multi)Polygon or of a LineString's vertices. Malformed coordinates
    (null, text, empty, ragged nesting, non-numbers) raise :class:`_BadFeature`."""
    kind = geom.get("type")
    coords = geom.get("coordinates")
    if kind == "Point":
        return [_position(coords, "Point coordinates")]
    if kind == "MultiPoint":
        return _positions(coords, "MultiPoint")
    if kind == "LineString":
        pts = _positions(coords, "LineString")
    elif kind == "Polygon":
        if not isinstance(coords, (list, tuple)) or not coords:
            raise _BadFeature(f"Polygon coordinates {_short(coords)} are not a list of rings")
        pts = [_positions(ring, "Polygon ring") for ring in coords][0]  # holes checked, not used
    elif kind == "MultiPolygon":
        if not isinstance(coords, (list, tuple)) or not coords:
            raise _BadFeature(f"MultiPolygon coordinates {_short(coords)} are not a list of polygons")
        pts = []
        for poly in coords:
            if not isinstance(poly, (list, tuple)) or not poly:
                raise _BadFeature(f"MultiPolygon polygon {_short(poly)} is not a list of rings")
            pts += [_positions(ring, "MultiPolygon ring") for ring in poly][0]
    else:
        return []  # other geometry types carry no detection
    return [np.asarray(pts, float).mean(0).tolist()]


def _score(meas: dict, props: dict):
    score = meas.get("score", props.get("score"))
    if score is None:
        return None
    if isinstance(score, str):
        try:
            score = float(score)
        except ValueError:
            raise _BadFeature(f"score {_short(score)} is not a number") from None
    if isinstance(score, float) and np.isnan(score):  # QuPath writes NaN for a missing measurement
        return None
    return _number(score, "score")


def from_geojson(data, name: str = "GeoJSON") -> pd.DataFrame:
    """Detections from a GeoJSON object (a FeatureCollection, a list of Features, or one Feature).

    Malformed features (null, text or empty coordinates, ragged polygons, a score that is not a
    number, properties that are not an object) are a :class:`DetectionsError` naming the feature.
    """
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        feats = data.get("features")
        feats = [] if feats is None else feats
        meta = data.get("properties") or {}
    elif isinstance(data, dict) and data.get("type") == "Feature":
        feats, meta = [data], {}
    elif isinstance(data, list):
        feats, meta = data, {}
    else:
        raise DetectionsError(f"{name}: not GeoJSON features (expected a FeatureCollection or a list of Features)")
    if not isinstance(feats, list):
        raise DetectionsError(f"{name}: 'features' is {_short(feats)}, not a list of Features")
    rows = []
    for i, f in enumerate(feats):
        try:
            if not isinstance(f, dict):
                raise _BadFeature(f"is {_short(f)}, not a Feature object")
            geom = f.get("geometry")
            if geom is None:
                continue  # a feature without a geometry (allowed by GeoJSON) places nothing
            if not isinstance(geom, dict):
                raise _BadFeature(f"its geometry {_short(geom)} is not a geometry object")
            props = f.get("properties")
            props = {} if props is None else props
            if not isinstance(props, dict):
                raise _BadFeature(f"its properties {_short(props)} are not an object")
            cls = props.get("class")
            if cls is None:
                c = props.get("classification") or {}
                cls = c.get("name") if isinstance(c, dict) else c
            if cls is not None and not isinstance(cls, (str, int, float)):
                raise _BadFeature(f"its class {_short(cls)} is not a name")
            cls = class_name(cls) if cls is not None else "mitotic_figure"
            meas = props.get("measurements") or {}
            if isinstance(meas, list):  # QuPath 0.2/0.3 style
                meas = {m.get("name"): m.get("value") for m in meas if isinstance(m, dict)}
            if not isinstance(meas, dict):
                raise _BadFeature(f"its measurements {_short(meas)} are not an object")
            score = _score(meas, props)
            status = str(props.get("status", "added" if score is None else "model")).lower()
            if status not in STATUSES:
                status = "added"
            for x, y in _centroid(geom):
                rows.append({"x": x, "y": y, "class": cls, "score": np.nan if score is None else score,
                             "status": status})
        except _BadFeature as exc:
            raise DetectionsError(f"{name}: feature {i + 1} of {len(feats)}: {exc}; fix or remove it "
                                  "(GeoJSON positions are [x, y] numbers in level-0 pixels)") from None
    df = check_detections(pd.DataFrame(rows, columns=COLUMNS) if rows else empty_detections(), name)
    mpp = meta.get("mpp") if isinstance(meta, dict) else None
    try:
        df.attrs["mpp"] = None if mpp is None else _number(mpp, "mpp")
    except _BadFeature as exc:
        raise DetectionsError(f"{name}: the collection's {exc}") from None
    if isinstance(meta, dict) and meta.get("slide"):
        df.attrs["slide"] = str(meta["slide"])
    return df


def read_geojson(path) -> pd.DataFrame:
    """Read detections from a GeoJSON file (ours or a QuPath export)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DetectionsError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DetectionsError(f"{path}: is not valid GeoJSON ({exc})") from None
    except (OSError, RecursionError) as exc:
        raise DetectionsError(f"{path}: cannot be read ({type(exc).__name__}: {exc})") from None
    return from_geojson(data, str(path))


def read_detections(path) -> pd.DataFrame:
    """Read a detection file by its suffix: ``.csv`` or ``.geojson`` / ``.json``."""
    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        return read_csv(path)
    if suffix in (".geojson", ".json"):
        return read_geojson(path)
    raise DetectionsError(f"{path}: unknown detection file type {suffix!r}; use .csv or .geojson")


def write_detections(df, path, mpp: float | None = None, slide: str | None = None) -> Path:
    """Write a detection file by its suffix (``.csv`` or ``.geojson``)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        return write_csv(df, path, mpp)
    if suffix in (".geojson", ".json"):
        return write_geojson(df, path, mpp, slide)
    raise DetectionsError(f"{path}: unknown detection file type {suffix!r}; use .csv or .geojson")
