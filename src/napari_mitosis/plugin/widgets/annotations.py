"""The detections of a slide as a napari Points layer, kept in step with the review and its file.

:class:`DetectionReview` owns one :class:`~napari_mitosis.core.review.ReviewState`
for one slide layer. The Points layer is its view: level-0 pixel data with the
slide's scale, so points sit on the cells at every zoom. Edits come from
the keys bound here and from napari's own point tools (add mode, delete,
drag, paste); either way the review is updated and autosaved atomically to
the slide's annotation file (:mod:`napari_mitosis.io.sidecar`).

Keys (on the viewer while the review widget is open, whichever layer is selected; and on the detections layer):

====================  ================================================
``M`` / ``G`` / ``O``  selected cells are mitotic figure / granulocyte / other
``C``                 confirm the selected cells as the model called them
``X`` (or Delete)     remove the selected cells (model calls are kept as negatives)
``I``                 insert a cell of the current class at the mouse
``Shift+M/G/O``       insert a mitotic figure / granulocyte / other at the mouse
``N`` / ``Shift+N``   next / previous unreviewed detection (centres and selects it)
``H``                 hide / show the markers
``Ctrl+Z``            undo; ``Ctrl+Shift+Z`` redo
====================  ================================================
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ...core.detections import CLASSES, class_color, hex_color
from ...core.review import ReviewState
from ...io import reviewlock, sidecar

#: Markers (QuPath-style): a thin ring in the class colour around the cell, wide enough not to cover a
#: mitotic figure (about 5-15 um) at review zoom; never smaller than MARKER_MIN_PX on the screen, so that
#: at overview every detection is a dot of the same screen size.
MARKER_UM = 24.0
MARKER_RING = 0.08  # ring width, relative to the diameter
MARKER_MIN_PX, MARKER_MAX_PX = 10, 4000
#: Ring opacity by status: unreviewed model calls are dimmer than reviewed cells.
STATUS_ALPHA = {"model": 0.55, "confirmed": 1.0, "corrected": 1.0, "added": 1.0}
TRANSPARENT = "transparent"
CLASS_KEYS = {"m": "mitotic_figure", "g": "granulocyte", "o": "other"}
#: A queue jump shows at least this much tissue around the cell (um across).
FOCUS_FIELD_UM = 120.0
#: A re-run's detection this close to an earlier one is the same cell (um; the detector's NMS distance).
SAME_CELL_UM = 6.0

KEY_HELP = (
    "M/G/O: class of selected · C: confirm · X/Del: remove · I: add at mouse (Shift+M/G/O: add that class) · "
    "N/Shift+N: next/previous to review · H: hide/show markers · Ctrl+Z / Ctrl+Shift+Z: undo/redo"
)


class OtherSlideError(ValueError):
    """An imported file names another slide (the widget asks whether to import it anyway)."""


def _same_slide_name(a: str, b: str) -> bool:
    """Whether two slide names are the same slide's (the file name, or its name without extensions)."""
    a, b = Path(str(a)).name, Path(str(b)).name
    return a == b or a.split(".")[0] == b.split(".")[0]


