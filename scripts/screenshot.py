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
    viewer.reset_view()
    viewer.camera.zoom *= 1.05
    for _ in range(50):
        QApplication.processEvents()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(OUT), canvas_only=False)
    print(f"wrote {OUT}")
    viewer.close()


if __name__ == "__main__":
    main()
