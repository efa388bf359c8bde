"""The Mitosis review dock widget in a real napari viewer (Xvfb): run, cancel, review with the keys,
autosave, reopen, export, re-import."""

import json
import os

import numpy as np
import pandas as pd
import pytest
from app_model.types import KeyBinding

from napari_mitosis.io.detections import read_detections
from napari_mitosis.plugin.reader import get_reader
from napari_mitosis.plugin.widgets.review import (
    REGION_RECTANGLE,
    REGION_TISSUE,
    REGION_VIEW,
    ReviewWidget,
)
from tests.conftest import shared_file

pytestmark = pytest.mark.gui


@pytest.fixture(autouse=True)
def _fallback(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_MITOSIS_ANNOTATIONS", str(tmp_path / "fallback"))


def _link(path, folder):
    """The slide in a folder of the test's own (the review file is written beside it)."""
    folder.mkdir(exist_ok=True)
    link = folder / path.name
    if not link.exists():
        os.symlink(path, link)
    return link


def _open(viewer, path):
    [(data, kwargs, _)] = get_reader(str(path))(str(path))
    return viewer.add_image(data, **kwargs)


def _key(layer, key):
    """Press a key on a layer as napari dispatches it (through the layer's keymap)."""
    layer.keymap[KeyBinding.from_str(key)](layer)


def _rectangle(viewer, layer, x, y, w, h):
    mpp = layer.scale[0]
    viewer.add_shapes([np.array([[y, x], [y, x + w], [y + h, x + w], [y + h, x]]) * mpp], shape_type="rectangle")
    viewer.layers.selection.active = layer


def test_run_cells_in_a_drawn_rectangle_streams_detections_and_counts(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer(show=True)
    _, widget = viewer.window.add_plugin_dock_widget("napari-mitosis", "Mitosis review")
    assert isinstance(widget, ReviewWidget)
    assert not widget.run_button.isEnabled()  # nothing to analyse yet
    slide_path = _link(shared_file("slides", "CMU-1-Small-Region.svs"), tmp_path / "slides")
    layer = _open(viewer, slide_path)
    assert "2,220 x 2,967 px" in widget.size_label.text()
    assert "0.499 um/px" in widget.mpp_label.text() and "20x" in widget.mpp_label.text()
    assert "found:" in widget.device_label.text()
    _rectangle(viewer, layer, 600, 900, 700, 600)
    widget.region.setCurrentText(REGION_RECTANGLE)
    widget.step_boxes["nuclei"].setChecked(True)
    widget.nuclei_method.setCurrentText("log")
    widget.device.setCurrentText("cpu")
    widget.run_button.click()
    assert widget.run_button.text() == "Cancel"
    qtbot.waitUntil(lambda: widget.worker is None, timeout=180_000)
    assert widget.run_button.text() == "Run", widget.status.text()
    assert "done" in widget.status.text(), widget.status.text()
    # tissue, nuclei on the rectangle, detections as points on the slide
    assert f"tissue ({layer.name})" in viewer.layers and "mm²" in widget.tissue_label.text()
    nuclei = [ly for ly in viewer.layers if ly.name.startswith("nuclei")]
    assert nuclei and len(nuclei[0].features) > 10
    points = widget.review.layer
    assert points.name == f"detections ({layer.name})"
    assert tuple(points.scale) == tuple(layer.scale[-2:])
    df = widget.review.state.df
    assert (df["status"] == "model").all() and df["class"].isin(["mitotic_figure", "granulocyte"]).all()
    assert df["x"].between(600, 1300).all() and df["y"].between(900, 1500).all()
    assert set(points.features.columns) >= {"class", "score", "status"}
    # the counts are over the analysed tissue of the rectangle, and the file holds the review
    rows, _, area, _ = widget.counts()
    assert 0 < area <= 700 * 600 * 0.499**2 / 1e6 * 1.1
    assert f"{rows[0]['count']}" in widget.counts_label.text()
    widget.review.flush()  # autosaves are written in the background
    saved = json.loads((slide_path.parent / "CMU-1-Small-Region.svs.mitosis.json").read_text())
    assert len(saved["detections"]) == len(df)
    # the canvas shows the slide (not a blank image)
    viewer.reset_view()
    qtbot.wait(200)
    shot = viewer.screenshot(canvas_only=True, flash=False)
    assert shot[..., :3].std() > 10


def test_run_can_be_cancelled_and_the_pixel_size_asked_for(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    widget = ReviewWidget(viewer)
    viewer.window.add_dock_widget(widget)
    layer = _open(viewer, _link(shared_file("slides", "TCGA-CR-7395-01A-01-TS1.svs"), tmp_path / "s"))
    assert "unknown" in widget.mpp_label.text()
    assert not widget.run_button.isEnabled()  # the models need a pixel size
    assert widget.mpp_box.value() == pytest.approx(0.25)  # a sensible default offered
    widget.mpp_apply.click()
    assert widget.run_button.isEnabled() and "0.25 um/px (user)" in widget.mpp_label.text()
    assert tuple(layer.scale) == pytest.approx((0.25, 0.25))
    widget.region.setCurrentText(REGION_TISSUE)
    widget.run_button.click()
    qtbot.wait(300)
    widget.run_button.click()  # Cancel
    qtbot.waitUntil(lambda: widget.worker is None, timeout=10_000)
    assert widget.run_button.text() == "Run"
    assert widget.status.text().startswith("cancelled")


def _review_with_detections(viewer, widget, slide_path):
    layer = _open(viewer, slide_path)
    truth = pd.DataFrame({"x": [300.0, 700.0, 1500.0, 1800.0], "y": [400.0, 800.0, 1200.0, 2000.0],
                          "class": ["mitotic_figure", "mitotic_figure", "granulocyte", "mitotic_figure"],
                          "score": [0.95, 0.55, 0.8, 0.7]})
    widget.review.add_model_detections(truth)
    return layer, widget.review.layer


def test_keyboard_review_autosaves_and_reopens(make_napari_viewer, qtbot, tmp_path):
    slide_path = _link(shared_file("slides", "CMU-1-Small-Region_pyramid.ome.tif"), tmp_path / "slides")
    sidecar = slide_path.parent / (slide_path.name + ".mitosis.json")
    viewer = make_napari_viewer()
    widget = ReviewWidget(viewer)
    layer, points = _review_with_detections(viewer, widget, slide_path)

    def saved():
        widget.review.flush()  # autosaves are written in the background
        return pd.DataFrame(json.loads(sidecar.read_text())["detections"]).set_index("id")

    # N: the most likely mitosis first, centred and selected
    _key(points, "n")
    assert widget.review.selected_ids() == [0]
    np.testing.assert_allclose(viewer.camera.center[-2:], np.array([400, 300]) * layer.scale[-2:], rtol=1e-3)
    _key(points, "c")  # confirm
    assert saved().loc[0, "status"] == "confirmed"
    _key(points, "n")  # next: 0.8 granulocyte
    assert widget.review.selected_ids() == [2]
    _key(points, "m")  # it is a mitotic figure
    assert saved().loc[2, ["class", "status"]].tolist() == ["mitotic_figure", "corrected"]
    _key(points, "n")
    assert widget.review.selected_ids() == [3]
    _key(points, "x")  # not a mitosis: removed, kept as a negative
    assert 3 not in saved().index
    assert [r["id"] for r in json.loads(sidecar.read_text())["rejected"]] == [3]
    # Shift+G adds a granulocyte at the mouse
    viewer.cursor.position = (1000 * layer.scale[0], 1100 * layer.scale[1])
    _key(points, "Shift-g")
    added = saved().query("status == 'added'")
    assert added["class"].tolist() == ["granulocyte"]
    np.testing.assert_allclose(added[["x", "y"]].to_numpy(float), [[1100, 1000]])
    # Ctrl+Z undoes the add, Ctrl+Shift+Z redoes it
    _key(points, "Control-z")
    assert (saved()["status"] == "added").sum() == 0
    _key(points, "Control-Shift-z")
    assert (saved()["status"] == "added").sum() == 1
    # napari's own Delete works too and is remembered
    points.selected_data = {int(np.nonzero(points.features["id"].to_numpy() == 1)[0][0])}
    points.remove_selected()
    assert 1 not in saved().index
    assert "2 of 3 detections reviewed" in widget.review_label.text() or "3 of 3" in widget.review_label.text()
    before = widget.review.state.df.copy()
    viewer.close()

    # reopen: the review is back, as it was
    viewer2 = make_napari_viewer()
    widget2 = ReviewWidget(viewer2)
    _open(viewer2, slide_path)
    assert "restored" in widget2.status.text()
    def norm(df):
        df = df.reset_index(drop=True).astype(object)
        return df.where(df.notna(), None)

    pd.testing.assert_frame_equal(norm(widget2.review.state.df), norm(before))
    assert len(widget2.review.layer.data) == len(before)


def test_export_equals_what_the_widget_shows_and_reimports(make_napari_viewer, qtbot, tmp_path):
    slide_path = _link(shared_file("slides", "CMU-1-Small-Region_pyramid.ome.tif"), tmp_path / "slides")
    viewer = make_napari_viewer()
    widget = ReviewWidget(viewer)
    layer, _points = _review_with_detections(viewer, widget, slide_path)
    widget.review.state.confirm([0, 1])
    widget.review.state.remove([2])
    widget.review._changed()
    out = tmp_path / "export"
    paths = widget.export(out)
    counts = pd.read_csv(paths["counts"]).set_index("class")
    rows = {r["class"]: r for r in widget.counts()[0]}
    assert counts.loc["mitotic_figure", "count"] == rows["mitotic_figure"]["count"] == 3
    assert f"Mitotic figures</b>: {rows['mitotic_figure']['count']}" in widget.counts_label.text()
    det = read_detections(paths["geojson"])
    assert len(det) == 3 and det.attrs["mpp"] == pytest.approx(layer.scale[0])
    # retraining dataset: the reviewed cells and the removed model call as a hard negative
    from napari_mitosis.training.cell_data import read_export

    worker = widget.export_training(tmp_path / "train")  # in a thread worker, off the GUI thread
    assert not widget.training_button.isEnabled()
    qtbot.waitUntil(lambda: widget.export_worker is None, timeout=60_000)
    assert "retraining dataset written" in widget.status.text(), widget.status.text()
    assert worker is not None
    cells = read_export(tmp_path / "train")
    assert len(cells) == 3 and sorted(cells["class"]) == ["mitotic_figure", "mitotic_figure", "other"]
    # a fresh viewer of the same slide re-imports the GeoJSON (as QuPath would hand it back)
    viewer.close()
    for f in slide_path.parent.glob("*.mitosis.json*"):
        f.unlink()
    viewer2 = make_napari_viewer()
    widget2 = ReviewWidget(viewer2)
    _open(viewer2, slide_path)
    assert widget2.import_detections(paths["geojson"]) == 3
    np.testing.assert_allclose(widget2.review.layer.data[:, ::-1], det[["x", "y"]].to_numpy())


def test_another_slides_review_file_is_refused_and_kept(make_napari_viewer, tmp_path):
    folder = tmp_path / "slides"
    slide_path = _link(shared_file("slides", "CMU-1-Small-Region_pyramid.ome.tif"), folder)
    other = {"format": "napari-mitosis-review", "version": 1, "detections": [],
             "slide": {"name": "x.svs", "width": 10, "height": 10, "fingerprint": "zz"}}
    sidecar = folder / (slide_path.name + ".mitosis.json")
    sidecar.write_text(json.dumps(other))
    viewer = make_napari_viewer()
    widget = ReviewWidget(viewer)
    _review_with_detections(viewer, widget, slide_path)
    assert "refusing" in widget.status.text()
    widget.review.flush()
    assert json.loads(sidecar.read_text()) == other  # untouched; this review is saved under another name
    assert widget.review.path != sidecar and widget.review.path.exists()


def test_points_layer_saves_through_the_npe2_writers(make_napari_viewer, tmp_path):
    slide_path = _link(shared_file("slides", "CMU-1-Small-Region_pyramid.ome.tif"), tmp_path / "slides")
    viewer = make_napari_viewer()
    widget = ReviewWidget(viewer)
    layer, points = _review_with_detections(viewer, widget, slide_path)
    viewer.layers.selection.active = points
    for suffix in (".csv", ".geojson"):
        out = tmp_path / f"points{suffix}"
        viewer.layers.save(str(out), selected=True, plugin="napari-mitosis")
        df = read_detections(out)
        assert len(df) == 4 and df.attrs["mpp"] == pytest.approx(layer.scale[0])
        np.testing.assert_allclose(df[["x", "y"]], widget.review.state.df[["x", "y"]])
        opened = viewer.open(str(out), plugin="napari-mitosis")[0]
        assert opened._type_string == "points" and len(opened.data) == 4


@pytest.mark.slow
def test_segment_nuclei_of_the_current_view(make_napari_viewer, qtbot, tmp_path):
    from napari_mitosis.plugin.widgets.regions import view_region

    viewer = make_napari_viewer()
    widget = ReviewWidget(viewer)
    layer = _open(viewer, _link(shared_file("slides", "CMU-1-Small-Region_pyramid.ome.tif"), tmp_path / "s"))
    viewer.camera.center = (1400 * layer.scale[0], 1100 * layer.scale[1])
    viewer.camera.zoom = 4.0  # a few hundred pixels across
    qtbot.wait(200)
    x, y, w, h = view_region(layer, layer.metadata["slide"])
    assert 0 < w < 2220 and 0 < h < 2967 and x <= 1100 <= x + w
    widget.region.setCurrentText(REGION_VIEW)
    widget.step_boxes["cells"].setChecked(False)
    widget.step_boxes["nuclei"].setChecked(True)
    widget.nuclei_method.setCurrentText("log")
    widget.run_button.click()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    nuclei = [ly for ly in viewer.layers if ly.name.startswith("nuclei")]
    assert len(nuclei[0].features) > 10
    y0, x0 = nuclei[0].translate
    assert abs(x0 - x * layer.scale[1]) < 2 and abs(y0 - y * layer.scale[0]) < 2


def test_heatmap_and_nucleus_types_show_over_the_slide_and_persist(make_napari_viewer, qtbot, tmp_path,
                                                                   synthetic_slide_file):
    steps = ReviewWidget.available_steps()
    if steps["heatmap"] or steps["types"]:
        pytest.skip(f"models not installed: {steps}")
    viewer = make_napari_viewer()
    widget = ReviewWidget(viewer)
    slide_path = _link(synthetic_slide_file, tmp_path / "slides")
    layer = _open(viewer, slide_path)
    _rectangle(viewer, layer, 400, 300, 600, 500)
    widget.region.setCurrentText(REGION_RECTANGLE)
    for key, box in widget.step_boxes.items():
        box.setChecked(key in ("heatmap", "types"))
    widget.nuclei_method.setCurrentText("log")
    widget.run_button.click()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=180_000)
    assert "done" in widget.status.text(), widget.status.text()
    heat = viewer.layers[f"mitosis heatmap ({layer.name})"]
    assert heat.data.min() >= 0 and heat.data.max() <= 1 and heat.opacity < 1
    # it lies on the rectangle: its top-left corner in micrometres is the rectangle's
    y0, x0 = np.asarray(heat.translate) - np.asarray(heat.scale) / 2
    assert abs(x0 - 400 * layer.scale[1]) < 3 * heat.scale[1] and abs(y0 - 300 * layer.scale[0]) < 3 * heat.scale[0]
    types = viewer.layers[f"nucleus types ({layer.name})"]
    assert types.data.max() > 5
    assert ":" in widget.types_label.text()  # legend with counts
    paths = widget.export(tmp_path / "export")
    typed = pd.read_csv(paths["nuclei_types"])
    assert len(typed) > 5 and {"x", "y", "type"} <= set(typed.columns)
    viewer.close()
    viewer2 = make_napari_viewer()
    widget2 = ReviewWidget(viewer2)
    _open(viewer2, slide_path)
    assert len(widget2.review.nuclei_types) == len(typed)
