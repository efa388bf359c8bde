"""The "Mitosis review" dock widget (thin: parameters, workers, layers).

Five parts, top to bottom (built in :mod:`.review_panels`):

- **Slide**: name, size, pixel size (asked for, with 0.25 um/px offered, when
  the file does not say), pyramid, tissue.
- **Analyse**: what (current view, last drawn rectangle or polygon, all
  tissue), which steps, on which device; Run becomes Cancel while it runs.
  Results stream into layers as tiles finish (:mod:`.review_layers`).
- **Review**: the review queue (next / previous unreviewed detection, by
  score or uncertain first), the class for new cells, the keys.
- **Counts** (live, as the pathologist edits or draws) and **Files**: where the
  review autosaves, export (counts, detections CSV, QuPath GeoJSON, a
  retraining dataset) and import (CSV / GeoJSON, e.g. from QuPath).

Each slide has its own :class:`~.annotations.DetectionReview` (detections,
tissue mask, analysed regions, pixel size), saved in its review file;
selecting another slide layer switches to its review.

A run never deletes earlier results up front: each tile's detections replace
the earlier unreviewed detections of the same cells, and only a run that
finishes drops the earlier unreviewed detections of its region it did not
find again. Reviewed cells are never touched by a run. So cancelling, or
closing napari, mid-run loses nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtWidgets import QFileDialog, QFrame, QScrollArea, QVBoxLayout, QWidget

from ...pipeline import Progress
from . import review_layers as show
from .review_layers import slide_layers
from .review_panels import (
    DEFAULT_MPP,
    ORDER_LABELS,
    REGION_RECTANGLE,
    REGION_TISSUE,
    REGION_VIEW,
    RUN_LABEL,
    AnalysePanel,
    CountsPanel,
    FilesPanel,
    QueuePanel,
    SlidePanel,
    breakable,
)

if TYPE_CHECKING:  # pragma: no cover
    import napari

__all__ = ["ReviewWidget", "slide_layers", "found_devices", "REGION_VIEW", "REGION_RECTANGLE", "REGION_TISSUE",
           "RUN_LABEL", "ORDER_LABELS", "DEFAULT_MPP"]


#: A failed autosave is tried again after this many seconds (and on every edit).
SAVE_RETRY_S = 5
#: A run shows its new detections and counts at most this often (ms): per-tile GUI work stays small.
#: Showing them redraws every point (napari), so a layer of many points is redrawn less often:
#: every RUN_VIEW_MS, plus RUN_VIEW_MS per RUN_VIEW_POINTS points already shown, up to 15 s.
RUN_VIEW_MS = 1000
RUN_VIEW_POINTS = 50_000
#: The count lines' names.
COUNT_NAMES = {"mitotic_figure": "Mitotic figures", "granulocyte": "Granulocytes", "other": "Other cells"}


def found_devices() -> str:
    """What compute devices are here, in words."""
    import torch

    if torch.cuda.is_available():
        return f"CUDA: {torch.cuda.get_device_name(0)}"
    return "CPU only (no CUDA GPU found)"


@dataclass
class RunContext:
    """One run: the slide layer and review it belongs to (whatever is selected meanwhile), its region
    (``(x, y, w, h)``, a polygon, or None for all tissue), its steps and the ids of the detections it added."""

    layer: object
    review: object
    region: object
    steps: list
    run_ids: set = field(default_factory=set)


def apply_mpp(layer, review, mpp: float):
    """Give a slide whose file does not say its pixel size the one entered (layer scale, review, markers)."""
    slide = layer.metadata["slide"]
    slide.mpp, slide.mpp_source = float(mpp), "user"
    layer.scale = (mpp, mpp)
    layer.units = ("micrometer", "micrometer")
    layer.metadata["mpp"] = mpp
    if review is not None:
        review.mpp = float(mpp)
        if review.layer is not None:
            review.layer.scale = (mpp, mpp)
            review.layer.units = layer.units


def _unbind_keys(viewer, keys, key_layers):
    for key in keys:
        try:
            viewer.bind_key(key, None)
        except (KeyError, ValueError, RuntimeError):
            pass
    for layer, mine in list(key_layers.values()):
        for key in mine:
            try:
                layer.bind_key(key, None)
            except (KeyError, ValueError, RuntimeError):
                pass
    key_layers.clear()


def lock_warning(holder: dict) -> str:
    """The warning for a review whose lock another viewer holds (see :mod:`napari_mitosis.io.reviewlock`)."""
    from ...io.reviewlock import describe

    who, since = describe(holder)
    return (f"this slide's review is open in another viewer ({who}) since {since}: edits here and there "
            "would overwrite each other; close it there first")


class ReviewWidget(QWidget):
    """Dock widget: run the analysis on a slide, review and count the detections, export."""

    @staticmethod
    def available_steps() -> dict:
        """Step -> '' when it can run here, else why not."""
        from ...pipeline.review import available_steps

        return available_steps()

    def __init__(self, napari_viewer: napari.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.worker = None  # the analysis run
        self.export_worker = None  # the retraining export
        self.review = None  # DetectionReview of the current slide layer
        self._reviews: dict = {}  # slide layer unique_id -> DetectionReview
        self._run_ctx: RunContext | None = None
        from qtpy.QtCore import QTimer

        self._save_retry = QTimer(self)
        self._save_retry.setSingleShot(True)
        self._save_retry.timeout.connect(self._retry_save)
        self._cancelling = False
        self._view_timer = QTimer(self)  # a run's tiles are shown together, a few times a second
        self._view_timer.setSingleShot(True)
        self._view_timer.timeout.connect(self._show_run_changes)
        self._build()
        self._connect()
        self._key_layers: dict = {}  # layer unique_id -> (layer, keys bound on it)
        self.bind_keys()
        self._refresh()

    # ------------------------------------------------------------------ build
    def _build(self):
        from ...pipeline.review import STEP_NAMES
        from .annotations import KEY_HELP

        self.slide_panel = SlidePanel()
        self.analyse_panel = AnalysePanel(STEP_NAMES, self.available_steps(), found_devices())
        self.queue_panel = QueuePanel(KEY_HELP)
        self.counts_panel = CountsPanel()
        from qtpy.QtWidgets import QGroupBox

        from .review_table import DetectionTable

        self.table = DetectionTable()  # the detections, as QuPath's measurement table; click to go
        self.table_panel = QGroupBox("Detections")
        QVBoxLayout(self.table_panel).addWidget(self.table)
        self.files_panel = FilesPanel()
        # the controls by name, as tests and scripts reach them
        p = self.slide_panel
        self.slide_label, self.size_label, self.mpp_label, self.levels_label = p.slide_label, p.size_label, p.mpp_label, p.levels_label
        self.mpp_box, self.mpp_apply, self.mpp_edit, self.tissue_label = p.mpp_box, p.mpp_apply, p.mpp_edit, p.tissue_label
        p = self.analyse_panel
        self.region, self.step_boxes, self.nuclei_method, self.stain = p.region, p.step_boxes, p.nuclei_method, p.stain
        self.device, self.device_label, self.run_button = p.device, p.device_label, p.run_button
        self.progress, self.status, self.sensitivity = p.progress, p.status, p.sensitivity
        p = self.queue_panel
        self.order, self.prev_button, self.next_button = p.order, p.prev_button, p.next_button
        self.new_class, self.review_label, self.current_label = p.new_class, p.review_label, p.current_label
        self.hotspot_button = self.counts_panel.hotspot_button
        self.counts_label, self.types_label = self.counts_panel.counts_label, self.counts_panel.types_label
        p = self.files_panel
        self.file_label, self.folder_button, self.export_button = p.file_label, p.folder_button, p.export_button
        self.training_button, self.import_button = p.training_button, p.import_button

        # the parts live in a scroll area: a short screen scrolls instead of squashing the buttons
        inner = QWidget()
        layout = QVBoxLayout(inner)
        for panel in (self.slide_panel, self.analyse_panel, self.queue_panel, self.table_panel, self.counts_panel,
                      self.files_panel):
            layout.addWidget(panel)
        layout.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setWidget(inner)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(scroll)

    def _connect(self):
        self.mpp_apply.clicked.connect(self._apply_mpp)
        self.run_button.clicked.connect(self._run)
        self.order.currentIndexChanged.connect(self._order_changed)
        self.prev_button.clicked.connect(lambda: self._go(-1))
        self.hotspot_button.clicked.connect(self.go_to_hotspot)
        self.table.clicked.connect(lambda index: self._go_to_row(index.row()))
        self.table.activated.connect(lambda index: self._go_to_row(index.row()))
        self.next_button.clicked.connect(lambda: self._go(1))
        self.new_class.currentIndexChanged.connect(self._class_changed)
        self.export_button.clicked.connect(self._export_dialog)
        self.training_button.clicked.connect(self._training_dialog)
        self.import_button.clicked.connect(self._import_dialog)
        self.folder_button.clicked.connect(self._folder_dialog)
        self.viewer.layers.events.inserted.connect(self._on_inserted)
        self.viewer.layers.events.removed.connect(self._on_removed)
        self.viewer.layers.selection.events.active.connect(self._refresh)
        for ly in self.viewer.layers:
            self._watch_shapes(ly)
        # partial results of a run, by kind (see pipeline.review): explicit, no name lookups
        self._partials = {
            "tissue": self._show_tissue,
            "detections": self._show_detections,
            "nuclei": self._show_nuclei,
            "heatmap": self._show_heatmap,
            "types": self._show_types,
        }

    # ------------------------------------------------------------------ state
    @property
    def slide_layer(self):
        # napari hands plugins proxies of its objects: compare layers by their unique id, never by identity
        layers = {ly.unique_id: ly for ly in slide_layers(self.viewer)}
        active = self.viewer.layers.selection.active
        if active is not None and active.unique_id in layers:
            return layers[active.unique_id]
        if self.review is not None and self.review.slide_layer.unique_id in layers:
            return layers[self.review.slide_layer.unique_id]
        return next(iter(layers.values()), None)

    @property
    def slide(self):
        layer = self.slide_layer
        return None if layer is None else layer.metadata["slide"]

    @property
    def tissue(self):
        """The tissue mask of the current slide (each slide has its own)."""
        return None if self.review is None else self.review.tissue

    # ------------------------------------------------------------------- keys
    def bind_keys(self):
        """The review keys work whichever layer is selected while the widget is open: bound on the
        viewer, and on each layer whose own keymap has one of them (Labels' Ctrl+Z)."""
        from .annotations import review_keys

        self._keys = review_keys(lambda: self.review, self.viewer)
        for key, func in self._keys.items():
            self.viewer.bind_key(key, lambda _viewer, func=func: func(), overwrite=True)
        for ly in self.viewer.layers:
            self._bind_layer_keys(ly)
        import functools

        self.destroyed.connect(functools.partial(_unbind_keys, self.viewer, list(self._keys), self._key_layers))

    def _bind_layer_keys(self, layer):
        from app_model.types import KeyBinding

        if layer.metadata.get("napari_mitosis") == "detections":
            return  # the review binds its own layer
        shadowed = set()
        for cls in type(layer).__mro__:
            shadowed |= {str(k) for k in getattr(cls, "class_keymap", {})}
        mine = [k for k in self._keys if str(KeyBinding.from_str(k)) in shadowed]
        for key in mine:
            layer.bind_key(key, lambda _layer, func=self._keys[key]: func(), overwrite=True)
        if mine:
            self._key_layers[layer.unique_id] = (layer, mine)

    def unbind_keys(self):
        """The keys are napari's again (the widget closes)."""
        _unbind_keys(self.viewer, list(getattr(self, "_keys", {})), self._key_layers)
        self._keys = {}

    def closeEvent(self, event):
        self.unbind_keys()
        if self.worker is not None:
            self._cancel()
        for review in self._reviews.values():
            review.close()  # saved, lock released (a later save takes it again)
        super().closeEvent(event)

    def _on_inserted(self, event):
        if getattr(self, "_keys", None):
            self._bind_layer_keys(event.value)
        self._refresh()
        if self._watch_shapes(event.value):  # drawn with data already (pasted, opened, scripted)
            self._update_counts()

    def _on_removed(self, event):
        gone = event.value
        self._key_layers.pop(gone.unique_id, None)
        ctx = self._run_ctx
        if ctx is not None and ctx.layer.unique_id == gone.unique_id and self.worker is not None:
            self._cancel()  # its slide is gone (or napari is closing): stop the run
        review = self._reviews.pop(gone.unique_id, None)
        if review is not None:
            review.close()  # what is waiting for the writer goes to the file, the lock is released
        if review is not None and review is self.review:
            self.review = None
        self._refresh()

    def _watch_shapes(self, layer):
        """Counts of a drawn region follow the drawing as it changes."""
        from .regions import user_shapes_layers

        if any(ly.unique_id == layer.unique_id for ly in user_shapes_layers(self.viewer)):
            layer.events.data.connect(self._update_counts)
            return True
        return False

    def _refresh(self, event=None):
        layer, slide = self.slide_layer, self.slide
        running = self.worker is not None
        exporting = self.export_worker is not None
        self.run_button.setEnabled(running or (slide is not None and slide.mpp is not None and not exporting))
        has_review = slide is not None
        for w in (self.prev_button, self.next_button, self.export_button, self.import_button, self.folder_button):
            w.setEnabled(has_review and not running)
        self.training_button.setEnabled(has_review and not running and not exporting)
        self.mpp_edit.setVisible(slide is not None and slide.mpp_source in ("unknown", "user"))
        if slide is None:
            self.slide_label.setText("open a slide (File > Open) or File > Open Sample > Synthetic H&E slide")
            for label in (self.size_label, self.mpp_label, self.levels_label):
                label.setText("-")
            self.tissue_label.setText("-")
            return
        if self.review is None or self.review.slide_layer.unique_id != layer.unique_id:
            self._open_review(layer)
        self._show_slide_info(layer, slide)

    def _show_slide_info(self, layer, slide):
        w, h = slide.dimensions
        self.slide_label.setText(breakable(layer.name))
        mm = f" ({w * slide.mpp / 1000:.1f} x {h * slide.mpp / 1000:.1f} mm)" if slide.mpp else ""
        self.size_label.setText(f"{w:,} x {h:,} px{mm}")
        if slide.mpp:
            obj = f", {slide.objective_power:g}x" if slide.objective_power else ""
            self.mpp_label.setText(f"{slide.mpp:.4g} um/px ({slide.mpp_source}{obj})")
        else:
            self.mpp_label.setText("unknown: the file does not say. Enter it below (0.25 um/px = 40x, 0.5 = 20x) to run the models")
        n = slide.level_count
        self.levels_label.setText(f"{n} level{'s' if n != 1 else ''} ({slide.file_levels} in the file)")
        self.tissue_label.setText(show.tissue_text(self.tissue))

    def _canvas_width(self) -> int:
        """The canvas width in screen pixels, from Qt (the main window less this dock), not napari's internals."""
        win = self.window()
        return max(win.width() - self.width(), 200) if win is not None and win is not self else 800

    def _open_review(self, layer):
        from .annotations import DetectionReview

        key = layer.unique_id
        if key not in self._reviews:
            review = DetectionReview(self.viewer, layer, on_change=self._update_counts, canvas_width=self._canvas_width,
                                     on_save=self._on_saved)
            self._reviews[key] = review
            slide = layer.metadata["slide"]
            if slide.mpp is None and review.mpp is not None:  # the pixel size entered last time
                apply_mpp(layer, review, review.mpp)
                review.notes.append(f"pixel size {review.mpp:g} um/px as entered before")
            if review.tissue is not None:
                show.show_tissue(self.viewer, layer, review.tissue)
            if len(review.state.df) or review.notes:
                review.ensure_layer()
            if review.notes or review.lock_holder:
                self.status.setText("; ".join(([lock_warning(review.lock_holder)] if review.lock_holder else [])
                                              + review.notes))
        self.review = self._reviews[key]
        self.review.on_focus = self._show_current
        self.review.order = self.queue_panel.order_key()
        self.review.current_class = self.queue_panel.class_key()
        self.file_label.setText(breakable(str(self.review.path)))
        self._update_counts()

    def _apply_mpp(self):
        """Use the pixel size typed in for a slide whose file does not say it."""
        layer = self.slide_layer
        if layer is None:
            return
        review = self._reviews.get(layer.unique_id)
        apply_mpp(layer, review, float(self.mpp_box.value()))
        if review is not None:
            review.request_save()  # the pixel size is part of the review
        self.viewer.reset_view()
        self._refresh()
        self._update_counts()

    # ---------------------------------------------------------------- running
    def _steps(self) -> list[str]:
        return [k for k, b in self.step_boxes.items() if b.isChecked() and b.isEnabled()]

    def _region(self, layer, slide):
        """(region, all_tissue): region is ``(x, y, w, h)`` or a level-0 polygon."""
        from .regions import last_region, view_region

        kind = self.region.currentText()
        if kind == REGION_VIEW:
            return view_region(layer, slide), False
        if kind == REGION_RECTANGLE:
            return last_region(self.viewer, layer), False
        return None, True

    def _run(self):
        if self.worker is not None:  # Run is Cancel while running
            return self._cancel()
        layer, slide = self.slide_layer, self.slide
        if slide is None:
            return
        try:
            region, all_tissue = self._region(layer, slide)
        except ValueError as exc:
            self.status.setText(str(exc))
            return
        from ...core.counting import region_bounds
        from ...pipeline.review import review_task

        if region is not None:
            x, y, w, h = region_bounds(region)
            roi = (int(x), int(y), max(1, int(np.ceil(w))), max(1, int(np.ceil(h))))
        else:
            roi = None
        review = self._reviews[layer.unique_id]
        steps = self._steps()
        stain = self.stain.currentText()
        review.ensure_layer()
        review.layer.visible = True
        operating_point, thresholds = self.sensitivity.choice()
        task = review_task(slide, roi, all_tissue, review.tissue, steps, self.device.currentText(),
                           None if stain == "none" else stain, self.nuclei_method.currentText(),
                           operating_point=operating_point, thresholds=thresholds)
        self._run_ctx = RunContext(layer, review, region, steps)
        self._start(task, f"running {', '.join(steps) or 'nothing'} on {self.region.currentText()}...")

    def _start(self, task, message):
        from napari.qt.threading import create_worker

        def gen():
            return (yield from task)

        ctx = self._run_ctx
        worker = create_worker(gen, _start_thread=False)
        alive = self._while_alive  # signals still queued when napari closes must not reach a deleted widget
        worker.yielded.connect(alive(lambda p: self._on_progress(p, ctx)))
        worker.returned.connect(alive(lambda result: self._on_done(result, ctx)))
        worker.errored.connect(alive(self._on_error))
        worker.aborted.connect(alive(lambda: self._on_aborted(ctx)))
        worker.finished.connect(lambda: (ctx.review.show_changes(), ctx.review.request_save()))  # saved now
        worker.finished.connect(alive(self._on_finished))
        self.worker = worker
        self.run_button.setText("Cancel")
        self._refresh()
        self.progress.setVisible(True)
        self.progress.setValue(0)
        self.status.setText(message)
        worker.start()

    def _while_alive(self, func):
        """``func``, called only while this widget's Qt object exists."""
        from qtpy.compat import isalive

        def call(*args):
            if isalive(self):
                return func(*args)
            return None

        return call

    def _show_run_changes(self):
        ctx = self._run_ctx
        if ctx is not None:
            ctx.review.show_changes()

    def _cancel(self):
        self._cancelling = True
        self.status.setText("cancelling...")
        self.worker.quit()

    def _on_progress(self, p: Progress, ctx: RunContext):
        if self._cancelling:  # progress queued before the cancel arrives late: ignore it
            return
        self.progress.setMaximum(max(p.total, 1))
        self.progress.setValue(p.done)
        self.status.setText(p.message)
        if p.partial is not None:
            kind, value = p.partial
            handler = self._partials.get(kind)
            if handler is not None:
                handler(value, ctx)

    def _show_tissue(self, tissue, ctx: RunContext):
        ctx.review.tissue = tissue
        show.show_tissue(self.viewer, ctx.layer, tissue)
        self._keep_detections_on_top(ctx.review)
        if ctx.review is self.review:
            self.tissue_label.setText(show.tissue_text(tissue))
        ctx.review.request_save()
        self._update_counts()

    def _show_detections(self, df, ctx: RunContext):
        ctx.review.add_run_tile(df, ctx.run_ids, ctx.region, show=False)  # in the review now, shown soon
        if not self._view_timer.isActive():
            n = len(ctx.review.state.df)
            self._view_timer.start(int(min(RUN_VIEW_MS * (1 + n / RUN_VIEW_POINTS), 15_000)))

    def _show_nuclei(self, result, ctx: RunContext):
        show.show_nuclei(self.viewer, ctx.layer, result)
        self._keep_detections_on_top(ctx.review)

    def _show_heatmap(self, result, ctx: RunContext):
        show.show_heatmap(self.viewer, ctx.layer, result)
        self._keep_detections_on_top(ctx.review)

    def _show_types(self, result, ctx: RunContext):
        self.types_label.setText(show.show_types(self.viewer, ctx.layer, result))
        ctx.review.set_nuclei_types(result[1])

    def _keep_detections_on_top(self, review=None):
        review = review or self.review
        if review is not None:
            show.keep_on_top(self.viewer, review.layer_name)

    def _on_done(self, result, ctx: RunContext):
        ctx.review.show_changes()
        if result.get("tissue") is not None and ctx.review.tissue is None:
            self._show_tissue(result["tissue"], ctx)
        det = result.get("cells")
        msg = []
        if det is not None:
            if det.attrs.get("partial"):  # tiles failed: their earlier detections are kept
                msg.append(f"PARTIAL: {det.attrs['partial']}")
            else:
                ctx.review.finish_run(ctx.region, ctx.run_ids)
            ctx.review.add_region(ctx.region)
            msg.insert(0, f"{len(det):,} detections")
        if "nuclei" in result:
            msg.append(f"{len(result['nuclei'][1]):,} nuclei")
        self.status.setText("done: " + ", ".join(msg) if msg else "done")
        self._keep_detections_on_top(ctx.review)
        self._update_counts()

    def _on_aborted(self, ctx: RunContext):
        self.status.setText(f"cancelled; earlier detections are kept, with the {len(ctx.run_ids):,} found in this run")

    def _on_error(self, exc):
        self.status.setText(f"failed: {exc}")

    def _on_finished(self):
        self.run_button.setText(RUN_LABEL)
        self._cancelling = False
        self.worker = None
        self._run_ctx = None
        self.progress.setVisible(False)
        self._refresh()

    # ----------------------------------------------------------------- review
    def _order_changed(self, *_):
        if self.review is not None:
            self.review.order = self.queue_panel.order_key()
            self._show_table()
            self._show_current()

    def _class_changed(self, *_):
        if self.review is not None:
            self.review.current_class = self.queue_panel.class_key()
            self.review.refresh()

    def _go(self, step):
        if self.review is None:
            return
        pid = self.review.go(step)
        if pid is None:
            self.status.setText("nothing left to review")
        self.viewer.layers.selection.active = self.review.layer

    def _show_current(self):
        from .review_panels import current_text

        if self.review is not None:
            cell = self.review.current()
            self.current_label.setText(current_text(cell))
            self.table.show_current(None if cell is None else cell["id"])

    def _show_table(self):
        r = self.review
        if r is not None:
            self.table.cells.set_cells(r.state.df, r.order_ids())

    def _go_to_row(self, row: int):
        """A row of the detection table clicked: go to that cell."""
        pid = self.table.cells.id_at(row)
        if pid is not None and self.review is not None:
            self.review.go_to(pid)
            self.viewer.layers.selection.active = self.review.layer

    def go_to_hotspot(self):
        """Centre the view on the hotspot (the 2.37 mm² field with the most mitotic figures)."""
        if self.review is None or not self.review.go_to_hotspot():
            self.status.setText("no hotspot yet: it needs mitotic figures in analysed tissue")

    def drawn_region(self):
        """The last drawn rectangle or polygon (level-0), or None."""
        from .regions import last_region

        try:
            return last_region(self.viewer, self.review.slide_layer)
        except ValueError:
            return None

    def counts(self):
        """The counts shown: ``(rows, hotspot, tissue_mm2, region_rows)`` (see core.counting.review_counts);
        ``region_rows`` = ``(region, rows)`` of the cells inside the last drawn shape, or None."""
        from ...core.counting import region_contains, review_counts

        r = self.review
        df = r.state.df
        tissue = r.tissue
        xy = df[["x", "y"]].to_numpy(float)
        mask, ds = (tissue.mask, tissue.downsample) if tissue is not None else (None, 1.0)
        rows, hotspot, area = review_counts(xy, df["class"], mask, ds, r.mpp, r.regions or [None])
        r.hotspot = hotspot
        region_rows = None
        region = self.drawn_region()
        if region is not None:
            inside = region_contains(region, xy)
            region_rows = (region, review_counts(xy[inside], df["class"][inside], mask, ds, r.mpp, [region])[0])
        return rows, hotspot, area, region_rows

    def _update_counts(self, *_):
        r = self.review
        if r is None:
            return
        self._show_save_state(r)
        done, total = r.state.progress()
        self.review_label.setText(f"{done:,} of {total:,} detections reviewed")
        rows, hotspot, area, region = self.counts()
        lines = []
        for row in rows:
            line = f"<b>{COUNT_NAMES.get(row['class'], row['class'])}</b>: {row['count']:,}"
            if np.isfinite(row["per_mm2"]):
                line += f" · {row['per_mm2']:.2f}/mm² · {row['per_2.37mm2']:.1f} per 2.37 mm²"
            if "hotspot_count" in row:
                line += f" · hotspot {row['hotspot_count']:,}"
            lines.append(line)
        if area is not None:
            lines.append(f"analysed tissue: {area:.2f} mm²")
        if hotspot is not None:
            lines.append(f"hotspot (2.37 mm²{', clipped to the tissue' if hotspot.clipped else ''}): "
                         f"{hotspot.count} mitotic figures at x={hotspot.x:,.0f}, y={hotspot.y:,.0f} px")
        if region is not None:
            shape, rr = region
            mf = rr[0]
            from ...core.counting import is_polygon, region_bounds

            _x, _y, w, h = region_bounds(shape)
            what = "polygon" if is_polygon(shape) else "rectangle"
            lines.append(f"drawn {what} ({w:,.0f} x {h:,.0f} px): {mf['count']} mitotic figures"
                         + (f" = {mf['per_2.37mm2']:.1f} per 2.37 mm²" if np.isfinite(mf["per_2.37mm2"]) else ""))
        self.counts_label.setText("<br>".join(lines))
        self.hotspot_button.setEnabled(hotspot is not None and hotspot.count > 0)
        self._show_table()
        self._show_current()
        new = show.hotspot_name(r.slide_layer) not in self.viewer.layers
        if show.show_hotspot(self.viewer, r.slide_layer, hotspot) is not None and new:
            show.keep_on_top(self.viewer, r.layer_name, select=False)

    # ------------------------------------------------------------------ files
    def _show_save_state(self, review):
        """The autosave path, or in red why it failed (and a retry in a few seconds); in orange when
        another viewer has the same review open (both autosave over the other)."""
        if review.save_error is None:
            if review.lock_holder:
                self.file_label.setStyleSheet("color: #e09030")
                self.file_label.setText(f"{breakable(str(review.path))} ({lock_warning(review.lock_holder)})")
            else:
                self.file_label.setStyleSheet("")
                self.file_label.setText(breakable(str(review.path)))
            return
        self.file_label.setStyleSheet("color: #e05050")
        self.file_label.setText(f"NOT SAVED ({review.save_error}); retrying every {SAVE_RETRY_S} s. Edits are in "
                                f"memory only: fix the problem or use 'Save review in…' ({breakable(str(review.path))})")
        if not self._save_retry.isActive():
            self._save_retry.start(SAVE_RETRY_S * 1000)

    def _on_saved(self, review):
        """A background save finished: show where it went (or why it failed) if it is the slide shown."""
        from qtpy.compat import isalive

        if isalive(self) and review is self.review:
            self._show_save_state(review)

    def _retry_save(self):
        for r in self._reviews.values():
            if r.save_error is not None:
                r.request_save()  # in the background too; _on_saved shows the outcome
    def export(self, folder) -> dict:
        """Write ``counts.csv``, ``detections.csv``, ``detections.geojson`` (and ``nuclei_types.csv``
        when nuclei were typed) into ``folder``."""
        folder = Path(folder)
        from ...pipeline.export import write_review_files

        r = self.review
        rows, hotspot, area, _ = self.counts()
        paths = write_review_files(folder, r.state.detections(), rows, hotspot, area, r.mpp, Path(r.slide.path).name)
        if r.nuclei_types is not None and len(r.nuclei_types):
            from ...io.detections import atomic_write_text, safe_csv_text

            paths["nuclei_types"] = atomic_write_text(folder / "nuclei_types.csv",  # formulas escaped, like every CSV
                                                      safe_csv_text(r.nuclei_types, float_format="%.6g"))
        self.status.setText(f"exported {len(r.state.df):,} detections and counts to {folder}")
        return paths

    def export_training(self, folder):
        """Write a retraining dataset (crops + cells.csv) of the reviewed cells into ``folder``, in a
        thread worker (the crops are read from the slide); returns the worker (started)."""
        from napari.qt.threading import create_worker

        from ...pipeline.export import training_export_task

        r = self.review
        task = training_export_task(r.slide, r.state.df.copy(), r.state.rejected.copy(), folder, mpp=r.mpp)

        def gen():
            return (yield from task)

        worker = create_worker(gen, _start_thread=False)
        worker.yielded.connect(lambda p: self.status.setText(p.message))
        worker.returned.connect(lambda path: self.status.setText(f"retraining dataset written: {path}"))
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_export_finished)
        self.export_worker = worker
        self._refresh()
        self.status.setText(f"writing the retraining dataset to {folder}...")
        worker.start()
        return worker

    def _on_export_finished(self):
        self.export_worker = None
        self._refresh()

    def import_detections(self, path) -> int:
        """Import a detections file (CSV / GeoJSON) into the current review; a file that names another
        slide is imported only when the user confirms it (:meth:`_confirm`)."""
        from ...io.detections import read_detections
        from .annotations import OtherSlideError

        df = read_detections(path)
        name = Path(path).name
        try:
            n = self.review.import_detections(df, name)
        except OtherSlideError as exc:
            if not self._confirm(f"{exc.args[0].replace('. Nothing was imported', '')}.\n\nImport it anyway?"):
                self.status.setText(str(exc))
                return 0
            n = self.review.import_detections(df, name, other_slide_ok=True)
        skipped = len(df) - n
        neg = self.review.last_import_negatives if n else 0
        self.status.setText(f"imported {n:,} cells from {name}"
                            + (f", {neg:,} of them labelled as not mitoses (kept as rejected cells)" if neg else "")
                            + (f" ({skipped:,} already in the review)" if skipped else ""))
        self._keep_detections_on_top()
        return n

    def _confirm(self, question: str) -> bool:
        """Ask the user a yes/no question (default: no)."""
        from qtpy.QtWidgets import QMessageBox

        answer = QMessageBox.question(self, "Import detections", question,
                                      QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
                                      QMessageBox.StandardButton.No)
        return answer == QMessageBox.StandardButton.Yes

    def _export_dialog(self):
        folder = QFileDialog.getExistingDirectory(self, "Export counts and detections to")
        if folder:
            self._guard(self.export, folder)

    def _training_dialog(self):
        folder = QFileDialog.getExistingDirectory(self, "Write the retraining dataset to")
        if folder:
            self._guard(self.export_training, folder)

    def _import_dialog(self):
        path, _ = QFileDialog.getOpenFileName(self, "Import detections", "", "Detections (*.csv *.geojson *.json)")
        if path:
            self._guard(self.import_detections, path)

    def _folder_dialog(self):
        folder = QFileDialog.getExistingDirectory(self, "Save the review in")
        if folder:
            self.file_label.setText(breakable(str(self._guard(self.review.move_file, folder) or self.review.path)))

    def _guard(self, func, *args):
        try:
            return func(*args)
        except (OSError, ValueError) as exc:
            self.status.setText(f"failed: {exc}")
            return None
