"""The detector's sensitivity control in the review widget: the model card's operating points,
each saying what it was chosen for, and a custom threshold, handed to the run."""

import pytest

from napari_mitosis.models.registry import read_spec
from napari_mitosis.plugin.widgets.review import ReviewWidget

pytestmark = pytest.mark.gui


def test_the_control_offers_the_cards_operating_points_and_a_custom_threshold(make_napari_viewer):
    viewer = make_napari_viewer()
    widget = ReviewWidget(viewer)
    s = widget.sensitivity
    thr = read_spec("cell-effnet").thresholds
    assert [s.combo.itemData(i) for i in range(s.combo.count())] == ["balanced", "screening", "custom"]
    assert s.choice() == ("balanced", None) and not s.threshold.isEnabled()
    assert s.threshold.value() == pytest.approx(thr["detect_mitotic_figure"], abs=0.005)
    assert "never saw" in s.combo.toolTip() and "recall" in s.combo.toolTip()  # what it was chosen for
    s.combo.setCurrentIndex(1)
    assert s.choice() == ("screening", None)
    assert s.threshold.value() == pytest.approx(thr["screening/detect_mitotic_figure"], abs=0.005)
    assert s.threshold.value() <= thr["detect_mitotic_figure"]  # screening asks for less: more to review
    s.combo.setCurrentIndex(2)
    assert s.threshold.isEnabled()
    s.threshold.setValue(0.42)
    assert s.choice() == ("balanced", {"detect_mitotic_figure": 0.42})
