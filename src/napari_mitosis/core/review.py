"""The state of a pathologist's review: detections, their edits, undo, and the review queue.

Pure pandas/numpy (no Qt): the napari widget drives it, the sidecar file
stores it. Every edit makes a new table and keeps the previous one for undo.

Each detection has a stable integer ``id`` and, besides the columns of a
detection table (``x, y, class, score, status``; see
:mod:`napari_mitosis.io.detections`), ``model_class``: the class the model
gave it (empty for cells added by hand). Removing a model detection keeps it
in :attr:`ReviewState.rejected`: a pathologist's "this is not a mitosis" is
the most valuable training example there is.

Statuses: ``model`` (not reviewed yet), ``confirmed`` (the model's class
accepted), ``corrected`` (class changed by the pathologist), ``added`` (placed
by hand).

Examples
--------
>>> import pandas as pd
>>> s = ReviewState()
>>> s.add_model(pd.DataFrame({"x": [10., 50.], "y": [10., 60.], "class": ["mitotic_figure"] * 2, "score": [.9, .6]}))
[0, 1]
>>> s.set_class([1], "other")               # a look-alike: corrected
>>> s.confirm([0])
>>> list(s.df["status"]), list(s.df["class"])
(['confirmed', 'corrected'], ['mitotic_figure', 'other'])
>>> _ = s.undo(), s.undo()
>>> list(s.df["status"])
['model', 'model']
>>> s.remove([1]); len(s.df), len(s.rejected)
(1, 1)
>>> s.next_unreviewed()                      # the queue: highest score first
0
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .detections import CLASSES, COLUMNS, check_detections

#: How many edits can be undone ...
UNDO_DEPTH = 500
#: ... as long as the tables kept for them hold fewer rows than this (each edit keeps a whole table:
#: with a million detections, 500 of them would be tens of GB; this keeps about 20 steps then).
UNDO_ROWS = 20_000_000
REVIEW_COLUMNS = ["id"] + COLUMNS + ["model_class"]
ORDERS = ("score", "uncertain")


def near(a, b, radius: float) -> np.ndarray:
    """Which of the (N, 2) points ``a`` have one of the (M, 2) points ``b`` within ``radius``.

    >>> near([[0, 0], [10, 0]], [[1, 1]], 2).tolist()
    [True, False]
    """
    a = np.asarray(a, float).reshape(-1, 2)
    b = np.asarray(b, float).reshape(-1, 2)
    if not len(a) or not len(b):
        return np.zeros(len(a), bool)
    from scipy.spatial import cKDTree

    d, _ = cKDTree(b).query(a, k=1, distance_upper_bound=radius)
    return np.isfinite(d) & (d <= radius)


def empty_review_table() -> pd.DataFrame:
    return pd.DataFrame({
        "id": pd.Series(dtype=np.int64), "x": pd.Series(dtype=float), "y": pd.Series(dtype=float),
        "class": pd.Series(dtype=object), "score": pd.Series(dtype=float), "status": pd.Series(dtype=object),
        "model_class": pd.Series(dtype=object),
    })


class ReviewState:
    """Detections under review, with undo/redo and a review queue.

    Attributes
    ----------
    df : DataFrame
        The current detections (``id``, ``x``, ``y``, ``class``, ``score``,
        ``status``, ``model_class`` and any extra columns such as ``type``).
    rejected : DataFrame
        Model detections the pathologist removed (kept as negatives).
    thresholds : dict
        class -> decision threshold, for the "uncertain first" queue.
    """

    def __init__(self, df: pd.DataFrame | None = None, rejected: pd.DataFrame | None = None, thresholds=None):
        self.df = empty_review_table() if df is None else df.reset_index(drop=True)
        self.rejected = empty_review_table() if rejected is None else rejected.reset_index(drop=True)
        self.thresholds = dict(thresholds or {})
        self._undo: list = []
        self._redo: list = []
        self.version = 0  # bumped on every change, for autosave and views

    # ------------------------------------------------------------ history
    def _push(self):
        self._undo.append((self.df, self.rejected))
        del self._undo[:-UNDO_DEPTH]
        rows = sum(len(d) + len(r) for d, r in self._undo)
        while rows > UNDO_ROWS and len(self._undo) > 1:
            d, r = self._undo.pop(0)
            rows -= len(d) + len(r)
        self._redo.clear()

    def _changed(self):
        self.version += 1

    def undo(self) -> bool:
        """Undo the last edit; False when there is nothing to undo."""
        if not self._undo:
            return False
        self._redo.append((self.df, self.rejected))
        self.df, self.rejected = self._undo.pop()
        self._changed()
        return True

    def redo(self) -> bool:
        """Redo the last undone edit; False when there is nothing to redo."""
        if not self._redo:
            return False
        self._undo.append((self.df, self.rejected))
        self.df, self.rejected = self._redo.pop()
        self._changed()
        return True

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    # -------------------------------------------------------------- edits
    def _append_model(self, df: pd.DataFrame, det: pd.DataFrame) -> list:
        """``df`` with ``det`` appended as new unreviewed model detections (fresh ids) becomes the
        table; returns the new ids."""
        ids = self._next_ids(len(det))
        det = det.copy()
        det.insert(0, "id", np.asarray(ids, dtype=np.int64))
        det["status"] = "model"
        det["model_class"] = det["class"]
        self.df = pd.concat([df, det], ignore_index=True) if len(df) else det.reset_index(drop=True)
        self._changed()
        return ids

    def _next_ids(self, n: int) -> list[int]:
        used = [self.df["id"].max() if len(self.df) else -1, self.rejected["id"].max() if len(self.rejected) else -1]
        start = int(max(used)) + 1
        return list(range(start, start + n))

    def _rows(self, ids) -> np.ndarray:
        ids = np.atleast_1d(np.asarray(list(ids) if not np.isscalar(ids) else [ids], dtype=np.int64))
        return self.df["id"].isin(ids).to_numpy()

    def add_model(self, detections, replace_region=None) -> list[int]:
        """Add model detections (e.g. one tile's); returns their ids.

        ``replace_region`` = level-0 ``(x, y, w, h)``: unreviewed model
        detections inside it are replaced (re-running a region does not pile
        up duplicates; reviewed ones stay).
        """
        det = check_detections(detections)
        self._push()
        df = self.df
        if replace_region is not None:
            x, y, w, h = replace_region
            inside = (df.x >= x) & (df.x < x + w) & (df.y >= y) & (df.y < y + h) & (df.status == "model")
            df = df[~inside.to_numpy()]
        ids = self._append_model(df, det)
        return ids

    def drop_unreviewed(self, region) -> int:
        """Forget the unreviewed model detections inside level-0 ``region`` (x, y, w, h), e.g.
        before that region is analysed again; reviewed cells stay. Returns how many went."""
        x, y, w, h = region
        df = self.df
        inside = ((df.x >= x) & (df.x < x + w) & (df.y >= y) & (df.y < y + h) & (df.status == "model")).to_numpy()
        if not inside.any():
            return 0
        self._push()
        self.df = df[~inside].reset_index(drop=True)
        self._changed()
        return int(inside.sum())

    def add_run_tile(self, detections, run_ids: set, match_px: float) -> list[int]:
        """Add one tile's detections of a run that is re-analysing a region; returns their ids.

        Nothing earlier is dropped wholesale (a run may be cancelled, or napari
        closed, at any tile): a new detection within ``match_px`` of an earlier
        *unreviewed* model detection replaces it; one within ``match_px`` of a
        reviewed cell (or of a model call the pathologist removed) is the same
        cell already decided and is not added. ``run_ids`` (the ids this run
        added so far) grows by the new ids; :meth:`finish_run` then drops the
        earlier unreviewed detections of the region that the run did not find.

        >>> import pandas as pd
        >>> s = ReviewState()
        >>> _ = s.add_model(pd.DataFrame({"x": [10., 100.], "y": [10., 100.], "class": ["mitotic_figure"] * 2,
        ...                               "score": [.9, .6]}))
        >>> s.confirm([0])
        >>> run = set()
        >>> s.add_run_tile(pd.DataFrame({"x": [11., 101.], "y": [10., 99.], "class": ["mitotic_figure"] * 2,
        ...                              "score": [.8, .7]}), run, match_px=5)
        [2]
        >>> s.df[["id", "status", "score"]].values.tolist()
        [[0, 'confirmed', 0.9], [2, 'model', 0.7]]
        """
        det = check_detections(detections)
        if not len(det):
            return []
        df = self.df
        xy_new = det[["x", "y"]].to_numpy(float)
        decided = pd.concat([df[df["status"] != "model"], self.rejected])[["x", "y"]].to_numpy(float)
        keep_new = ~near(xy_new, decided, match_px)
        det = det[keep_new]
        earlier = ((df["status"] == "model") & ~df["id"].isin(list(run_ids))).to_numpy()
        replaced = np.zeros(len(df), bool)
        if earlier.any() and len(det):
            replaced[earlier] = near(df.loc[earlier, ["x", "y"]].to_numpy(float), det[["x", "y"]].to_numpy(float),
                                     match_px)
        if not len(det) and not replaced.any():
            return []
        self._push()
        df = df[~replaced]
        ids = self._append_model(df, det)
        run_ids.update(ids)
        return ids

    def finish_run(self, region, run_ids: set) -> int:
        """A run over ``region`` finished: the earlier unreviewed model detections in it that the run
        did not find again go (reviewed cells stay). ``region``: level-0 ``(x, y, w, h)``, a polygon
        (list of ``[x, y]``) or None (the whole slide). Returns how many went."""
        from .counting import region_contains

        df = self.df
        earlier = ((df["status"] == "model") & ~df["id"].isin(list(run_ids))).to_numpy().copy()
        if earlier.any():
            earlier &= region_contains(region, df[["x", "y"]].to_numpy(float))
        if not earlier.any():
            return 0
        self._push()
        self.df = df[~earlier].reset_index(drop=True)
        self._changed()
        return int(earlier.sum())

    def load(self, detections, keep_status: bool = True) -> list[int]:
        """Add detections from a file (their status kept, or ``added``); returns their ids."""
        det = check_detections(detections)
        if not keep_status:
            det["status"] = "added"
        self._push()
        det = det.copy()
        ids = self._next_ids(len(det))
        det.insert(0, "id", np.asarray(ids, dtype=np.int64))
        if "model_class" not in det:
            det["model_class"] = np.where(det["status"].isin(["model", "confirmed"]), det["class"], None)
        self.df = pd.concat([self.df, det], ignore_index=True) if len(self.df) else det.reset_index(drop=True)
        self._changed()
        return ids

    def add_rejected(self, detections) -> list[int]:
        """Add cells a file says are not mitotic figures (hard negatives) to :attr:`rejected`: not
        counted, kept as negatives for retraining, and a run does not detect them again. Returns their ids."""
        det = check_detections(detections).drop(columns=["negative"], errors="ignore")
        if not len(det):
            return []
        self._push()
        det = det.copy()
        det.insert(0, "id", np.asarray(self._next_ids(len(det)), dtype=np.int64))
        det["model_class"] = None
        self.rejected = pd.concat([self.rejected, det], ignore_index=True) if len(self.rejected) else det
        self._changed()
        return det["id"].tolist()

    def set_class(self, ids, cls: str) -> None:
        """Give the cells ``ids`` the class ``cls`` (status ``corrected``, or ``confirmed``
        when it is what the model said; hand-added cells stay ``added``)."""
        if cls not in CLASSES:
            raise ValueError(f"unknown class {cls!r}; use one of {', '.join(CLASSES)}")
        rows = self._rows(ids)
        if not rows.any():
            return
        self._push()
        df = self.df.copy()
        df.loc[rows, "class"] = cls
        added = df["status"] == "added"
        agree = df["model_class"] == cls
        df.loc[rows & ~added.to_numpy() & agree.to_numpy(), "status"] = "confirmed"
        df.loc[rows & ~added.to_numpy() & ~agree.to_numpy(), "status"] = "corrected"
        self.df = df
        self._changed()

    def confirm(self, ids) -> None:
        """Accept the cells ``ids`` as they are (model detections become ``confirmed``)."""
        rows = self._rows(ids) & (self.df["status"] == "model").to_numpy()
        if not rows.any():
            return
        self._push()
        df = self.df.copy()
        df.loc[rows, "status"] = "confirmed"
        self.df = df
        self._changed()

    def remove(self, ids) -> None:
        """Remove the cells ``ids``; model detections among them are kept in :attr:`rejected`."""
        rows = self._rows(ids)
        if not rows.any():
            return
        self._push()
        gone = self.df[rows]
        keep = gone[gone["model_class"].notna() & (gone["status"] != "added")]
        if len(keep):
            self.rejected = pd.concat([self.rejected, keep], ignore_index=True) if len(self.rejected) else keep.reset_index(drop=True)
        self.df = self.df[~rows].reset_index(drop=True)
        self._changed()

    def add(self, x: float, y: float, cls: str) -> int:
        """Add a cell placed by hand at level-0 ``(x, y)``; returns its id."""
        if cls not in CLASSES:
            raise ValueError(f"unknown class {cls!r}; use one of {', '.join(CLASSES)}")
        self._push()
        [i] = self._next_ids(1)
        row = pd.DataFrame({"id": [i], "x": [float(x)], "y": [float(y)], "class": [cls], "score": [np.nan],
                            "status": ["added"], "model_class": [None]})
        self.df = pd.concat([self.df, row], ignore_index=True) if len(self.df) else row
        self._changed()
        return i

    def move(self, ids, xy) -> None:
        """Move the cells ``ids`` to level-0 positions ``xy`` ((N, 2) x, y, in the order of ``ids``)."""
        ids = [int(i) for i in ids]
        xy = np.asarray(xy, float).reshape(-1, 2)
        if len(ids) != len(xy):
            raise ValueError("move: one position per cell is needed")
        where = dict(zip(ids, xy))
        rows = self._rows(ids)
        if not rows.any():
            return
        self._push()
        df = self.df.copy()
        df.loc[rows, ["x", "y"]] = np.asarray([where[int(i)] for i in df.loc[rows, "id"]])
        self.df = df
        self._changed()

    # -------------------------------------------------------------- queue
    def queue(self, order: str = "score") -> np.ndarray:
        """Ids of the unreviewed model detections in review order.

        ``score``: most likely first; ``uncertain``: closest to the class's
        decision threshold first.
        """
        if order not in ORDERS:
            raise ValueError(f"unknown order {order!r}; use one of {', '.join(ORDERS)}")
        return self._ordered(self.df[self.df["status"] == "model"], order)

    def _ordered(self, df: pd.DataFrame, order: str) -> np.ndarray:
        """Ids of ``df`` most likely first (``score``) or closest to the class threshold first."""
        if df.empty:
            return np.zeros(0, np.int64)
        score = df["score"].fillna(0.0).to_numpy()
        if order == "score":
            key = -score
        else:
            thr = np.array([self.thresholds.get(c, 0.5) for c in df["class"]], float)
            key = np.abs(score - thr)
        return df["id"].to_numpy()[np.argsort(key, kind="stable")]

    def next_unreviewed(self, order: str = "score", after: int | None = None, step: int = 1) -> int | None:
        """The id of the next (``step=1``) or previous (``step=-1``) unreviewed detection.

        ``after`` is the id shown now (it may have been reviewed in between);
        without it the queue starts at its head (or tail for ``step=-1``).
        """
        q = self.queue(order)
        if len(q) == 0:
            return None
        if after is None or after not in set(self.df["id"]):
            return int(q[0] if step > 0 else q[-1])
        if after in set(q):
            k = int(np.nonzero(q == after)[0][0]) + step
            return int(q[k % len(q)])
        # ``after`` was just reviewed: continue from where it stood in the full order
        full = self.full_order(order)
        k = int(np.nonzero(full == after)[0][0])
        pos = set(q)
        seq = full[k + 1 :] if step > 0 else full[:k][::-1]
        for i in seq:
            if i in pos:
                return int(i)
        return int(q[0] if step > 0 else q[-1])

    def full_order(self, order: str = "score") -> np.ndarray:
        """All ids (reviewed or not) in review order."""
        return self._ordered(self.df, order)

    # ------------------------------------------------------------ summary
    def progress(self) -> tuple[int, int]:
        """(reviewed, total) detections."""
        return int((self.df["status"] != "model").sum()), len(self.df)

    def detections(self) -> pd.DataFrame:
        """The detection table for files (``x, y, class, score, status`` + extras, ``id`` kept)."""
        cols = COLUMNS + [c for c in self.df.columns if c not in COLUMNS]
        return self.df[cols].reset_index(drop=True)
