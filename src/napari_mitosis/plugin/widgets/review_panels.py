"""The parts of the "Mitosis review" widget, each a group box that only builds its controls.

The :class:`~napari_mitosis.plugin.widgets.review.ReviewWidget` wires them to
the viewer; nothing here knows about slides or workers.
"""

from __future__ import annotations

from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

REGION_VIEW, REGION_RECTANGLE, REGION_TISSUE = "current view", "last drawn shape", "all tissue"
RUN_LABEL = "Run"
ORDER_LABELS = {"score": "most likely first", "uncertain": "uncertain first"}
DEFAULT_MPP = 0.25
#: What a pathologist reads for each class (the files keep the short names).
CLASS_LABELS = {"mitotic_figure": "Mitotic figure", "granulocyte": "Granulocyte", "other": "Other (look-alike)"}
#: ... and for each review status.
STATUS_LABELS = {"model": "not reviewed", "confirmed": "confirmed", "corrected": "corrected", "added": "added by hand"}


def current_text(cell: dict | None) -> str:
    """The current cell in words: ``Cell 3 / 120 · Mitotic figure · score 0.91 · not reviewed``."""
    if cell is None:
        return "none: press N (or Next) to go to the first cell to review"
    score = f"score {cell['score']:.2f}" if cell["score"] == cell["score"] else "no score"
    return (f"<b>Cell {cell['index']:,} / {cell['total']:,}</b> · {CLASS_LABELS.get(cell['class'], cell['class'])} · "
            f"{score} · {STATUS_LABELS.get(cell['status'], cell['status'])}")


def _wrapping(text: str = "-") -> QLabel:
    label = QLabel(text)
    label.setWordWrap(True)
    return label


def breakable(text: str) -> str:
    """A path or file name that a word-wrapping label can break after / . _ - (zero-width spaces):
    a long name wraps inside the dock instead of widening it."""
    for ch in "/\\._-":
        text = text.replace(ch, ch + "\u200b")
    return text


def _narrow(combo: QComboBox, chars: int = 6) -> QComboBox:
    """A combo box that may be narrower than its longest item (shown whole in its list)."""
    combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(chars)
    return combo


class SlidePanel(QGroupBox):
    """Name, size, pixel size (asked for when the file does not say it), pyramid, tissue."""

    def __init__(self):
        super().__init__("Slide")
        self.slide_label = _wrapping()
        self.size_label = _wrapping()
        self.mpp_label = _wrapping()
        self.mpp_box = QDoubleSpinBox()
        self.mpp_box.setDecimals(4)
        self.mpp_box.setRange(0.05, 20.0)
        self.mpp_box.setSingleStep(0.01)
        self.mpp_box.setValue(DEFAULT_MPP)
        self.mpp_box.setSuffix(" um/px")
        self.mpp_box.setToolTip("The file does not say its pixel size: 0.25 um/px is a 40x scan, 0.5 a 20x scan")
        self.mpp_apply = QPushButton("Use")
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.mpp_box)
        row.addWidget(self.mpp_apply)
        self.mpp_edit = QWidget()
        self.mpp_edit.setLayout(row)
        self.levels_label = _wrapping()
        self.tissue_label = _wrapping("not detected yet")
        form = QFormLayout(self)
        form.addRow("Slide:", self.slide_label)
        form.addRow("Size:", self.size_label)
        form.addRow("Pixel size:", self.mpp_label)
        form.addRow("", self.mpp_edit)
        form.addRow("Pyramid:", self.levels_label)
        form.addRow("Tissue:", self.tissue_label)


