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


@pytest.mark.parametrize("method", ["log", "unet"])
def test_segment_nuclei_in_a_drawn_rectangle(make_napari_viewer, qtbot, method):
    from napari_mitosis.widgets.review import REGION_RECTANGLE

    viewer = make_napari_viewer()
    widget = ReviewWidget(viewer)
    layer = _open(viewer, shared_file("slides", "CMU-1-Small-Region.svs"))
    mpp = layer.scale[0]
    # a 400 x 300 px rectangle at level-0 (x=800, y=1200), drawn in micrometres
    viewer.add_shapes([np.array([[1200, 800], [1200, 1200], [1500, 1200], [1500, 800]]) * mpp], shape_type="rectangle")
    viewer.layers.selection.active = layer
    widget.region.setCurrentText(REGION_RECTANGLE)
    widget.nuclei_method.setCurrentText(method)
    widget.device.setCurrentText("cpu")
    widget.nuclei_button.click()
    assert widget.nuclei_button.text() == "Cancel" and not widget.run_button.isEnabled()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    nuclei = viewer.layers[f"nuclei ({layer.name})"]
    assert widget.nuclei_button.text() == "Segment nuclei"
    n = len(nuclei.features)
    assert n > 10 and f"{n:,} nuclei" in widget.nuclei_label.text()
    # the labels lie on the rectangle: their extent in micrometres starts at its corner
    y0, x0 = nuclei.translate
    assert abs(x0 - 800 * mpp) < 2 and abs(y0 - 1200 * mpp) < 2
    extent = np.array(nuclei.data.shape) * nuclei.scale
    np.testing.assert_allclose(extent, np.array([300, 400]) * mpp, rtol=0.05)
    # every nucleus of the table lies in the rectangle (level-0 px)
    assert nuclei.features["x"].between(798, 1202).all() and nuclei.features["y"].between(1198, 1502).all()


def test_segment_nuclei_of_the_current_view(make_napari_viewer, qtbot):
    from napari_mitosis.widgets.regions import view_region

    viewer = make_napari_viewer()
    widget = ReviewWidget(viewer)
    layer = _open(viewer, shared_file("slides", "CMU-1-Small-Region_pyramid.ome.tif"))
    viewer.camera.center = (1400 * layer.scale[0], 1100 * layer.scale[1])
    viewer.camera.zoom = 4.0  # a few hundred pixels across
    qtbot.wait(200)
    x, y, w, h = view_region(layer, layer.metadata["slide"])
    assert 0 < w < 2220 and 0 < h < 2967 and x <= 1100 <= x + w
    widget.nuclei_method.setCurrentText("log")
    widget.nuclei_button.click()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    assert len(viewer.layers[f"nuclei ({layer.name})"].features) > 10
