"""Make docs/images/screenshot.png: the Mitosis review widget docked, with results on the sample slide.

Opens the real CMU-1 slide from ../shared/data (the synthetic sample when it
is absent), runs cell detection and the heatmap on all tissue, reviews a few
detections with the widget's own functions, zooms in and saves the whole window.

Run under a display, e.g. ``xvfb-run -a .venv/bin/python scripts/screenshot.py``.
"""

import os
import tempfile
from pathlib import Path

import napari
import numpy as np
from qtpy.QtWidgets import QApplication

from napari_mitosis.plugin.sample import synthetic_slide
from napari_mitosis.plugin.widgets.review import REGION_RECTANGLE, REGION_TISSUE, ReviewWidget

OUT = Path(__file__).resolve().parents[1] / "docs" / "images" / "screenshot.png"


def settle(n=50):
    for _ in range(n):
        QApplication.processEvents()


SHARED_SLIDE = Path(__file__).resolve().parents[2] / "shared" / "data" / "slides" / "CMU-1-Small-Region.svs"


def open_slide_layer(viewer):
    """The real CMU-1 skin slide when ../shared/data is there (linked into a fresh folder so no earlier
    review is restored), else the synthetic sample."""
    if SHARED_SLIDE.exists():
        from napari_mitosis.plugin.reader import get_reader

        link = Path(tempfile.mkdtemp()) / SHARED_SLIDE.name
        os.symlink(SHARED_SLIDE, link)
        [(data, kwargs, _)] = get_reader(str(link))(str(link))
        return viewer.add_image(data, **kwargs), None
    for data, kwargs, kind in synthetic_slide():
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    for layer in viewer.layers:
        if layer.name.startswith("ground truth"):
            layer.visible = False  # the model's detections only
    return viewer.layers[0], (1200, 1500, 2048, 1536)


def main():
    os.environ.setdefault("NAPARI_MITOSIS_ANNOTATIONS", tempfile.mkdtemp())
    viewer = napari.Viewer(title="napari-mitosis", show=True)
    viewer.window._qt_window.resize(1500, 950)
    slide_layer, field = open_slide_layer(viewer)
    widget = ReviewWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Mitosis review", area="right")
    review = widget.review
    for f in review.path.parent.glob(review.path.name + "*"):
        f.unlink()  # a fresh review for the picture
    review.state = type(review.state)()
    mpp = slide_layer.scale[0]
    if field is not None:
        x, y, w, h = field
        viewer.add_shapes([np.array([[y, x], [y, x + w], [y + h, x + w], [y + h, x]]) * mpp], shape_type="rectangle",
                          name="field", edge_color="cyan", face_color="transparent", edge_width=4,
                          units=slide_layer.units)
        widget.region.setCurrentText(REGION_RECTANGLE)
    else:
        widget.region.setCurrentText(REGION_TISSUE)
    viewer.layers.selection.active = slide_layer
    if widget.step_boxes["heatmap"].isEnabled():
        widget.step_boxes["heatmap"].setChecked(True)
    widget.run_button.click()
    while widget.worker is not None:
        QApplication.processEvents()
    print(widget.status.text())
    first = review.go(1)  # the pathologist's first steps: next, confirm; one look-alike corrected
    review.confirm()
    review.go(1)
    review.set_class("other")
    review.go(1)
    review.confirm()
    settle()
    if first is not None:
        row = review.state.df.set_index("id").loc[first]
        viewer.camera.center = (row["y"] * mpp, row["x"] * mpp)
    viewer.camera.zoom = 1.2 / mpp  # about 1 screen px per 0.8 um
    settle(50)
    from qtpy.QtWidgets import QScrollArea

    scroll = widget.findChild(QScrollArea)  # the dock shows the review: current cell, table, counts
    scroll.verticalScrollBar().setValue(widget.queue_panel.y() - 6)
    settle(100)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(OUT), canvas_only=False)
    print(f"wrote {OUT}")
    viewer.close()


if __name__ == "__main__":
    main()