class SensitivityControl(QWidget):
    """The detector's operating point: "balanced" (the best F1 on validation labs the models never
    saw), "screening" (recall >= 0.9 on each of them: more to review, fewer missed) or a custom
    threshold on the detection score. Each choice says in its tooltip what it was chosen for,
    from the model card."""

    LABELS = {"balanced": "Balanced (best F1)", "screening": "Screening (miss fewer)", "custom": "Custom threshold"}

    def __init__(self, model: str = "cell-effnet"):
        super().__init__()
        self.combo = QComboBox()
        for key, label in self.LABELS.items():
            self.combo.addItem(label, key)
        self.threshold = QDoubleSpinBox()
        self.threshold.setRange(0.05, 0.99)
        self.threshold.setSingleStep(0.01)
        self.threshold.setDecimals(2)
        self.threshold.setToolTip("Minimum score sqrt(p_dense * p_classifier) of a mitotic figure")
        self._points = self._card(model)
        self.threshold.setValue(self._points.get("balanced", 0.6))
        for i, key in enumerate(self.LABELS):
            self.combo.setItemData(i, self._tooltip(key), 3)  # Qt.ToolTipRole
        self.combo.currentIndexChanged.connect(self._changed)
        _narrow(self.combo)
        grid = QGridLayout(self)  # two rows: the dock's default width holds them
        grid.setContentsMargins(0, 0, 0, 0)
        grid.addWidget(QLabel("Sensitivity:"), 0, 0)
        grid.addWidget(self.combo, 0, 1)
        grid.addWidget(QLabel("Threshold:"), 1, 0)
        grid.addWidget(self.threshold, 1, 1)
        grid.setColumnStretch(1, 1)
        self._changed()

    @staticmethod
    def _card(model):
        try:
            from ...models.registry import read_spec

            spec = read_spec(model)
        except Exception:  # noqa: BLE001 -- no card: the control still offers a custom threshold
            return {}
        t, m = spec.thresholds, spec.metrics
        out = {"balanced": t.get("detect_mitotic_figure"), "screening": t.get("screening/detect_mitotic_figure")}
        for point in ("balanced", "screening"):
            rec = [v for k, v in m.items() if k.startswith(f"mitotic_figure/{point}/") and k.endswith("/recall")]
            f1 = [v for k, v in m.items() if k.startswith(f"mitotic_figure/{point}/") and k.endswith("/f1")]
            if rec:
                out[f"{point}_text"] = (f"chosen on validation labs the models never saw: recall {min(rec):.2f}-"
                                        f"{max(rec):.2f}, F1 {min(f1):.2f}-{max(f1):.2f}")
        return {k: v for k, v in out.items() if v is not None}

    def _tooltip(self, key):
        if key == "custom":
            return "Your own threshold on the detection score (higher: fewer, surer detections)"
        what = "the best F1" if key == "balanced" else "the highest threshold with recall >= 0.9 on every lab"
        return f"{what}; {self._points.get(f'{key}_text', 'see the model card')}"

    def _changed(self, *_):
        key = self.combo.currentData()
        self.threshold.setEnabled(key == "custom")
        if key != "custom" and key in self._points:
            self.threshold.setValue(self._points[key])
        self.combo.setToolTip(self._tooltip(key))

    def choice(self) -> tuple[str, dict | None]:
        """(operating point, threshold overrides or None) for the detection task."""
        key = self.combo.currentData()
        if key == "custom":
            return "balanced", {"detect_mitotic_figure": float(self.threshold.value())}
        return key, None


