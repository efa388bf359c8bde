"""The Mitosis review dock widget in a real napari viewer (Xvfb)."""

import numpy as np
import pytest

from napari_mitosis.io.napari_reader import get_reader
from napari_mitosis.widgets.review import ReviewWidget
from tests.conftest import shared_file

pytestmark = pytest.mark.gui


def _open(viewer, path):
    [(data, kwargs, _)] = get_reader(str(path))(str(path))
    return viewer.add_image(data, **kwargs)


def test_widget_shows_the_slide_and_detects_tissue(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-mitosis", "Mitosis review")
    assert isinstance(widget, ReviewWidget)
    assert not widget.run_button.isEnabled()  # nothing to analyse yet

    layer = _open(viewer, shared_file("slides", "CMU-1-Small-Region.svs"))
    assert "2,220 x 2,967 px" in widget.size_label.text()
    assert "0.499 um/px" in widget.mpp_label.text() and "20x" in widget.mpp_label.text()
    assert widget.run_button.isEnabled()

    widget.run_button.click()
    assert widget.run_button.text() == "Cancel"
    qtbot.waitUntil(lambda: widget.worker is None, timeout=30_000)
    tissue = viewer.layers[f"tissue ({layer.name})"]
    assert widget.run_button.text() == "Detect tissue"
    assert "mm²" in widget.tissue_label.text()
    # the mask lies over the slide: same extent in micrometres
    extent = np.array(tissue.data.shape) * tissue.scale
    np.testing.assert_allclose(extent, np.array(layer.data[0].shape[:2]) * layer.scale, rtol=0.02)
    assert 0.2 < tissue.data.mean() < 0.8


def test_run_can_be_cancelled(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    widget = ReviewWidget(viewer)
    viewer.window.add_dock_widget(widget)
    _open(viewer, shared_file("slides", "TCGA-CR-7395-01A-01-TS1.svs"))
    widget.run_button.click()
    widget.run_button.click()  # Cancel
    qtbot.waitUntil(lambda: widget.worker is None, timeout=30_000)
    assert widget.run_button.text() == "Detect tissue"
    assert widget.status.text() == "cancelled"
    assert not any(ly.name.startswith("tissue (") for ly in viewer.layers)  # a cancelled run adds nothing
    widget.run_button.click()  # and it can run again afterwards
    qtbot.waitUntil(lambda: widget.worker is None, timeout=30_000)
    assert widget.status.text() == "tissue detected"


def test_unknown_pixel_size_is_said_plainly(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    widget = ReviewWidget(viewer)
    _open(viewer, shared_file("slides", "TCGA-CR-7395-01A-01-TS1.svs"))
    assert "unknown" in widget.mpp_label.text()
