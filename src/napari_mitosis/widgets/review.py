"""The "Mitosis review" dock widget (thin: parameters, a worker, layers).

It shows what slide is open (size, pixel size, pyramid) and runs the steps
that exist so far in a napari thread worker, with a progress bar; the button
of the running step turns into Cancel.

Steps: tissue detection, and nucleus segmentation of the current view, the
last rectangle drawn on the slide, or all tissue.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtWidgets import QComboBox, QFormLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

from ..pipeline import Progress, tissue_task

if TYPE_CHECKING:  # pragma: no cover
    import napari

REGION_VIEW, REGION_RECTANGLE, REGION_TISSUE = "current view", "last drawn rectangle", "all tissue"
TISSUE_LABEL, NUCLEI_LABEL = "Detect tissue", "Segment nuclei"


def slide_layers(viewer) -> list:
    """Image layers that hold a slide opened by napari-mitosis."""
    return [ly for ly in viewer.layers if ly._type_string == "image" and "slide" in ly.metadata]


class ReviewWidget(QWidget):
    """Dock widget: slide information and the analysis steps."""

    def __init__(self, napari_viewer: napari.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.worker = None
        self.tissue = None
        self._cancelling = False
        self._running_button = None

        self.slide_label = QLabel()
        self.slide_label.setWordWrap(True)
        self.size_label = QLabel()
        self.mpp_label = QLabel()
        self.levels_label = QLabel()
        self.tissue_label = QLabel("not detected yet")
        self.nuclei_label = QLabel("-")
        self.progress = QProgressBar()
        self.progress.setVisible(False)
        self.status = QLabel()
        self.status.setWordWrap(True)

        self.run_button = QPushButton(TISSUE_LABEL)
        self.run_button.setToolTip("Compute the tissue mask of the slide (Run / Cancel)")
        self.run_button.clicked.connect(self._run_tissue)
        self.region = QComboBox()
        self.region.addItems([REGION_VIEW, REGION_RECTANGLE, REGION_TISSUE])
        self.nuclei_method = QComboBox()
        self.nuclei_method.addItems(["unet", "log"])
        self.nuclei_method.setToolTip("unet: the shipped U-Net; log: the fast Laplacian-of-Gaussian baseline")
        self.device = QComboBox()
        self.device.addItems(["auto", "cpu", "cuda"])
        self.nuclei_button = QPushButton(NUCLEI_LABEL)
        self.nuclei_button.setToolTip("Segment the nuclei of the chosen region (Run / Cancel)")
        self.nuclei_button.clicked.connect(self._run_nuclei)

        form = QFormLayout()
        form.addRow("Slide:", self.slide_label)
        form.addRow("Size:", self.size_label)
        form.addRow("Pixel size:", self.mpp_label)
        form.addRow("Pyramid:", self.levels_label)
        form.addRow("Tissue:", self.tissue_label)
        form.addRow(self.run_button)
        form.addRow("Region:", self.region)
        form.addRow("Nuclei by:", self.nuclei_method)
        form.addRow("Device:", self.device)
        form.addRow(self.nuclei_button)
        form.addRow("Nuclei:", self.nuclei_label)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addStretch(1)

        self.viewer.layers.events.inserted.connect(self._refresh)
        self.viewer.layers.events.removed.connect(self._refresh)
        self.viewer.layers.selection.events.active.connect(self._refresh)
        self._refresh()

    # ------------------------------------------------------------------ state
    @property
    def slide_layer(self):
        layers = slide_layers(self.viewer)
        active = self.viewer.layers.selection.active
        if active in layers:
            return active
        return layers[0] if layers else None

    @property
    def slide(self):
        layer = self.slide_layer
        return None if layer is None else layer.metadata["slide"]

    def _refresh(self, event=None):
        slide = self.slide
        running = self.worker is not None
        for button in (self.run_button, self.nuclei_button):
            button.setEnabled((slide is not None and not running) or button is self._running_button)
        if slide is None:
            self.slide_label.setText("open a slide (File > Open) or File > Open Sample > Synthetic H&E slide")
            for label in (self.size_label, self.mpp_label, self.levels_label):
                label.setText("-")
            return
        w, h = slide.dimensions
        self.slide_label.setText(self.slide_layer.name)
        mm = f" ({w * slide.mpp / 1000:.1f} x {h * slide.mpp / 1000:.1f} mm)" if slide.mpp else ""
        self.size_label.setText(f"{w:,} x {h:,} px{mm}")
        if slide.mpp:
            obj = f", {slide.objective_power:g}x" if slide.objective_power else ""
            self.mpp_label.setText(f"{slide.mpp:.4g} um/px ({slide.mpp_source}{obj})")
        else:
            self.mpp_label.setText("unknown: distances are in pixels (open with --mpp to set it)")
        self.levels_label.setText(f"{slide.level_count} levels ({slide.file_levels} in the file)")

    # ---------------------------------------------------------------- running
    def _start(self, button, function, *args, on_return, message):
        """Run a task generator in a thread worker; ``button`` becomes Cancel."""
        from napari.qt.threading import create_worker

        worker = create_worker(function, *args, _start_thread=False)
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(on_return)
        worker.errored.connect(self._on_error)
        worker.aborted.connect(lambda: self.status.setText("cancelled"))
        worker.finished.connect(self._on_finished)
        self.worker, self._running_button = worker, button
        self._labels = {self.run_button: TISSUE_LABEL, self.nuclei_button: NUCLEI_LABEL}
        button.setText("Cancel")
        self._refresh()
        self.progress.setVisible(True)
        self.progress.setValue(0)
        self.status.setText(message)
        worker.start()

    def _cancel(self):
        self._cancelling = True
        self.status.setText("cancelling...")
        self.worker.quit()

    def _run_tissue(self):
        if self.worker is not None:  # this button is Cancel while its step runs
            return self._cancel()
        slide, layer = self.slide, self.slide_layer
        if slide is None:
            return
        self._start(self.run_button, tissue_task, slide, on_return=lambda t: self._on_tissue(t, layer), message="detecting tissue...")

    def _run_nuclei(self):
        from .regions import last_rectangle, view_region

        if self.worker is not None:
            return self._cancel()
        slide, layer = self.slide, self.slide_layer
        if slide is None:
            return
        kind = self.region.currentText()
        try:
            roi = view_region(layer, slide) if kind == REGION_VIEW else last_rectangle(self.viewer, layer) if kind == REGION_RECTANGLE else None
        except ValueError as exc:
            self.status.setText(str(exc))
            return
        from ..pipeline.nuclei import segment_region_task

        self._start(
            self.nuclei_button,
            segment_region_task,
            slide,
            roi,
            kind == REGION_TISSUE,
            self.tissue,
            self.nuclei_method.currentText(),
            self.device.currentText(),
            on_return=lambda result: self._on_nuclei(result, layer),
            message=f"segmenting nuclei ({kind})...",
        )

    def _on_progress(self, p: Progress):
        if self._cancelling:  # progress queued before the cancel arrives late: ignore it
            return
        self.progress.setMaximum(max(p.total, 1))
        self.progress.setValue(p.done)
        self.status.setText(p.message)

    def _on_tissue(self, tissue, layer):
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
        area = tissue.area_mm2
        self.tissue_label.setText(
            f"{area:.2f} mm² ({tissue.fraction:.0%} of the slide)" if area is not None else f"{tissue.fraction:.0%} of the slide"
        )
        self.status.setText("tissue detected")

    def _on_nuclei(self, result, layer):
        from ..pipeline.nuclei import as_layer_data

        (labels, table), tissue = result
        if tissue is not None and self.tissue is None:
            self._on_tissue(tissue, layer)
        data, kwargs, _ = as_layer_data(labels, table, name=f"nuclei ({layer.name})")
        if kwargs["name"] in self.viewer.layers:
            self.viewer.layers.remove(kwargs["name"])
        self.viewer.add_labels(data, units=layer.units, **kwargs)
        self.nuclei_label.setText(f"{len(table):,} nuclei")
        self.status.setText(f"segmented {len(table):,} nuclei")

    def _on_error(self, exc):
        self.status.setText(f"failed: {exc}")

    def _on_finished(self):
        if self._running_button is not None:
            self._running_button.setText(self._labels[self._running_button])
        self._cancelling = False
        self.worker, self._running_button = None, None
        self.progress.setVisible(False)
        self._refresh()
