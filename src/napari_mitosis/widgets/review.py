"""The "Mitosis review" dock widget (thin: parameters, a worker, layers).

It shows what slide is open (size, pixel size, pyramid) and runs the steps
that exist so far in a napari thread worker, with a progress bar and a Run
button that turns into Cancel.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtWidgets import QFormLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

from ..pipeline import Progress, tissue_task

if TYPE_CHECKING:  # pragma: no cover
    import napari


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

        self.slide_label = QLabel()
        self.slide_label.setWordWrap(True)
        self.size_label = QLabel()
        self.mpp_label = QLabel()
        self.levels_label = QLabel()
        self.tissue_label = QLabel("not detected yet")
        self.progress = QProgressBar()
        self.progress.setVisible(False)
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.run_button = QPushButton("Detect tissue")
        self.run_button.setToolTip("Compute the tissue mask of the slide (Run / Cancel)")
        self.run_button.clicked.connect(self._run_or_cancel)

        form = QFormLayout()
        form.addRow("Slide:", self.slide_label)
        form.addRow("Size:", self.size_label)
        form.addRow("Pixel size:", self.mpp_label)
        form.addRow("Pyramid:", self.levels_label)
        form.addRow("Tissue:", self.tissue_label)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.run_button)
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
        self.run_button.setEnabled(slide is not None or running)
        if slide is None:
            self.slide_label.setText("open a slide (File > Open) or File > Open Sample > Synthetic H&E slide")
            for label in (self.size_label, self.mpp_label, self.levels_label):
                label.setText("-")
            return
        w, h = slide.dimensions
        self.slide_label.setText(self.slide_layer.name)
        self.size_label.setText(f"{w:,} x {h:,} px" + (f" ({w * slide.mpp / 1000:.1f} x {h * slide.mpp / 1000:.1f} mm)" if slide.mpp else ""))
        if slide.mpp:
            obj = f", {slide.objective_power:g}x" if slide.objective_power else ""
            self.mpp_label.setText(f"{slide.mpp:.4g} um/px ({slide.mpp_source}{obj})")
        else:
            self.mpp_label.setText("unknown: distances are in pixels (open with --mpp to set it)")
        self.levels_label.setText(f"{slide.level_count} levels ({slide.file_levels} in the file)")

    # ---------------------------------------------------------------- running
    def _run_or_cancel(self):
        if self.worker is not None:
            self._cancelling = True
            self.status.setText("cancelling...")
            self.worker.quit()
            return
        slide, layer = self.slide, self.slide_layer
        if slide is None:
            return
        from napari.qt.threading import create_worker

        worker = create_worker(tissue_task, slide, _start_thread=False)
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(lambda result: self._on_tissue(result, layer))
        worker.errored.connect(self._on_error)
        worker.aborted.connect(lambda: self.status.setText("cancelled"))
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self.run_button.setText("Cancel")
        self.progress.setVisible(True)
        self.progress.setValue(0)
        self.status.setText("detecting tissue...")
        worker.start()

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

    def _on_error(self, exc):
        self.status.setText(f"failed: {exc}")

    def _on_finished(self):
        self._cancelling = False
        self.worker = None
        self.run_button.setText("Detect tissue")
        self.progress.setVisible(False)
        self._refresh()