class AnalysePanel(QGroupBox):
    """What to analyse (region, steps, device) and Run / Cancel with its progress.

    :attr:`sensitivity` is the detector's operating point (balanced / screening /
    custom threshold), in the :attr:`operating_point` layout.
    """

    def __init__(self, step_names: dict, unavailable: dict, devices_found: str):
        super().__init__("Analyse")
        self.region = _narrow(QComboBox())
        self.region.addItems([REGION_VIEW, REGION_RECTANGLE, REGION_TISSUE])
        self.region.setToolTip("A drawn rectangle or polygon (Shapes layer) is analysed inside its outline")
        self.step_boxes = {}
        for key, label in step_names.items():
            short, _, more = label.partition(" (")  # the details in the tooltip: the box fits the dock
            box = QCheckBox(short)
            box.setToolTip(f"{short} ({more}" if more else short)
            box.setChecked(key == "cells")
            if unavailable.get(key):
                box.setEnabled(False)
                box.setToolTip(unavailable[key])
            self.step_boxes[key] = box
        self.operating_point = QVBoxLayout()  # the detector's sensitivity control
        self.operating_point.setContentsMargins(0, 0, 0, 0)
        self.sensitivity = SensitivityControl()
        self.operating_point.addWidget(self.sensitivity)
        self.nuclei_method = _narrow(QComboBox())
        self.nuclei_method.addItems(["unet", "log"])
        self.nuclei_method.setToolTip("unet: the shipped U-Net; log: the fast Laplacian-of-Gaussian baseline")
        self.stain = _narrow(QComboBox())
        self.stain.addItems(["none", "macenko", "reinhard", "neural"])
        self.stain.setToolTip("Stain transfer before cell detection (to the training data's look)")
        self.device = _narrow(QComboBox())
        self.device.addItems(["auto", "cpu", "cuda"])
        self.device_label = _wrapping(f"found: {devices_found}")
        self.run_button = QPushButton(RUN_LABEL)
        self.run_button.setToolTip("Run the chosen steps on the chosen region (Run / Cancel)")
        self.progress = QProgressBar()
        self.progress.setVisible(False)
        self.status = _wrapping("")
        form = QFormLayout(self)
        form.addRow("Region:", self.region)
        for b in self.step_boxes.values():
            form.addRow(b)
        form.addRow(self.operating_point)
        form.addRow("Nuclei by:", self.nuclei_method)
        form.addRow("Stain transfer:", self.stain)
        form.addRow("Device:", self.device)
        form.addRow("", self.device_label)
        form.addRow(self.run_button)
        form.addRow(self.progress)
        form.addRow(self.status)


class QueuePanel(QGroupBox):
    """The review queue (previous / next unreviewed, ordered by score), the class for new cells, the keys."""

    def __init__(self, key_help: str):
        super().__init__("Review")
        self.order = _narrow(QComboBox())
        self.order.addItems(list(ORDER_LABELS.values()))
        self.prev_button = QPushButton("◀ Previous")
        self.next_button = QPushButton("Next ▶")
        self.new_class = _narrow(QComboBox())
        for key, label in CLASS_LABELS.items():
            self.new_class.addItem(label, key)
        self.review_label = _wrapping()
        self.current_label = _wrapping(current_text(None))
        self.current_label.setToolTip("The selected cell (or the last one the queue went to): its place in the "
                                      "queue's order, class, score and review status")
        keys = _wrapping(key_help)
        keys.setStyleSheet("color: gray")
        form = QFormLayout(self)
        form.addRow("Queue:", self.order)
        row = QHBoxLayout()
        row.addWidget(self.prev_button)
        row.addWidget(self.next_button)
        form.addRow(row)
        form.addRow("Current:", self.current_label)
        form.addRow("New cells:", self.new_class)
        form.addRow("Reviewed:", self.review_label)
        form.addRow(keys)

    def order_key(self) -> str:
        return {v: k for k, v in ORDER_LABELS.items()}[self.order.currentText()]

    def class_key(self) -> str:
        return self.new_class.currentData()


class CountsPanel(QGroupBox):
    """The live counts and the nucleus-type legend."""

    def __init__(self):
        super().__init__("Counts")
        self.counts_label = _wrapping()
        self.types_label = _wrapping()
        self.types_label.setToolTip("Nucleus types of the last typed region (unsupervised: name them by looking)")
        self.hotspot_button = QPushButton("Go to hotspot")
        self.hotspot_button.setToolTip("Centre the view on the 2.37 mm² field with the most mitotic figures")
        form = QFormLayout(self)
        form.addRow(self.counts_label)
        form.addRow(self.hotspot_button)
        form.addRow("Nucleus types:", self.types_label)


class FilesPanel(QGroupBox):
    """Where the review autosaves; export and import."""

    def __init__(self):
        super().__init__("Files")
        self.file_label = _wrapping()
        self.folder_button = QPushButton("Save review in…")
        self.export_button = QPushButton("Export counts, cells…")
        self.export_button.setToolTip("Write counts.csv, detections.csv and detections.geojson (QuPath) into a folder")
        self.training_button = QPushButton("Export for retraining…")
        self.import_button = QPushButton("Import detections…")
        form = QFormLayout(self)
        form.addRow("Autosave:", self.file_label)
        for b in (self.folder_button, self.export_button, self.training_button, self.import_button):
            form.addRow(b)
