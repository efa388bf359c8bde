"""The detection table: one row per cell, and its classes.

========  =============================================================
column    meaning
========  =============================================================
x, y      position, level-0 pixels of the slide (float)
class     ``mitotic_figure``, ``granulocyte`` or ``other``
score     the model's probability for that class (NaN when added by hand)
status    ``model``, ``confirmed``, ``corrected`` or ``added``
========  =============================================================

Further columns (``id``, ``type`` ...) are kept; the level-0 pixel size
travels in ``df.attrs["mpp"]``. Files: :mod:`napari_mitosis.io.detections`.

Examples
--------
>>> import pandas as pd
>>> df = check_detections(pd.DataFrame({"x": [1], "y": [2], "class": ["Mitosis"]}))
>>> df.to_dict("records")
[{'x': 1.0, 'y': 2.0, 'class': 'mitotic_figure', 'score': nan, 'status': 'model'}]
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import NapariMitosisError

#: Classes of detections, their display names and colours (RGB 0-255).
CLASSES = {
    "mitotic_figure": ("Mitotic figure", (220, 30, 60)),
    "granulocyte": ("Granulocyte", (255, 150, 0)),
    "other": ("Other", (150, 220, 40)),  # not blue: napari's selection highlight is blue
}
STATUSES = ("model", "confirmed", "corrected", "added")
COLUMNS = ["x", "y", "class", "score", "status"]

#: Loose names (lower case, separators dropped) -> class.
_ALIASES = {
    "mitoticfigure": "mitotic_figure", "mitosis": "mitotic_figure", "mitoses": "mitotic_figure", "mitotic": "mitotic_figure",
    "mf": "mitotic_figure", "granulocyte": "granulocyte", "eosinophil": "granulocyte", "eos": "granulocyte",
    "eosinophilicgranulocyte": "granulocyte", "papillaeos": "granulocyte", "neutrophil": "granulocyte",
    "other": "other", "nonmitosis": "other", "notmitosis": "other", "nonmitoticfigure": "other",
    "mitoticlookalike": "other", "lookalike": "other", "impostor": "other", "negative": "other", "hardnegative": "other",
}


class DetectionsError(NapariMitosisError, ValueError):
    """A detection table or file that cannot be used; the message says what is wrong and what to do."""


def class_name(name) -> str:
    """Map a loose class name to one of :data:`CLASSES`.

    >>> class_name("Mitosis"), class_name("Mitotic figure"), class_name("EOS"), class_name("Tumor")
    ('mitotic_figure', 'mitotic_figure', 'granulocyte', 'other')
    """
    key = "".join(ch for ch in str(name).lower() if ch.isalnum())
    if key in _ALIASES:
        return _ALIASES[key]
    for k, v in _ALIASES.items():  # e.g. "Mitotic figure (atypical)"
        if len(k) > 4 and key.startswith(k):
            return v
    return "other"


#: Labels that say a cell is *not* a mitotic figure (a hard negative), as other tools write them.
NEGATIVE_NAMES = {"nonmitosis", "notmitosis", "nomitosis", "negative", "hardnegative", "nonmitoticfigure",
                  "notmitoticfigure", "mitosisnegative", "false", "falsepositive", "fp"}


def is_negative_name(name) -> bool:
    """Whether a label says "not a mitosis" (``not_mitosis``, ``Non-mitosis``, ``negative``, ...).

    >>> [is_negative_name(n) for n in ("not_mitosis", "Non-mitosis", "negative", "Mitosis", "look-alike", None)]
    [True, True, True, False, False, False]
    """
    if name is None or (isinstance(name, float) and np.isnan(name)):
        return False
    return "".join(ch for ch in str(name).lower() if ch.isalnum()) in NEGATIVE_NAMES


def class_color(name: str, alpha: float | None = None) -> tuple:
    """RGB 0-1 (or RGBA) colour of a class.

    >>> class_color("mitotic_figure")
    (0.86..., 0.11..., 0.23...)
    """
    rgb = tuple(c / 255 for c in CLASSES.get(name, CLASSES["other"])[1])
    return rgb if alpha is None else (*rgb, alpha)


def check_detections(df, name: str = "detections") -> pd.DataFrame:
    """Validate and complete a detection table (see the module docstring); returns a copy."""
    if df is None:
        raise DetectionsError(f"{name}: no table given")
    out = pd.DataFrame(df).copy()
    attrs = dict(getattr(df, "attrs", {}) or {})
    lower = {str(c).lower(): c for c in out.columns}
    missing = [c for c in ("x", "y") if c not in lower]
    if missing:
        raise DetectionsError(f"{name}: needs columns x and y (level-0 pixels); it has {list(out.columns)}")
    out = out.rename(columns={lower[c]: c for c in COLUMNS if c in lower})
    xy = out[["x", "y"]].apply(pd.to_numeric, errors="coerce")
    bad = ~np.isfinite(xy.to_numpy(float)).all(axis=1)  # NaN, text, and inf too (a file cannot be saved with it)
    if bad.any():
        raise DetectionsError(f"{name}: row {int(np.argmax(bad)) + 1} has an x/y that is not a finite number")
    out[["x", "y"]] = xy.astype(float)
    if "class" in out:
        negative = np.array([is_negative_name(c) for c in out["class"]], bool)
        if negative.any() and "negative" not in out:  # "not a mitosis": kept, for the review's hard negatives
            out["negative"] = negative
        out["class"] = [class_name(c) for c in out["class"]]
    else:
        out["class"] = "mitotic_figure"
    out["score"] = pd.to_numeric(out["score"], errors="coerce").astype(float) if "score" in out else np.nan
    if "status" in out:
        status = out["status"].fillna("model").astype(str).str.lower()
        unknown = sorted(set(status) - set(STATUSES))
        if unknown:
            raise DetectionsError(f"{name}: unknown status {unknown[0]!r}; use one of {', '.join(STATUSES)}")
        out["status"] = status
    else:
        out["status"] = "model"
    out = out[COLUMNS + [c for c in out.columns if c not in COLUMNS]].reset_index(drop=True)
    out.attrs.update(attrs)
    return out


def empty_detections(mpp: float | None = None) -> pd.DataFrame:
    """A detection table without rows."""
    df = pd.DataFrame({"x": pd.Series(dtype=float), "y": pd.Series(dtype=float), "class": pd.Series(dtype=object),
                       "score": pd.Series(dtype=float), "status": pd.Series(dtype=object)})
    df.attrs["mpp"] = mpp
    return df


def hex_color(rgb) -> str:
    """``#rrggbb`` of an RGB(A) colour with 0-1 components.

    >>> hex_color((1.0, 0.5, 0.0, 1.0))
    '#ff8000'
    """
    return "#" + "".join(f"{int(round(c * 255)):02x}" for c in rgb[:3])