class DetectionReview:
    """The review of one slide layer: state, Points layer, keys and autosave.

    Parameters
    ----------
    viewer : napari.Viewer
    slide_layer : the Image layer of the slide (its ``metadata['slide']`` is a Slide)
    folder : where to save the annotation file (default: beside the slide, or the fallback folder)
    on_change : called after every change (e.g. to refresh counts)
    on_save : called with the review after each background save (``save_error`` says if it failed)
    canvas_width : callable returning the canvas width in screen pixels (for the zoom of a queue jump)

    Everything that belongs to one slide lives here, not in the widget: the
    detections, the analysed regions, the tissue mask, the pixel size entered
    for it, the typed nuclei; all of it is saved in the slide's review file.
    """

    def __init__(self, viewer, slide_layer, folder=None, on_change=None, mpp: float | None = None,
                 canvas_width=None, on_save=None):
        self.viewer = viewer
        self.slide_layer = slide_layer
        self.slide = slide_layer.metadata["slide"]
        self.mpp = mpp or self.slide.mpp
        self.on_change = on_change
        self.on_focus = None  # called when the queue goes to another cell (the widget shows it)
        self.on_save = on_save  # called after each background save (the widget shows where, or why not)
        self._saver = None
        self.stale = False  # changes not shown yet (a run's tiles, shown a few times a second)
        self._defaults_for = None  # the class the layer's defaults (new points) are set for
        self._shown = None  # what the layer shows: ids, x/y, class, status (for edits that change a few rows)
        self.current_class = "mitotic_figure"
        self.order = "score"
        self.layer = None
        self.notes: list[str] = []
        self.regions: list = []  # analysed level-0 rectangles (None = all tissue)
        self.nuclei_types = None  # typed nuclei (x, y level-0, type, type_name) of the typed regions
        self.tissue = None  # TissueMask of this slide (computed by a run, or restored from the file)
        self.hotspot = None  # the last Hotspot counted (saved for the record; recomputed from the cells)
        self.saved_mpp: float | None = None  # the pixel size the file was saved with
        self.canvas_width = canvas_width
        self.save_error: str | None = None  # why the last autosave failed (None: saved)
        self.last_import_negatives = 0
        self._order_cache = None  # how many cells of the last import were hard negatives
        self._syncing = False
        self._focus: int | None = None
        self.identity = sidecar.slide_identity(self.slide)
        self.path = self._choose_path(folder)
        self.state = ReviewState()
        self._restore()
        self.lock = reviewlock.ReviewLock(self.path)
        self.lock_holder: dict | None = self.lock.acquire()  # another viewer editing this review (None: none)

    # ------------------------------------------------------------ the file
    def _choose_path(self, folder):
        found = sidecar.find_sidecar(self.slide.path, self.identity, folder)
        return found if found is not None else sidecar.sidecar_path(self.slide.path, self.identity, folder)

    def _restore(self):
        if not (self.path.exists() or self.path.with_name(self.path.name + ".bak").exists()):
            return
        try:
            self.state, note, doc = sidecar.load_review_document(self.path, self.identity)
        except sidecar.SidecarError as exc:
            self.notes.append(str(exc))
            if "refusing" in str(exc):  # another slide's file: keep it, save this review elsewhere
                self.path = self.path.with_name(f"{Path(self.slide.path).name}.{self.identity['fingerprint']}{sidecar.SUFFIX}")
            return
        self._restore_extras(doc)
        if note:
            self.notes.append(note)
        n = len(self.state.df)
        self.notes.append(f"restored {n:,} detection{'s' if n != 1 else ''} from {self.path.name}")

    def _restore_extras(self, doc: dict):
        """What the file keeps besides the detections: regions, typed nuclei, pixel size, tissue mask."""
        from ...core.counting import is_polygon

        self.regions = [None if r is None else ([list(map(float, p)) for p in r] if is_polygon(r) else tuple(r))
                        for r in doc.get("regions") or []]
        self.nuclei_types = pd.DataFrame(doc["nuclei_types"]) if doc.get("nuclei_types") else None
        mpp = doc.get("mpp")
        self.saved_mpp = float(mpp) if isinstance(mpp, (int, float)) and mpp > 0 else None
        if self.mpp is None and self.saved_mpp is not None:
            self.mpp = self.saved_mpp
        t = doc.get("tissue")
        if isinstance(t, dict):
            from ...core.tissue import TissueMask

            try:
                mask = sidecar.decode_mask(t["mask"])
                ds = float(t["downsample"])
                self.tissue = TissueMask(mask, level=int(t.get("level", 0)), downsample=ds,
                                         mpp=ds * self.mpp if self.mpp else None)
            except (KeyError, TypeError, ValueError) as exc:
                self.notes.append(f"the saved tissue mask could not be read ({exc}); run again to detect it")

    def _extras(self) -> dict:
        from ...core.counting import is_polygon

        regions = [None if r is None else ([list(map(float, p)) for p in r] if is_polygon(r) else list(map(float, r)))
                   for r in self.regions]
        extra = {"regions": regions, "mpp": self.mpp}
        if self.nuclei_types is not None:
            extra["nuclei_types"] = sidecar.json_records(self.nuclei_types)
        if self.tissue is not None:
            extra["tissue"] = {"mask": sidecar.encode_mask(self.tissue.mask), "downsample": float(self.tissue.downsample),
                               "level": int(self.tissue.level)}
        if self.hotspot is not None:
            extra["hotspot"] = {k: (v.item() if isinstance(v, np.generic) else v)
                                for k, v in self.hotspot.as_dict().items()}
        return extra

    # Saving: every change asks the background saver (:mod:`.autosave`) for a save; the GUI never
    # waits for the file. save() / try_save() write now (after any save in flight).
    def _snapshot(self):
        from types import SimpleNamespace

        s = self.state
        return self.path, SimpleNamespace(df=s.df, rejected=s.rejected, thresholds=dict(s.thresholds)), self._extras()

    def _write(self, snap):
        """Write a snapshot (in the writer thread, or on this one for save()); returns (path, note)."""
        path, state, extra = snap
        try:
            return sidecar.save_review(path, state, self.identity, extra), ""
        except OSError as exc:
            fallback = sidecar.fallback_folder() / f"{Path(self.slide.path).name}.{self.identity['fingerprint']}{sidecar.SUFFIX}"
            if fallback == path:
                raise
            return sidecar.save_review(fallback, state, self.identity, extra), \
                f"cannot write {path} ({exc.strerror}); saving to {fallback}"

    def _saved(self, result, error):
        """A save finished (GUI thread): keep where it went, or why it failed."""
        if error is not None:
            if not isinstance(error, (OSError, ValueError)):
                error = RuntimeError(str(error))
            self.save_error = f"{type(error).__name__}: {error}"
        else:
            path, note = result
            self.save_error = None
            if note:
                self.notes.append(note)
            self.path = Path(path)
            self._refresh_lock()
        if self.on_save is not None:
            self.on_save(self)

    @property
    def saver(self):
        if self._saver is None:
            from .autosave import BackgroundSaver

            self._saver = BackgroundSaver(self._snapshot, self._write, self._saved)
        return self._saver

    def request_save(self, later: bool = False):
        """Save in the background: soon, or ``later`` (a run's tile: the tiles finishing meanwhile share it)."""
        from .autosave import RUN_SAVE_DELAY_MS

        self.saver.request(RUN_SAVE_DELAY_MS if later else 0)

    def flush(self):
        """Wait until everything changed so far is in the file (e.g. before napari closes, in tests)."""
        if self._saver is not None:
            self._saver.flush()

    def save(self) -> Path:
        """Write the review now (atomically). Falls back to the fallback folder if the folder is read-only."""
        self.flush()
        path, note = self._write(self._snapshot())
        if note:
            self.notes.append(note)
        self.path = Path(path)
        self._refresh_lock()
        return self.path

    def _refresh_lock(self):
        """After a save: refresh the lock's time (or take over a stale one); a new file gets a lock of its own."""
        if self.lock.path != reviewlock.lock_path(self.path):
            self.lock.release()
            self.lock = reviewlock.ReviewLock(self.path)
            self.lock_holder = self.lock.acquire()
        else:
            self.lock_holder = self.lock.refresh()

    def close(self):
        """The review is closed (its slide or the widget goes): save what is waiting, release the lock."""
        self.flush()
        self.lock.release()

    def try_save(self) -> bool:
        """Save now; on failure keep the reason in :attr:`save_error` (shown by the widget, which retries)
        instead of raising into napari's event handlers. True when saved."""
        try:
            self.save()
        except (OSError, ValueError) as exc:
            self.save_error = f"{type(exc).__name__}: {exc}"
            return False
        self.save_error = None
        return True

    def move_file(self, folder) -> Path:
        """Save the review into another folder from now on."""
        self.flush()
        self.path = sidecar.sidecar_path(self.slide.path, self.identity, folder)
        return self.save()

    def _changed(self, save: bool | str = True, show: bool = True):
        """After every change: save (in the background; ``"later"`` for a run's tiles), show, tell the widget.
        ``show=False``: the layer and the counts are brought up to date later (:meth:`show_changes`)."""
        if save:
            self.request_save(later=save == "later")
        if not show:
            self.stale = True
            return
        self.stale = False
        self.refresh()
        if self.on_change is not None:
            self.on_change()

    def show_changes(self):
        """Show the changes kept back by ``_changed(show=False)`` (a run's tiles), if any."""
        if self.stale:
            self._changed(save=False)

    # ------------------------------------------------------------ the layer
    @property
    def layer_name(self) -> str:
        return f"detections ({self.slide_layer.name})"

    def _features(self) -> pd.DataFrame:
        df = self.state.df
        feats = pd.DataFrame({
            "id": df["id"].to_numpy(np.int64),
            "class": pd.Categorical(df["class"].astype(object), categories=list(CLASSES)),
            "score": df["score"].to_numpy(float),
            "status": df["status"].astype(object).to_numpy(),
        })
        if "type" in df:
            feats["type"] = df["type"].to_numpy()
        return feats

    def ensure_layer(self):
        """Create (or find) the Points layer."""
        if self.layer is not None and self._layer_shown():
            return self.layer
        if self.layer_name in self.viewer.layers:  # a stale layer of that name (e.g. of an earlier review)
            self.viewer.layers.remove(self.layer_name)
        scale = tuple(self.slide_layer.scale[-2:])  # on the slide whatever units it is shown in
        size = MARKER_UM / self.mpp if self.mpp else 48
        self.layer = self.viewer.add_points(
            np.zeros((0, 2)),
            name=self.layer_name,
            scale=scale,
            units=self.slide_layer.units,
            size=size,
            symbol="o",
            border_width=MARKER_RING,
            border_width_is_relative=True,
            canvas_size_limits=(MARKER_MIN_PX, MARKER_MAX_PX),
            features=self._features().iloc[:0],
            feature_defaults={"id": -1, "class": self.current_class, "score": np.nan, "status": "added"},
            face_color=TRANSPARENT,
            border_color=hex_color(class_color(self.current_class)),
            # class and score beside each cell; off by default (layer controls: "display text")
            text={"string": "{class}: {score:.2f}", "size": 8, "color": "white", "anchor": "upper_left",
                  "translation": (-size / 2, size / 2), "visible": False},
            metadata={"napari_mitosis": "detections", "mpp": self.mpp, "slide_path": str(self.slide.path)},
        )
        self.layer.current_size = size
        self._defaults_for, self._shown = None, None
        self.layer.events.data.connect(self._on_layer_data)
        self.layer.selected_data.events.items_changed.connect(self._on_selection)
        self._bind_keys(self.layer)
        self.refresh()
        return self.layer

    def _layer_shown(self) -> bool:
        # napari hands plugins proxies of its objects: compare by unique id, never by identity
        return any(ly.unique_id == self.layer.unique_id for ly in self.viewer.layers)

    def refresh(self):
        """Show the review's detections in the layer (selection kept by id).

        An edit changes a few rows: only those are updated in the layer (its arrays in place, then one
        redraw), so that with a million detections a key press costs one redraw, not a rebuild of the
        layer. Anything else (undo of a removal, a reordered table) rebuilds the layer."""
        if self.layer is None or not self._layer_shown():
            return
        layer, df = self.layer, self.state.df
        selected_ids = set()
        if len(layer.data) and layer.selected_data and "id" in layer.features:
            ids = layer.features["id"].to_numpy()
            selected_ids = {int(ids[i]) for i in layer.selected_data if i < len(ids)}
        if self._focus is not None:
            selected_ids.add(self._focus)
        self._syncing = True
        try:
            layer.selected_data = set()
            if not self._refresh_rows(layer, df):
                self._rebuild(layer, df)
            self._shown = self._shown_of(df)
            if len(df) and selected_ids:
                idx = np.nonzero(df["id"].isin(selected_ids).to_numpy())[0]
                layer.selected_data = {int(i) for i in idx}
            if self._defaults_for != self.current_class:  # each of these redraws all points: only when changed
                layer.feature_defaults = {"id": -1, "class": self.current_class, "score": np.nan, "status": "added"}
                layer.current_face_color = TRANSPARENT
                layer.current_border_color = hex_color(class_color(self.current_class))
                self._defaults_for = self.current_class
        finally:
            self._syncing = False

    @staticmethod
    def _shown_of(df):
        return {"id": df["id"].to_numpy(np.int64).copy(), "yx": df[["y", "x"]].to_numpy(float),
                "class": df["class"].astype(object).to_numpy(), "status": df["status"].astype(object).to_numpy()}

    @staticmethod
    def _colors(classes, statuses):
        classes, statuses = np.asarray(classes, object), np.asarray(statuses, object)
        face = np.zeros((len(classes), 4), np.float32)  # the cell stays visible inside its ring
        border = np.empty((len(statuses), 4), np.float32)
        for c in set(classes.tolist()):
            border[classes == c] = class_color(c, 1.0)
        for st in set(statuses.tolist()):
            border[statuses == st, 3] = STATUS_ALPHA.get(st, 1.0)
        return face, border

    def _rebuild(self, layer, df):
        yx = df[["y", "x"]].to_numpy(float) if len(df) else np.zeros((0, 2))
        layer.data = yx
        layer.features = self._features()
        if len(df):
            face, border = self._colors(df["class"], df["status"])
            layer.face_color = face
            layer.border_color = border

    def _refresh_rows(self, layer, df) -> bool:
        """Bring the layer in line by the rows that changed; False when it has to be rebuilt.

        Handled: rows removed (order kept), rows appended, class/status/position changes of the
        others: what edits, imports and a run's tiles do."""
        old = self._shown
        if old is None or len(layer.data) != len(old["id"]) or not len(old["id"]):
            return False
        new_ids = df["id"].to_numpy(np.int64)
        keep = np.isin(old["id"], new_ids)
        m = int(keep.sum())
        if m > len(new_ids) or not np.array_equal(old["id"][keep], new_ids[:m]) or np.isin(new_ids[m:], old["id"]).any():
            return False
        if m == 0 or len(new_ids) - m > max(1000, m):  # mostly new: rebuilding is as cheap
            return False
        changed = False
        if not keep.all():
            layer.selected_data = set(np.nonzero(~keep)[0].tolist())
            layer.remove_selected()
            changed = True
        if len(new_ids) > m:  # appended rows: added as napari adds points, then given their own values
            with layer.events.set_data.blocker():  # drawn once, below
                layer.add(df[["y", "x"]].to_numpy(float)[m:])
            changed = True
        feats = layer.features
        if len(feats) != len(df):
            return False
        cls = df["class"].astype(object).to_numpy()
        st = df["status"].astype(object).to_numpy()
        yx = df[["y", "x"]].to_numpy(float)
        rows = np.zeros(len(df), bool)
        rows[m:] = True
        rows[:m] |= (old["class"][keep] != cls[:m]) | (old["status"][keep] != st[:m])
        moved = np.zeros(len(df), bool)
        moved[:m] = (old["yx"][keep] != yx[:m]).any(axis=1)
        if moved.any():
            layer.data[moved] = yx[moved]  # the layer's own array, redrawn below
            changed = True
        if rows.any():
            idx = np.nonzero(rows)[0]
            new = self._features().iloc[idx]
            for col in feats.columns:
                if col in new:
                    feats.loc[feats.index[idx], col] = new[col].to_numpy()
            face, border = self._colors(cls[idx], st[idx])
            layer.face_color[idx] = face
            layer.border_color[idx] = border
            if layer.text.visible:
                layer.refresh_text()
            changed = True
        if changed:
            layer.refresh()
        return True

    def _on_selection(self, *_):
        """A cell clicked (or a selection changed by napari's tools): the widget shows it as the current one."""
        if not self._syncing and self.on_focus is not None:
            self.on_focus()

    def _on_layer_data(self, event):
        """napari's own tools changed the points: bring the review in line."""
        if self._syncing or str(getattr(event, "action", "")) not in ("added", "removed", "changed"):
            return
        self.reconcile()

    def reconcile(self):
        layer = self.layer
        feats = layer.features
        ids = feats["id"].to_numpy(np.int64) if "id" in feats and len(feats) else np.zeros(0, np.int64)
        yx = np.asarray(layer.data, float).reshape(-1, 2)
        known = set(self.state.df["id"].tolist())
        seen, new_rows, moved_ids, moved_xy = set(), [], [], []
        by_id = self.state.df.set_index("id")
        for i, pid in enumerate(ids):
            pid = int(pid)
            if pid in known and pid not in seen:
                seen.add(pid)
                x0, y0 = by_id.at[pid, "x"], by_id.at[pid, "y"]
                if abs(x0 - yx[i, 1]) > 1e-6 or abs(y0 - yx[i, 0]) > 1e-6:
                    moved_ids.append(pid)
                    moved_xy.append((yx[i, 1], yx[i, 0]))
            else:
                cls = feats["class"].iloc[i] if "class" in feats else self.current_class
                new_rows.append((yx[i, 1], yx[i, 0], cls if cls in CLASSES else self.current_class))
        removed = known - seen
        if removed:
            self.state.remove(sorted(removed))
        if moved_ids:
            self.state.move(moved_ids, moved_xy)
        for x, y, cls in new_rows:
            self.state.add(x, y, cls)
        if removed or moved_ids or new_rows:
            self._changed()

    # ------------------------------------------------------------ edits
    def selected_ids(self) -> list[int]:
        if self.layer is None or not self.layer.selected_data:
            return []
        ids = self.layer.features["id"].to_numpy()
        return [int(ids[i]) for i in sorted(self.layer.selected_data) if i < len(ids)]

    def set_class(self, cls: str):
        """Give the selected cells ``cls``; with nothing selected, make it the class for new cells."""
        ids = self.selected_ids()
        if not ids:
            self.current_class = cls
        if ids:
            self.state.set_class(ids, cls)
            self._changed()
        else:
            self.refresh()

    def confirm(self):
        ids = self.selected_ids()
        if ids:
            self.state.confirm(ids)
            self._changed()

    def remove(self):
        ids = self.selected_ids()
        if ids:
            self.state.remove(ids)
            self._focus = None
            self._changed()

    def add_at(self, position_world, cls: str | None = None) -> int | None:
        """Add a cell at a world position (e.g. the mouse); returns its id."""
        layer = self.ensure_layer()
        y, x = np.asarray(layer.world_to_data(position_world))[-2:]
        h, w = self.slide.shape
        if not (0 <= x < w and 0 <= y < h):
            return None
        i = self.state.add(float(x), float(y), cls or self.current_class)
        self._changed()
        return i

    def undo(self):
        if self.state.undo():
            self._changed()

    def redo(self):
        if self.state.redo():
            self._changed()

    def add_model_detections(self, df, region=None):
        """Model detections streaming in (one tile's); ``region`` = the re-analysed rectangle to replace."""
        self.ensure_layer()
        if df is not None and len(df):
            self.state.add_model(df, replace_region=region)
            self._changed()

    def clear_region(self, region):
        """Forget the unreviewed model detections in ``region`` (reviewed cells stay)."""
        if self.state.drop_unreviewed(region):
            self._changed()

    def _same_cell_px(self) -> float:
        return SAME_CELL_UM / self.mpp if self.mpp else SAME_CELL_UM * 4

    def add_run_tile(self, df, run_ids: set, region=None, show: bool = True) -> list[int]:
        """One tile's detections of a run over ``region`` (rectangle, polygon or None): they replace
        the earlier unreviewed detections of the same cells; reviewed and removed cells stay decided
        (:meth:`ReviewState.add_run_tile`). Nothing is dropped before the run finishes. ``show=False``:
        the layer and counts are updated later, by :meth:`show_changes` (a run shows its tiles a few
        times a second, not once per tile)."""
        from ...core.counting import region_contains

        self.ensure_layer()
        if df is None or not len(df):
            return []
        df = df[region_contains(region, df[["x", "y"]].to_numpy(float))]
        ids = self.state.add_run_tile(df, run_ids, self._same_cell_px())
        if ids or len(df):
            self._changed(save="later", show=show)  # the tiles finishing meanwhile share one save
        return ids

    def finish_run(self, region, run_ids: set) -> int:
        """The run over ``region`` finished: earlier unreviewed detections it did not find again go.
        ``region`` None = all tissue: only those on the tissue mask go."""
        df = self.state.df
        keep = set(run_ids)
        if region is None and self.tissue is not None and len(df):
            t = self.tissue
            r = np.clip((df["y"].to_numpy(float) / t.downsample).astype(int), 0, t.mask.shape[0] - 1)
            c = np.clip((df["x"].to_numpy(float) / t.downsample).astype(int), 0, t.mask.shape[1] - 1)
            keep |= set(df["id"].to_numpy()[~t.mask[r, c]].tolist())  # off the tissue: not analysed, kept
        n = self.state.finish_run(region, keep)
        if n:
            self._changed()
        return n

    def add_region(self, region):
        """Record an analysed region (``None`` = all tissue) for the counts."""
        if region not in self.regions:
            self.regions.append(region)
            self._changed()

    def set_nuclei_types(self, table):
        """Keep the typed nuclei of a region (replacing earlier ones inside it) with the review."""
        cols = [c for c in ("x", "y", "area_um2", "type", "type_name") if c in table.columns]
        new = table[cols].copy()
        old = self.nuclei_types
        if old is not None and len(old) and len(new):
            x0, x1, y0, y1 = new["x"].min(), new["x"].max(), new["y"].min(), new["y"].max()
            keep = ~(old["x"].between(x0, x1) & old["y"].between(y0, y1))
            new = pd.concat([old[keep], new], ignore_index=True)
        self.nuclei_types = new
        self._changed()

    def check_import(self, df, name: str = "the file", other_slide_ok: bool = False):
        """Refuse detections that cannot be on this slide (ValueError naming the first one): outside
        the slide in level-0 pixels (another slide's file, or other units); a file that names another
        slide is refused with :class:`OtherSlideError` unless ``other_slide_ok`` (the user confirmed)."""
        from ...core.detections import check_detections

        named = (getattr(df, "attrs", None) or {}).get("slide")
        this = Path(str(self.slide.path)).name
        if named and not other_slide_ok and not _same_slide_name(named, this):
            raise OtherSlideError(f"{name} names the slide {named!r}, not this one ({this!r}): its cells may be "
                                  "of another slide. Nothing was imported")
        df = check_detections(df, name)
        h, w = self.slide.shape
        x, y = df["x"].to_numpy(float), df["y"].to_numpy(float)
        off = (x < 0) | (x >= w) | (y < 0) | (y >= h)
        if off.any():
            i = int(np.argmax(off))
            raise ValueError(f"{name}: {int(off.sum()):,} of {len(df):,} detections lie outside this slide "
                             f"({w:,} x {h:,} px), e.g. row {i + 1} at x={x[i]:,.0f}, y={y[i]:,.0f}: is it of another "
                             "slide, or not in level-0 pixels? Nothing was imported")
        return df

    def import_detections(self, df, name: str = "the file", other_slide_ok: bool = False) -> int:
        """Add detections read from a file (their status kept); returns how many were new.

        Refused as a whole (ValueError) when a coordinate is not a finite number or lies off the
        slide, or (:class:`OtherSlideError`) when the file names another slide and ``other_slide_ok``
        is not given; a cell already in the review at the same place (within 1 px) is not added
        again, so importing a file twice does not duplicate it. Cells labelled as not mitoses
        (``not_mitosis``, ``non-mitosis``, ``negative``, ...) become rejected cells (hard negatives):
        not counted, kept for retraining.
        """
        from ...core.review import near

        df = self.check_import(df, name, other_slide_ok)
        known = pd.concat([self.state.df[["x", "y"]], self.state.rejected[["x", "y"]]]).to_numpy(float)
        df = df[~near(df[["x", "y"]].to_numpy(float), known, 1.0)]
        self.ensure_layer()
        if not len(df):
            return 0
        negative = df.pop("negative").fillna(False).astype(bool).to_numpy() if "negative" in df else np.zeros(len(df), bool)
        self.last_import_negatives = int(negative.sum())
        if negative.any():
            self.state.add_rejected(df[negative])
        if (~negative).any():
            self.state.load(df[~negative])
        self._changed()
        return len(df)

    # ------------------------------------------------------------ queue
    def current(self) -> dict | None:
        """The cell shown: the first selected one, else the last one the queue went to; None when none.

        ``index`` is its place (1-based) among all ``total`` detections in the queue's order (most
        likely first, or uncertain first), reviewed or not; ``class``, ``score``, ``status``, ``id``, ``x``, ``y``."""
        sel = self.selected_ids()
        pid = sel[0] if sel else self._focus
        df = self.state.df
        if pid is None or not len(df):
            return None
        where = np.nonzero(df["id"].to_numpy() == pid)[0]
        if not len(where):
            return None
        row = df.iloc[int(where[0])]
        order = self.order_ids()
        index = int(np.nonzero(order == pid)[0][0]) + 1
        return {"id": int(pid), "index": index, "total": len(df), "class": row["class"], "score": float(row["score"]),
                "status": row["status"], "x": float(row["x"]), "y": float(row["y"])}

    def toggle_markers(self) -> bool:
        """Hide / show the markers (to look at the tissue under them); returns whether they are shown."""
        layer = self.ensure_layer()
        layer.visible = not layer.visible
        return layer.visible

    def go_to_hotspot(self) -> bool:
        """Centre the view on the hotspot and fit it in the canvas; False when there is none."""
        h = self.hotspot
        if h is None or not h.count:
            return False
        scale = np.asarray(self.slide_layer.scale[-2:], float)
        self.viewer.camera.center = tuple(np.array([h.y + h.height / 2, h.x + h.width / 2]) * scale)
        w_px = max(int(self.canvas_width()) if self.canvas_width is not None else 800, 200)
        self.viewer.camera.zoom = 0.9 * w_px / (max(h.width, h.height) * float(scale[-1]))
        return True

    def order_ids(self) -> np.ndarray:
        """All cell ids in the queue's order (cached until the next change)."""
        key = (self.state.version, id(self.state.df), self.order)
        if self._order_cache is None or self._order_cache[0] != key:
            self._order_cache = (key, self.state.full_order(self.order))
        return self._order_cache[1]

    def go(self, step: int = 1) -> int | None:
        """Select the next (``step=1``) / previous (``-1``) unreviewed detection and centre the view on it."""
        self.ensure_layer()
        after = self._focus
        sel = self.selected_ids()
        if sel:
            after = sel[0]
        pid = self.state.next_unreviewed(self.order, after=after, step=step)
        if pid is None:
            return None
        return self.go_to(pid)

    def go_to(self, pid: int) -> int | None:
        """Select cell ``pid`` and centre the view on it (zoomed in enough to judge it)."""
        layer = self.ensure_layer()
        where = np.nonzero(self.state.df["id"].to_numpy() == pid)[0]
        if not len(where):
            return None
        self._focus = int(pid)
        row = self.state.df.iloc[int(where[0])]
        self.refresh()
        self._syncing = True
        try:
            layer.selected_data = {int(where[0])}
        finally:
            self._syncing = False
        world = np.asarray(layer.data_to_world((row["y"], row["x"])))[-2:]
        self.viewer.camera.center = tuple(world)
        self._zoom_to(FOCUS_FIELD_UM)
        if self.on_focus is not None:
            self.on_focus()
        return int(pid)

    def _zoom_to(self, field_um: float):
        """Zoom in so that about ``field_um`` shows across the canvas (never zoom out)."""
        w_px = max(int(self.canvas_width()) if self.canvas_width is not None else 800, 200)
        field_px = field_um / self.mpp if self.mpp else field_um * 4  # level-0 px
        zoom = w_px / (field_px * float(self.slide_layer.scale[-1]))
        if self.viewer.camera.zoom < zoom * 0.5:
            self.viewer.camera.zoom = zoom

    # ------------------------------------------------------------ keys
    def _bind_keys(self, layer):
        for key, func in review_keys(lambda: self, self.viewer).items():
            layer.bind_key(key, lambda _layer, func=func: func(), overwrite=True)


def review_keys(get_review, viewer) -> dict:
    """The review keys: napari key -> function of no argument acting on ``get_review()`` (the review
    shown, or None: then the key does nothing)."""

    def on_review(method, *args):
        def call():
            review = get_review()
            if review is not None:
                return getattr(review, method)(*[a() if callable(a) else a for a in args])
            return None

        return call

    keys = {}
    for k, cls in CLASS_KEYS.items():
        keys[k] = on_review("set_class", cls)
        keys[f"Shift-{k}"] = on_review("add_at", lambda: viewer.cursor.position, cls)
    keys.update({"c": on_review("confirm"), "x": on_review("remove"), "i": on_review("add_at", lambda: viewer.cursor.position),
                 "n": on_review("go", 1), "h": on_review("toggle_markers"), "Shift-n": on_review("go", -1), "Control-z": on_review("undo"),
                 "Control-Shift-z": on_review("redo")})
    return keys
