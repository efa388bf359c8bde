"""Make docs/images/screenshot.png: the synthetic slide in napari with the review widget.

Run under a display, e.g. ``xvfb-run -a .venv/bin/python scripts/screenshot.py``.
"""

from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication

from napari_mitosis.io.sample import synthetic_slide
from napari_mitosis.widgets.review import ReviewWidget

OUT = Path(__file__).resolve().parents[1] / "docs" / "images" / "screenshot.png"


def main():
    viewer = napari.Viewer(title="napari-mitosis", show=True)
    viewer.window._qt_window.resize(1400, 850)
    for data, kwargs, kind in synthetic_slide():
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    widget = ReviewWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Mitosis review", area="right")
    viewer.layers.selection.active = viewer.layers[0]
    widget.run_button.click()
    while widget.worker is not None:
        QApplication.processEvents()
    # zoom into a tumour nest and segment the nuclei of the view
    mpp = viewer.layers[0].scale[0]
    viewer.camera.center = (2300 * mpp, 2000 * mpp)
    viewer.camera.zoom = 3.2
    for _ in range(50):
        QApplication.processEvents()
    viewer.layers.selection.active = viewer.layers[0]
    widget.nuclei_button.click()
    while widget.worker is not None:
        QApplication.processEvents()
    nuclei = [ly for ly in viewer.layers if ly.name.startswith("nuclei")][0]
    nuclei.contour = 1
    for _ in range(50):
        QApplication.processEvents()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(OUT), canvas_only=False)
    print(f"wrote {OUT}")
    viewer.close()


if __name__ == "__main__":
    main()
