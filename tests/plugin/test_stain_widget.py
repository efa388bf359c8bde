"""The Stain normalisation dock widget in a real viewer (Xvfb)."""

import numpy as np
import pytest

from napari_mitosis.core.stain_metrics import delta_e
from napari_mitosis.plugin.reader import get_reader
from napari_mitosis.plugin.widgets.regions import rectangle_region
from napari_mitosis.plugin.widgets.stain import REF_RECTANGLE, StainWidget

pytestmark = pytest.mark.gui


def test_normalise_to_a_rectangle_drawn_on_the_slide(make_napari_viewer, qtbot, synthetic_slide_file):
    viewer = make_napari_viewer()
    [(data, kwargs, _)] = get_reader(str(synthetic_slide_file))(str(synthetic_slide_file))
    slide_layer = viewer.add_image(data, **kwargs)
    # a rectangle drawn in micrometres over level-0 pixels 400..800 (x) and 200..500 (y)
    mpp = slide_layer.scale[0]
    rect = np.array([[200, 400], [200, 800], [500, 800], [500, 400]]) * mpp
    viewer.add_shapes([rect], shape_type="rectangle", scale=None)
    assert rectangle_region(viewer.layers["Shapes"], slide_layer) == (400, 200, 400, 300)

    _, widget = viewer.window.add_plugin_dock_widget("napari-mitosis", "Stain normalisation")
    assert isinstance(widget, StainWidget)
    viewer.layers.selection.active = slide_layer
    widget.method.setCurrentText("reinhard")
    widget.reference.setCurrentText(REF_RECTANGLE)
    widget.apply_button.click()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
    out = viewer.layers[f"{slide_layer.name} (reinhard)"]
    assert out.multiscale and tuple(out.scale) == tuple(slide_layer.scale)
    assert len(out.data) == len(slide_layer.data)
    # normalising to a region of the same slide barely changes that region
    slide = slide_layer.metadata["slide"]
    region = np.asarray(out.data[0][200:500, 400:800])
    assert delta_e(region, slide.read_region(0, 400, 200, 400, 300)) < 3


def test_a_rectangle_is_required(make_napari_viewer, synthetic_slide_file):
    viewer = make_napari_viewer()
    [(data, kwargs, _)] = get_reader(str(synthetic_slide_file))(str(synthetic_slide_file))
    viewer.add_image(data, **kwargs)
    widget = StainWidget(viewer)
    widget.reference.setCurrentText(REF_RECTANGLE)
    widget.apply_button.click()
    assert "draw a rectangle" in widget.status.text()
    assert widget.worker is None
