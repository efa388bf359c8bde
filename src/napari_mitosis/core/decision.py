"""Decision rules: from network probabilities to classes.

Two rules, both pure numpy:

- :func:`classify_by_thresholds` -- the cell classifier's (``napari-mitosis classify``):
  the class of each cell under a model's operating point (per-class probability
  thresholds of its spec, else the argmax);
- :func:`decide_detections` -- whole-slide detection's (:mod:`napari_mitosis.pipeline.detect`):
  a detection class (or none) and a score per candidate, from cell-gstn's and the
  first pass's probabilities and the ``detect_*`` thresholds (:data:`DEFAULT_THRESHOLDS`,
  overridden by the model spec's); :func:`needs_classifier` says which candidates
  cell-gstn must see at all.

The ``params`` of the detection rule is anything with a ``thr(key) -> float``
method (:class:`napari_mitosis.pipeline.detect.DetectParams`, :class:`Thresholds`).
"""

from __future__ import annotations

import numpy as np

#: Detection classes, in the order of the table.
DETECT_CLASSES = ("mitotic_figure", "granulocyte")
#: Default detection thresholds (overridden by ``detect_*`` keys of the model spec's thresholds).
#: The values are those chosen on validation data for the cascade cell-screen -> cell-gstn, whose
#: class score is sqrt(p_first * p_gstn) (benchmarks/eval_screen.py, docs/detection.md): screening
#: and mitosis thresholds on MITOS-ATYPIA-14 frames, granulocyte ones on EoE tiles.
DEFAULT_THRESHOLDS = {
    "detect_nucleus_od": 0.25,  # min smoothed hematoxylin OD of a blob to be a nucleus
    "detect_screen_dark": 1.5,  # darkness / tile's 90th percentile: a candidate (mitosis screening)
    "detect_screen_gran_dark": 1.2,  # ... or at least this dark (relative) and
    "detect_screen_eosin": 0.9,  # ... with this much eosin around it (relative; granulocyte screening)
    "detect_mitotic_figure": 0.8,  # min score of a mitotic figure
    "detect_granulocyte": 0.9,  # min score of a granulocyte
    "detect_nms_um": 6.0,  # detections closer than this are one cell
    "detect_candidate_mitotic_figure": 0.2,  # min cell-dense likelihood of a mitosis candidate
    "detect_candidate_granulocyte": 0.2,  # min cell-dense likelihood of a granulocyte candidate
}


class Thresholds(dict):
    """Detection thresholds by key, the defaults for keys it lacks (what the detection rule
    needs of :class:`~napari_mitosis.pipeline.detect.DetectParams`).

    >>> Thresholds({"detect_granulocyte": 0.5}).thr("detect_granulocyte"), Thresholds().thr("detect_nms_um")
    (0.5, 6.0)
    """

    def thr(self, key: str) -> float:
        return float(self.get(key, DEFAULT_THRESHOLDS[key]))


def classify_by_thresholds(probs, classes, thresholds: dict | None = None) -> np.ndarray:
    """Class index per row under the spec's operating point.

    A class with a threshold is chosen exactly when its probability reaches
    the threshold; other rows get the most probable of the remaining classes.
    Without thresholds this is the argmax.

    >>> p = np.array([[0.5, 0.1, 0.4], [0.3, 0.0, 0.7]])
    >>> classify_by_thresholds(p, ["mitotic_figure", "granulocyte", "other"], {"mitotic_figure": 0.6}).tolist()
    [2, 2]
    """
    probs = np.asarray(probs, float)
    pred = probs.argmax(1) if len(probs) else np.zeros(0, int)
    for name, t in (thresholds or {}).items():
        if name not in classes:
            continue
        k = classes.index(name)
        rest = probs.copy()
        rest[:, k] = -np.inf
        pred = np.where(probs[:, k] >= t, k, np.where(pred == k, rest.argmax(1), pred))
    return pred


