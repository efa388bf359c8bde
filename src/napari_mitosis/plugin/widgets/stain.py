"""The "Stain normalisation" dock widget (thin: parameters, a worker, a layer).

Pick a method and a reference (an image file, a rectangle drawn on the slide
in a Shapes layer, or, for the neural method, the shipped style); Apply adds
the normalised slide as a lazy multiscale layer: only what is on screen is
computed.
"""

from __future__ import annotations

from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ...pipeline import Progress
from ...pipeline.stain import fit_slide_task
from .regions import last_rectangle
from .review_layers import slide_layers

REF_FILE, REF_RECTANGLE, REF_SHIPPED = "image file", "rectangle on the slide", "shipped style (neural)"


class StainWidget(QWidget):
    """Dock widget: stain-normalise the selected slide into a new lazy layer."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.worker = None
        self.method = QComboBox()
        self.method.addItems(["macenko", "reinhard", "neural"])
        self.reference = QComboBox()
        self.reference.addItems([REF_FILE, REF_RECTANGLE, REF_SHIPPED])
        self.ref_path = QLineEdit()
        self.ref_path.setPlaceholderText("reference image (png, jpg, tif, svs ...)")
        browse = QPushButton("...")
        browse.clicked.connect(self._browse)
        row = QHBoxLayout()
        row.addWidget(self.ref_path)
        row.addWidget(browse)
        self.apply_button = QPushButton("Apply")
        self.apply_button.clicked.connect(self._apply)
        self.progress = QProgressBar()
        self.progress.setVisible(False)
        self.status = QLabel()
        self.status.setWordWrap(True)
        form = QFormLayout()
        form.addRow("Method:", self.method)
        form.addRow("Reference:", self.reference)
        form.addRow("File:", row)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.apply_button)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addStretch(1)

    def _browse(self):
        path, _ = QFileDialog.getOpenFileName(self, "Reference image")
        if path:
            self.ref_path.setText(path)

    def _apply(self):
        from napari.qt.threading import create_worker

        layers = slide_layers(self.viewer)
        active = self.viewer.layers.selection.active
        layer = active if active in layers else (layers[0] if layers else None)
        if layer is None:
            self.status.setText("open a slide first")
            return
        region = None
        if self.reference.currentText() == REF_RECTANGLE:
            try:
                region = last_rectangle(self.viewer, layer)
            except ValueError as exc:
                self.status.setText(str(exc))
                return
        kind = self.reference.currentText()
        if kind == REF_FILE and not self.ref_path.text():
            self.status.setText("choose a reference image file")
            return
        reference = {REF_FILE: self.ref_path.text(), REF_RECTANGLE: region, REF_SHIPPED: None}[kind]
        slide = layer.metadata["slide"]
        worker = create_worker(fit_slide_task, slide, self.method.currentText(), reference, _start_thread=False)
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(lambda result: self._on_done(result, layer))
        worker.errored.connect(lambda exc: self.status.setText(f"failed: {exc}"))
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self.apply_button.setEnabled(False)
        self.progress.setVisible(True)
        worker.start()

    def _on_progress(self, p: Progress):
        self.progress.setMaximum(p.total)
        self.progress.setValue(p.done)
        self.status.setText(p.message)

    def _on_done(self, result, layer):
        norm, levels = result
        name = f"{layer.name} ({norm.method})"
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)
        self.viewer.add_image(
            levels,
            name=name,
            rgb=True,
            multiscale=True,
            scale=layer.scale,
            translate=layer.translate,
            units=layer.units,
            contrast_limits=(0, 255),
            metadata={"stain_normalizer": norm.to_dict()},
        )
        self.status.setText(f"added {name}")

    def _on_finished(self):
        self.worker = None
        self.apply_button.setEnabled(True)
        self.progress.setVisible(False)
