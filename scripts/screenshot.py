"""Make docs/images/screenshot.png: the Mitosis review widget docked, with results on the sample slide.

Opens the synthetic sample slide, runs cell detection (and the heatmap when
its model is installed) on a field of tumour, reviews a few detections with
the widget's own functions, zooms in and saves the whole window.

Run under a display, e.g. ``xvfb-run -a .venv/bin/python scripts/screenshot.py``.
"""

import os
import tempfile
from pathlib import Path

import napari
import numpy as np
from qtpy.QtWidgets import QApplication

from napari_mitosis.io.sample import synthetic_slide
from napari_mitosis.widgets.review import REGION_RECTANGLE, ReviewWidget

OUT = Path(__file__).resolve().parents[1] / "docs" / "images" / "screenshot.png"


def settle(n=50):
    for _ in range(n):
        QApplication.processEvents()


def main():
    os.environ.setdefault("NAPARI_MITOSIS_ANNOTATIONS", tempfile.mkdtemp())
    viewer = napari.Viewer(title="napari-mitosis", show=True)
    viewer.window._qt_window.resize(1500, 950)
    for data, kwargs, kind in synthetic_slide():
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    slide_layer = viewer.layers[0]
    widget = ReviewWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Mitosis review", area="right")
    mpp = slide_layer.scale[0]
    # a 2048 x 1536 px field of tumour, drawn as a rectangle
    x, y, w, h = 1200, 1500, 2048, 1536
    viewer.add_shapes([np.array([[y, x], [y, x + w], [y + h, x + w], [y + h, x]]) * mpp], shape_type="rectangle",
                      name="field", edge_color="cyan", face_color="transparent", edge_width=4,
                      units=slide_layer.units)
    for layer in viewer.layers:
        if layer.name.startswith("ground truth"):
            layer.visible = False  # the model's detections only
    viewer.layers.selection.active = slide_layer
    widget.region.setCurrentText(REGION_RECTANGLE)
    if widget.step_boxes["heatmap"].isEnabled():
        widget.step_boxes["heatmap"].setChecked(True)
    widget.run_button.click()
    while widget.worker is not None:
        QApplication.processEvents()
    print(widget.status.text())
    review = widget.review
    for _ in range(3):  # the pathologist's first steps: next, confirm
        review.go(1)
        review.confirm()
    review.go(1)
    settle()
    viewer.camera.center = (y + h / 2) * mpp, (x + w / 2) * mpp
    viewer.camera.zoom = 2.4
    settle(100)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(OUT), canvas_only=False)
    print(f"wrote {OUT}")
    viewer.close()


if __name__ == "__main__":
    main()