def decide_detections(probs: np.ndarray, classes: list, params, first: np.ndarray | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Class (or '' for none) and score per cell from per-class probability thresholds.

    With ``first`` (n, 2: the first pass's mitotic figure and granulocyte probabilities) a
    class's score is the geometric mean of the two networks' probabilities, ``sqrt(p_first *
    p_gstn)`` (cell-gstn's alone where ``first`` is NaN); else cell-gstn's probability. A cell takes the class whose score is furthest
    above its threshold.

    >>> p = Thresholds({"detect_mitotic_figure": 0.5})
    >>> decide_detections(np.array([[0.9, 0.0, 0.1], [0.3, 0.0, 0.7]]), ["mitotic_figure", "granulocyte", "other"], p)[0].tolist()
    ['mitotic_figure', '']
    >>> cls, score = decide_detections(np.array([[0.9, 0.0, 0.1], [0.9, 0.0, 0.1]]), ["mitotic_figure", "granulocyte", "other"],
    ...                     p, first=np.array([[0.4, 0.0], [0.16, 0.0]]))
    >>> cls.tolist(), score.round(3).tolist()  # sqrt(0.9 * 0.4) = 0.6; sqrt(0.9 * 0.16) = 0.38 < 0.5
    (['mitotic_figure', ''], [0.6, 0.0])
    """
    n = len(probs)
    cls = np.full(n, "", dtype=object)
    score = np.zeros(n)
    best = np.zeros(n)
    for k, c in enumerate(DETECT_CLASSES):
        if c not in classes:
            continue
        p = probs[:, classes.index(c)].astype(float)
        if first is not None:
            q = np.asarray(first, float)[:, k]
            q = np.where(np.isnan(q), p, q)  # no first pass (heatmap candidates): cell-gstn alone
            p = np.sqrt(np.clip(p, 0, 1) * np.clip(q, 0, 1))
        t = params.thr(f"detect_{c}")
        ok = (p >= t) & (p / max(t, 1e-6) > best)
        cls[ok], score[ok], best[ok] = c, p[ok], (p / max(t, 1e-6))[ok]
    return cls, score


def could_reach(first: np.ndarray | None, p_top: np.ndarray, params) -> np.ndarray:
    """Which cells could still be detected when the classifier's probability of each detection
    class is at most ``p_top`` (n, 2: mitotic figure, granulocyte): a class's score is
    ``sqrt(q * p)`` with the first pass's ``q`` (``first``), or ``p`` alone where there is none (NaN).

    >>> p = Thresholds({"detect_mitotic_figure": 0.6, "detect_granulocyte": 0.6})
    >>> could_reach(np.array([[0.4, 0.0], [0.3, np.nan]]), np.ones((2, 2)), p).tolist()
    [True, True]
    >>> could_reach(np.array([[0.4, 0.0], [0.3, np.nan]]), np.full((2, 2), 0.5), p).tolist()
    [False, False]
    """
    p_top = np.asarray(p_top, float)
    need = np.zeros(len(p_top), bool)
    for k, c in enumerate(DETECT_CLASSES):
        top = p_top[:, k]
        if first is not None:
            q = np.asarray(first, float)[:, k]
            top = np.where(np.isnan(q), top, np.sqrt(top * np.clip(np.nan_to_num(q, nan=1.0), 0, 1)))
        need |= top >= params.thr(f"detect_{c}")
    return need


def needs_classifier(first: np.ndarray, params) -> np.ndarray:
    """Which candidates cell-gstn must see: those whose first-pass probability ``q`` of a class
    could still reach that class's threshold ``t``. The score is ``sqrt(q * p)`` with ``p <= 1``,
    so ``q < t**2`` for every class means no detection whatever cell-gstn says: skipping those
    changes no result."""
    return could_reach(first, np.ones((len(first), len(DETECT_CLASSES))), params)


def needs_more_views(first: np.ndarray | None, probs: np.ndarray, classes: list, params, views: int) -> np.ndarray:
    """Which cells need the classifier's other test-time views: those whose score could still
    reach a class's threshold once the first view's probability ``p1`` is averaged with
    ``views - 1`` more (the mean is at most ``(p1 + views - 1) / views``). The others get no
    detection whatever those views say: skipping them changes no detection.

    >>> p = Thresholds({"detect_mitotic_figure": 0.6, "detect_granulocyte": 0.6})
    >>> probs = np.array([[0.05, 0.0, 0.95], [0.5, 0.0, 0.5], [0.9, 0.0, 0.1]])
    >>> needs_more_views(np.array([[0.5, 0.0], [0.5, 0.0], [0.2, 0.0]]), probs, ["mitotic_figure", "granulocyte", "other"], p, 2).tolist()
    [False, True, False]
    """
    probs = np.asarray(probs, float)
    p_top = np.zeros((len(probs), len(DETECT_CLASSES)))  # a class the classifier lacks is never detected
    for k, c in enumerate(DETECT_CLASSES):
        if c in classes:
            p_top[:, k] = (probs[:, classes.index(c)] + views - 1) / views
    return could_reach(first, p_top, params)
