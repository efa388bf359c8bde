"""The "Mitosis review" dock widget (thin: parameters, a worker, layers).

Four parts, top to bottom:

- **Slide**: name, size, pixel size (asked for, with 0.25 um/px offered, when
  the file does not say), pyramid, tissue.
- **Analyse**: what (current view, last drawn rectangle, all tissue), which
  steps, on which device; Run becomes Cancel while it runs. Results stream
  into layers as tiles finish (detections as a Points layer, nuclei as
  Labels with a translate, the heatmap as a translucent Image).
- **Review**: the review queue (next / previous unreviewed detection, by
  score or uncertain first), the class for new cells, the keys.
- **Counts** (live, as the pathologist edits) and **Files**: where the
  review autosaves, export (counts, detections CSV, QuPath GeoJSON, a
  retraining dataset) and import (CSV / GeoJSON, e.g. from QuPath).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from ...pipeline import Progress

if TYPE_CHECKING:  # pragma: no cover
    import napari

REGION_VIEW, REGION_RECTANGLE, REGION_TISSUE = "current view", "last drawn rectangle", "all tissue"
RUN_LABEL = "Run"
ORDER_LABELS = {"score": "most likely first", "uncertain": "uncertain first"}
DEFAULT_MPP = 0.25


def slide_layers(viewer) -> list:
    """Image layers that hold a slide opened by napari-mitosis."""
    return [ly for ly in viewer.layers if ly._type_string == "image" and "slide" in ly.metadata]


def found_devices() -> str:
    """What compute devices are here, in words."""
    import torch

    if torch.cuda.is_available():
        return f"CUDA: {torch.cuda.get_device_name(0)}"
    return "CPU only (no CUDA GPU found)"


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
        self.worker = None
        self.tissue = None
        self.review = None  # DetectionReview of the current slide layer
        self._reviews: dict = {}
        self._cancelling = False

        # -- slide
        self.slide_label = QLabel()
        self.slide_label.setWordWrap(True)
        self.size_label = QLabel()
        self.mpp_label = QLabel()
        self.mpp_label.setWordWrap(True)
        self.mpp_box = QDoubleSpinBox()
        self.mpp_box.setDecimals(4)
        self.mpp_box.setRange(0.05, 20.0)
        self.mpp_box.setSingleStep(0.01)
        self.mpp_box.setValue(DEFAULT_MPP)
        self.mpp_box.setSuffix(" um/px")
        self.mpp_box.setToolTip("The file does not say its pixel size: 0.25 um/px is a 40x scan, 0.5 a 20x scan")
        self.mpp_apply = QPushButton("Use")
        self.mpp_apply.clicked.connect(self._apply_mpp)
        mpp_row = QHBoxLayout()
        mpp_row.addWidget(self.mpp_box)
        mpp_row.addWidget(self.mpp_apply)
        self.mpp_edit = QWidget()
        self.mpp_edit.setLayout(mpp_row)
        self.levels_label = QLabel()
        self.tissue_label = QLabel("not detected yet")

        # -- analyse
        self.region = QComboBox()
        self.region.addItems([REGION_VIEW, REGION_RECTANGLE, REGION_TISSUE])
        from ...pipeline.review import STEP_NAMES, available_steps

        self.step_boxes = {}
        avail = available_steps()
        for key, label in STEP_NAMES.items():
            box = QCheckBox(label)
            box.setChecked(key == "cells")
            if avail.get(key):
                box.setEnabled(False)
                box.setToolTip(avail[key])
            self.step_boxes[key] = box
        self.nuclei_method = QComboBox()
        self.nuclei_method.addItems(["unet", "log"])
        self.nuclei_method.setToolTip("unet: the shipped U-Net; log: the fast Laplacian-of-Gaussian baseline")
        self.stain = QComboBox()
        self.stain.addItems(["none", "macenko", "reinhard", "neural"])
        self.stain.setToolTip("Stain transfer before cell detection (to the training data's look)")
        self.device = QComboBox()
        self.device.addItems(["auto", "cpu", "cuda"])
        self.device_label = QLabel(f"found: {found_devices()}")
        self.run_button = QPushButton(RUN_LABEL)
        self.run_button.setToolTip("Run the chosen steps on the chosen region (Run / Cancel)")
        self.run_button.clicked.connect(self._run)
        self.progress = QProgressBar()
        self.progress.setVisible(False)
        self.status = QLabel()
        self.status.setWordWrap(True)

        # -- review
        self.order = QComboBox()
        self.order.addItems(list(ORDER_LABELS.values()))
        self.order.currentIndexChanged.connect(self._order_changed)
        self.prev_button = QPushButton("◀ Previous")
        self.next_button = QPushButton("Next ▶")
        self.prev_button.clicked.connect(lambda: self._go(-1))
        self.next_button.clicked.connect(lambda: self._go(1))
        self.new_class = QComboBox()
        from ...core.detections import CLASSES

        self.new_class.addItems(list(CLASSES))
        self.new_class.currentTextChanged.connect(self._class_changed)
        self.review_label = QLabel("-")
        self.types_label = QLabel("-")
        self.types_label.setWordWrap(True)
        self.types_label.setToolTip("Nucleus types of the last typed region (unsupervised: name them by looking)")
        from .annotations import KEY_HELP

        keys = QLabel(KEY_HELP)
        keys.setWordWrap(True)
        keys.setStyleSheet("color: gray")

        # -- counts, files
        self.counts_label = QLabel("-")
        self.counts_label.setWordWrap(True)
        self.file_label = QLabel("-")
        self.file_label.setWordWrap(True)
        self.export_button = QPushButton("Export counts + detections…")
        self.export_button.clicked.connect(self._export_dialog)
        self.training_button = QPushButton("Export for retraining…")
        self.training_button.clicked.connect(self._training_dialog)
        self.import_button = QPushButton("Import detections…")
        self.import_button.clicked.connect(self._import_dialog)
        self.folder_button = QPushButton("Save review in…")
        self.folder_button.clicked.connect(self._folder_dialog)

        # the parts live in a scroll area: a short screen scrolls instead of squashing the buttons
        inner = QWidget()
        layout = QVBoxLayout(inner)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setWidget(inner)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(scroll)
        box = QGroupBox("Slide")
        form = QFormLayout(box)
        form.addRow("Slide:", self.slide_label)
        form.addRow("Size:", self.size_label)
        form.addRow("Pixel size:", self.mpp_label)
        form.addRow("", self.mpp_edit)
        form.addRow("Pyramid:", self.levels_label)
        form.addRow("Tissue:", self.tissue_label)
        layout.addWidget(box)
        box = QGroupBox("Analyse")
        form = QFormLayout(box)
        form.addRow("Region:", self.region)
        for b in self.step_boxes.values():
            form.addRow(b)
        form.addRow("Nuclei by:", self.nuclei_method)
        form.addRow("Stain transfer:", self.stain)
        form.addRow("Device:", self.device)
        form.addRow("", self.device_label)
        form.addRow(self.run_button)
        form.addRow(self.progress)
        form.addRow(self.status)
        layout.addWidget(box)
        box = QGroupBox("Review")
        form = QFormLayout(box)
        form.addRow("Queue:", self.order)
        row = QHBoxLayout()
        row.addWidget(self.prev_button)
        row.addWidget(self.next_button)
        form.addRow(row)
        form.addRow("New cells:", self.new_class)
        form.addRow("Reviewed:", self.review_label)
        form.addRow(keys)
        layout.addWidget(box)
        box = QGroupBox("Counts")
        form = QFormLayout(box)
        form.addRow(self.counts_label)
        form.addRow("Nucleus types:", self.types_label)
        layout.addWidget(box)
        box = QGroupBox("Files")
        form = QFormLayout(box)
        form.addRow("Autosave:", self.file_label)
        form.addRow(self.folder_button)
        form.addRow(self.export_button)
        form.addRow(self.training_button)
        form.addRow(self.import_button)
        layout.addWidget(box)
        layout.addStretch(1)

        self.viewer.layers.events.inserted.connect(self._refresh)
        self.viewer.layers.events.removed.connect(self._refresh)
        self.viewer.layers.selection.events.active.connect(self._refresh)
        self._refresh()

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

    def _refresh(self, event=None):
        layer, slide = self.slide_layer, self.slide
        running = self.worker is not None
        self.run_button.setEnabled(running or (slide is not None and slide.mpp is not None))
        has_review = slide is not None
        for w in (self.prev_button, self.next_button, self.export_button, self.training_button, self.import_button,
                  self.folder_button):
            w.setEnabled(has_review and not running)
        self.mpp_edit.setVisible(slide is not None and slide.mpp_source in ("unknown", "user"))
        if slide is None:
            self.slide_label.setText("open a slide (File > Open) or File > Open Sample > Synthetic H&E slide")
            for label in (self.size_label, self.mpp_label, self.levels_label):
                label.setText("-")
            return
        w, h = slide.dimensions
        self.slide_label.setText(layer.name)
        mm = f" ({w * slide.mpp / 1000:.1f} x {h * slide.mpp / 1000:.1f} mm)" if slide.mpp else ""
        self.size_label.setText(f"{w:,} x {h:,} px{mm}")
        if slide.mpp:
            obj = f", {slide.objective_power:g}x" if slide.objective_power else ""
            self.mpp_label.setText(f"{slide.mpp:.4g} um/px ({slide.mpp_source}{obj})")
        else:
            self.mpp_label.setText("unknown: the file does not say. Enter it below (0.25 um/px = 40x, 0.5 = 20x) to run the models")
        self.levels_label.setText(f"{slide.level_count} levels ({slide.file_levels} in the file)")
        if self.review is None or self.review.slide_layer.unique_id != layer.unique_id:
            self._open_review(layer)

    def _open_review(self, layer):
        from .annotations import DetectionReview

        key = layer.unique_id
        if key not in self._reviews:
            review = DetectionReview(self.viewer, layer, on_change=self._update_counts)
            self._reviews[key] = review
            if len(review.state.df) or review.notes:
                review.ensure_layer()
            if review.notes:
                self.status.setText("; ".join(review.notes))
        self.review = self._reviews[key]
        self.review.order = self._order_key()
        self.file_label.setText(str(self.review.path))
        self._update_counts()

    def _apply_mpp(self):
        """Use the pixel size typed in for a slide whose file does not say it."""
        layer, slide = self.slide_layer, self.slide
        if slide is None:
            return
        mpp = float(self.mpp_box.value())
        slide.mpp, slide.mpp_source = mpp, "user"
        layer.scale = (mpp, mpp)
        layer.units = ("micrometer", "micrometer")
        layer.metadata["mpp"] = mpp
        review = self._reviews.get(layer.unique_id)
        if review is not None:
            review.mpp = mpp
            if review.layer is not None:
                review.layer.scale = (mpp, mpp)
                review.layer.units = layer.units
        self.viewer.reset_view()
        self._refresh()

    # ---------------------------------------------------------------- running
    def _steps(self) -> list[str]:
        return [k for k, b in self.step_boxes.items() if b.isChecked() and b.isEnabled()]

    def _region(self, layer, slide):
        from .regions import last_rectangle, view_region

        kind = self.region.currentText()
        if kind == REGION_VIEW:
            return view_region(layer, slide), False
        if kind == REGION_RECTANGLE:
            return last_rectangle(self.viewer, layer), False
        return None, True

    def _run(self):
        if self.worker is not None:  # Run is Cancel while running
            return self._cancel()
        layer, slide = self.slide_layer, self.slide
        if slide is None:
            return
        try:
            roi, all_tissue = self._region(layer, slide)
        except ValueError as exc:
            self.status.setText(str(exc))
            return
        from ...pipeline.review import review_task

        steps = self._steps()
        stain = self.stain.currentText()
        h, w = slide.shape
        self.review.clear_region((0, 0, w, h) if all_tissue else roi)  # unreviewed model calls there are redone
        self.review.ensure_layer()
        self.review.layer.visible = True
        task = review_task(slide, roi, all_tissue, self.tissue, steps, self.device.currentText(),
                           None if stain == "none" else stain, self.nuclei_method.currentText())
        self._start(task, layer, f"running {', '.join(steps) or 'nothing'} on {self.region.currentText()}...")

    def _start(self, task, layer, message):
        from napari.qt.threading import create_worker

        def gen():
            return (yield from task)

        worker = create_worker(gen, _start_thread=False)
        worker.yielded.connect(lambda p: self._on_progress(p, layer))
        worker.returned.connect(lambda result: self._on_done(result, layer))
        worker.errored.connect(self._on_error)
        worker.aborted.connect(lambda: self.status.setText("cancelled; the detections found so far are kept"))
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self.run_button.setText("Cancel")
        self._refresh()
        self.progress.setVisible(True)
        self.progress.setValue(0)
        self.status.setText(message)
        worker.start()

    def _cancel(self):
        self._cancelling = True
        self.status.setText("cancelling...")
        self.worker.quit()

    def _on_progress(self, p: Progress, layer):
        if self._cancelling:  # progress queued before the cancel arrives late: ignore it
            return
        self.progress.setMaximum(max(p.total, 1))
        self.progress.setValue(p.done)
        self.status.setText(p.message)
        if p.partial is not None:
            kind, value = p.partial
            getattr(self, f"_show_{kind}", lambda *a: None)(value, layer)

    def _show_tissue(self, tissue, layer):
        self.tissue = tissue
        mpp = layer.scale[-1]
        ds = tissue.downsample
        name = f"tissue ({layer.name})"
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)
        labels = self.viewer.add_labels(
            tissue.mask.astype("uint8"),
            name=name,
            scale=(mpp * ds, mpp * ds),
            translate=((ds - 1) / 2 * mpp, (ds - 1) / 2 * mpp),
            opacity=0.8,
            units=layer.units,
        )
        labels.contour = 1  # outline only: the tissue stays readable underneath
        self._keep_detections_on_top()
        area = tissue.area_mm2
        self.tissue_label.setText(
            f"{area:.2f} mm² ({tissue.fraction:.0%} of the slide)" if area is not None else f"{tissue.fraction:.0%} of the slide"
        )
        self._update_counts()

    def _show_detections(self, df, layer):
        self.review.add_model_detections(df)

    def _show_nuclei(self, result, layer):
        from ...pipeline.nuclei import as_layer_data

        labels, table = result
        data, kwargs, _ = as_layer_data(labels, table, name=f"nuclei ({layer.name})")
        origin = table.attrs.get("origin", (0, 0))
        kwargs["name"] = f"nuclei ({layer.name}) at {int(origin[0])},{int(origin[1])}"
        if kwargs["name"] in self.viewer.layers:
            self.viewer.layers.remove(kwargs["name"])
        ly = self.viewer.add_labels(data, units=layer.units, **kwargs)
        ly.contour = 1
        self._keep_detections_on_top()

    def _show_heatmap(self, result, layer):
        from ...pipeline.heatmap import as_layer_data

        data, kwargs, _ = as_layer_data(result)
        kwargs["name"] = f"mitosis heatmap ({layer.name})"
        if kwargs["name"] in self.viewer.layers:
            self.viewer.layers.remove(kwargs["name"])
        self.viewer.add_image(data, units=layer.units, **kwargs)
        self._keep_detections_on_top()

    def _show_types(self, result, layer):
        from napari.utils.colormaps import DirectLabelColormap

        from ...pipeline.nuclei import as_layer_data
        from ...pipeline.nucleus_types import labels_colormap, legend_text

        labels, table = result
        name = f"nucleus types ({layer.name})"
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)
        data, kwargs, _ = as_layer_data(labels, table, name=name)
        ly = self.viewer.add_labels(data, units=layer.units, **kwargs)
        ly.colormap = DirectLabelColormap(color_dict=labels_colormap(table))
        self.review.set_nuclei_types(table)
        self.types_label.setText(legend_text(table))

    def _keep_detections_on_top(self):
        r = self.review
        if r is not None and r.layer_name in self.viewer.layers:
            layer = self.viewer.layers[r.layer_name]
            names = [ly.name for ly in self.viewer.layers]
            self.viewer.layers.move(names.index(r.layer_name), len(names))
            self.viewer.layers.selection.active = layer

    def _on_done(self, result, layer):
        if result.get("tissue") is not None and self.tissue is None:
            self._show_tissue(result["tissue"], layer)
        self.review.add_region(result.get("region"))
        det = result.get("cells")
        msg = []
        if det is not None:
            msg.append(f"{len(det):,} detections")
            if det.attrs.get("partial"):
                msg.append(f"PARTIAL: {det.attrs['partial']}")
        if "nuclei" in result:
            msg.append(f"{len(result['nuclei'][1]):,} nuclei")
        self.status.setText("done: " + ", ".join(msg) if msg else "done")
        self._keep_detections_on_top()
        self._update_counts()

    def _on_error(self, exc):
        self.status.setText(f"failed: {exc}")

    def _on_finished(self):
        self.run_button.setText(RUN_LABEL)
        self._cancelling = False
        self.worker = None
        self.progress.setVisible(False)
        self._refresh()

    # ----------------------------------------------------------------- review
    def _order_key(self) -> str:
        return {v: k for k, v in ORDER_LABELS.items()}[self.order.currentText()]

    def _order_changed(self, *_):
        if self.review is not None:
            self.review.order = self._order_key()

    def _class_changed(self, cls):
        if self.review is not None:
            self.review.current_class = cls
            self.review.refresh()

    def _go(self, step):
        if self.review is None:
            return
        pid = self.review.go(step)
        if pid is None:
            self.status.setText("nothing left to review")
        self.viewer.layers.selection.active = self.review.layer

    def counts(self):
        """The counts shown: ``(rows, hotspot, tissue_mm2, region_rows)`` (see core.counting.review_counts)."""
        from ...core.counting import review_counts

        r = self.review
        df = r.state.df
        tissue = self.tissue
        regions = r.regions or [None]
        mask, ds = (tissue.mask, tissue.downsample) if tissue is not None else (None, 1.0)
        rows, hotspot, area = review_counts(df[["x", "y"]].to_numpy(), df["class"], mask, ds, r.mpp, regions)
        region_rows = None
        try:
            from .regions import last_rectangle

            rect = last_rectangle(self.viewer, r.slide_layer)
            region_rows = review_counts(df[["x", "y"]].to_numpy(), df["class"], mask, ds, r.mpp, [rect])[0]
            region_rows = (rect, region_rows)
        except ValueError:
            pass
        return rows, hotspot, area, region_rows

    def _update_counts(self):
        r = self.review
        if r is None:
            return
        done, total = r.state.progress()
        self.review_label.setText(f"{done:,} of {total:,} detections reviewed")
        rows, hotspot, area, region = self.counts()
        names = {"mitotic_figure": "Mitotic figures", "granulocyte": "Granulocytes"}
        lines = []
        for row in rows:
            line = f"<b>{names[row['class']]}</b>: {row['count']:,}"
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
            (_x, _y, w, h), rr = region
            mf = rr[0]
            lines.append(f"drawn region ({w:,} x {h:,} px): {mf['count']} mitotic figures"
                         + (f" = {mf['per_2.37mm2']:.1f} per 2.37 mm²" if np.isfinite(mf["per_2.37mm2"]) else ""))
        self.counts_label.setText("<br>".join(lines))
        self._show_hotspot(hotspot)

    def _show_hotspot(self, hotspot):
        r = self.review
        name = f"hotspot ({r.slide_layer.name})"
        if hotspot is None or hotspot.count == 0:
            if name in self.viewer.layers:
                self.viewer.layers[name].data = []
            return
        rect = np.array([[hotspot.y, hotspot.x], [hotspot.y, hotspot.x + hotspot.width],
                         [hotspot.y + hotspot.height, hotspot.x + hotspot.width], [hotspot.y + hotspot.height, hotspot.x]])
        if name in self.viewer.layers:
            self.viewer.layers[name].data = [rect]
            return
        active = self.viewer.layers.selection.active
        self.viewer.add_shapes(
            [rect], shape_type="rectangle", name=name, edge_color="yellow", face_color="transparent",
            edge_width=max(hotspot.width / 300, 2), scale=tuple(r.slide_layer.scale[-2:]), units=r.slide_layer.units,
            metadata={"napari_mitosis": "hotspot"},
        )
        self._keep_detections_on_top()
        if active is not None and active in self.viewer.layers:
            self.viewer.layers.selection.active = active

    # ------------------------------------------------------------------ files
    def export(self, folder) -> dict:
        """Write ``counts.csv``, ``detections.csv``, ``detections.geojson`` (and ``nuclei_types.csv``
        when nuclei were typed) into ``folder``."""
        folder = Path(folder)
        from ...pipeline.export import write_review_files

        r = self.review
        rows, hotspot, area, _ = self.counts()
        paths = write_review_files(folder, r.state.detections(), rows, hotspot, area, r.mpp, Path(r.slide.path).name)
        if r.nuclei_types is not None and len(r.nuclei_types):
            from ...io.detections import atomic_write_text

            paths["nuclei_types"] = atomic_write_text(folder / "nuclei_types.csv",
                                                      r.nuclei_types.to_csv(index=False, float_format="%.6g"))
        self.status.setText(f"exported {len(r.state.df):,} detections and counts to {folder}")
        return paths

    def export_training(self, folder):
        """Write a retraining dataset (crops + cells.csv) of the reviewed cells into ``folder``."""
        from ...pipeline.export import training_export_task
        from ...pipeline.progress import run

        r = self.review
        path = run(training_export_task(r.slide, r.state.df, r.state.rejected, folder, mpp=r.mpp))
        self.status.setText(f"retraining dataset written: {path}")
        return path

    def import_detections(self, path) -> int:
        from ...io.detections import read_detections

        df = read_detections(path)
        n = self.review.import_detections(df)
        self.status.setText(f"imported {n:,} detections from {Path(path).name}")
        self._keep_detections_on_top()
        return n

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
            self.file_label.setText(str(self._guard(self.review.move_file, folder) or self.review.path))

    def _guard(self, func, *args):
        try:
            return func(*args)
        except (OSError, ValueError) as exc:
            self.status.setText(f"failed: {exc}")
            return None
