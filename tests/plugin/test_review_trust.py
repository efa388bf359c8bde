"""Issue #17, "Review you can trust": runs never lose earlier work, counts are of what they say,
every slide has its own state and it all comes back on reopening."""

import json
import os

import numpy as np
import pandas as pd
import pytest

from napari_mitosis.core.tissue import TissueMask
from napari_mitosis.plugin.widgets.review import REGION_RECTANGLE, REGION_TISSUE, ReviewWidget
from tests.conftest import shared_file
from tests.plugin.test_review_widget import _link, _open, _rectangle

pytestmark = pytest.mark.gui

CMU = ("slides", "CMU-1-Small-Region_pyramid.ome.tif")


@pytest.fixture(autouse=True)
def _fallback(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_MITOSIS_ANNOTATIONS", str(tmp_path / "fallback"))


def _earlier(widget):
    """Five earlier detections: four unreviewed (on the slide's corners, where no run finds cells) and
    one confirmed."""
    r = widget.review
    r.add_model_detections(pd.DataFrame({"x": [5.0, 2210.0, 5.0, 2210.0, 1000.0], "y": [5.0, 5.0, 2960.0, 2960.0, 1200.0],
                                         "class": ["mitotic_figure"] * 5, "score": [0.9, 0.8, 0.7, 0.6, 0.95]}))
    r.state.confirm([4])
    r._changed()
    return r.state.df.copy()


def test_cancelling_a_run_keeps_the_earlier_detections(make_napari_viewer, qtbot, tmp_path):
    slide_path = _link(shared_file(*CMU), tmp_path / "slides")
    viewer = make_napari_viewer()
    widget = ReviewWidget(viewer)
    _open(viewer, slide_path)
    before = _earlier(widget)
    widget.region.setCurrentText(REGION_TISSUE)
    widget.device.setCurrentText("cpu")
    widget.run_button.click()
    qtbot.wait(300)
    widget.run_button.click()  # Cancel
    qtbot.waitUntil(lambda: widget.worker is None, timeout=30_000)
    df = widget.review.state.df
    assert set(before["id"]) <= set(df["id"]), "a cancelled run deleted earlier detections"
    assert "kept" in widget.status.text()
    saved = json.loads((slide_path.parent / (slide_path.name + ".mitosis.json")).read_text())
    assert {d["id"] for d in saved["detections"]} >= set(before["id"])


def test_closing_napari_mid_run_keeps_the_earlier_detections(make_napari_viewer, qtbot, tmp_path):
    slide_path = _link(shared_file(*CMU), tmp_path / "slides")
    viewer = make_napari_viewer()
    widget = ReviewWidget(viewer)
    _open(viewer, slide_path)
    before = _earlier(widget)
    widget.region.setCurrentText(REGION_TISSUE)
    widget.device.setCurrentText("cpu")
    widget.run_button.click()
    qtbot.wait(300)
    worker = widget.worker
    viewer.close()  # the slide layer goes: the run is stopped
    qtbot.waitUntil(lambda: not worker.is_running, timeout=30_000)
    viewer2 = make_napari_viewer()
    widget2 = ReviewWidget(viewer2)
    _open(viewer2, slide_path)
    assert set(before["id"]) <= set(widget2.review.state.df["id"])


def test_a_finished_run_replaces_only_its_regions_unreviewed_detections(make_napari_viewer, qtbot, tmp_path):
    slide_path = _link(shared_file(*CMU), tmp_path / "slides")
    viewer = make_napari_viewer()
    widget = ReviewWidget(viewer)
    layer = _open(viewer, slide_path)
    _earlier(widget)
    r = widget.review
    # an unreviewed detection inside the rectangle (in the background, found by no run) and a confirmed one
    r.add_model_detections(pd.DataFrame({"x": [650.0, 700.0], "y": [950.0, 1000.0], "class": ["mitotic_figure"] * 2,
                                         "score": [0.5, 0.5]}))
    inside_unreviewed, inside_confirmed = r.state.df["id"].iloc[-2:].tolist()
    r.state.confirm([inside_confirmed])
    _rectangle(viewer, layer, 600, 900, 700, 600)
    widget.region.setCurrentText(REGION_RECTANGLE)
    widget.device.setCurrentText("cpu")
    widget.run_button.click()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=180_000)
    assert "done" in widget.status.text(), widget.status.text()
    ids = set(r.state.df["id"])
    assert inside_confirmed in ids  # reviewed: never touched by a run
    assert {0, 1, 2, 3, 4} <= ids  # outside the region: untouched
    found = r.state.df[r.state.df["status"] == "model"]
    if not ((found.x - 650).abs().lt(3) & (found.y - 950).abs().lt(3)).any():
        assert inside_unreviewed not in ids  # not found again: it goes
    # no second detection on the confirmed cell
    near = ((r.state.df.x - 700).abs() < 6) & ((r.state.df.y - 1000).abs() < 6)
    assert near.sum() == 1


def test_drawn_region_counts_the_cells_inside_and_updates_as_drawn(make_napari_viewer, tmp_path):
    slide_path = _link(shared_file(*CMU), tmp_path / "slides")
    viewer = make_napari_viewer()
    widget = ReviewWidget(viewer)
    layer = _open(viewer, slide_path)
    _earlier(widget)  # 5 mitotic figures, one of them (1000, 1200) inside the rectangle below
    _rectangle(viewer, layer, 900, 1100, 300, 300)
    region, rows = widget.counts()[3]
    assert region == (900, 1100, 300, 300) and rows[0]["count"] == 1
    assert "drawn rectangle (300 x 300 px): 1 mitotic figures" in widget.counts_label.text()  # shown at once
    # a polygon: only the cells inside its outline
    shapes = viewer.layers[-1]
    mpp = layer.scale[0]
    shapes.add_polygons([np.array([[0, 0], [0, 2220], [2967, 0]]) * mpp])  # the upper-left triangle
    region, rows = widget.counts()[3]
    assert len(region) == 3 and rows[0]["count"] == 4  # all but the far corner (2210, 2960)
    assert "drawn polygon" in widget.counts_label.text()


def test_every_slide_has_its_own_tissue_mask_and_hotspot(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    widget = ReviewWidget(viewer)
    cmu = _open(viewer, _link(shared_file(*CMU), tmp_path / "a"))
    mask = np.zeros((30, 23), bool)
    mask[5:25, 5:20] = True
    tissue = TissueMask(mask, level=0, downsample=100.0, mpp=100 * cmu.scale[0])
    widget._show_tissue(tissue, type("Ctx", (), {"review": widget.review, "layer": cmu})())
    _earlier(widget)
    assert widget.tissue is tissue and "mm²" in widget.tissue_label.text()
    assert f"hotspot ({cmu.name})" in viewer.layers
    tcga = _open(viewer, _link(shared_file("slides", "TCGA-CR-7395-01A-01-TS1.svs"), tmp_path / "b"))
    viewer.layers.selection.active = tcga
    assert widget.review.slide_layer.unique_id == tcga.unique_id
    assert widget.tissue is None and widget.tissue_label.text() == "not detected yet"
    assert widget.counts()[1] is None  # no hotspot of its own yet
    viewer.layers.selection.active = cmu
    assert widget.tissue is tissue


def test_reopening_keeps_the_tissue_mask_hotspot_and_entered_pixel_size(make_napari_viewer, tmp_path):
    slide_path = _link(shared_file("slides", "TCGA-CR-7395-01A-01-TS1.svs"), tmp_path / "slides")
    viewer = make_napari_viewer()
    widget = ReviewWidget(viewer)
    layer = _open(viewer, slide_path)
    widget.mpp_box.setValue(0.3)
    widget.mpp_apply.click()
    w, h = layer.metadata["slide"].dimensions
    mask = np.zeros((h // 64 + 1, w // 64 + 1), bool)
    mask[2:-2, 2:-2] = True
    tissue = TissueMask(mask, level=0, downsample=64.0, mpp=64 * 0.3)
    widget._show_tissue(tissue, type("Ctx", (), {"review": widget.review, "layer": layer})())
    widget.review.add_model_detections(pd.DataFrame({"x": [500.0, 520.0], "y": [500.0, 510.0],
                                                     "class": ["mitotic_figure"] * 2, "score": [0.9, 0.8]}))
    rows, hotspot, area, _ = widget.counts()
    assert hotspot is not None
    viewer.close()

    viewer2 = make_napari_viewer()
    widget2 = ReviewWidget(viewer2)
    layer2 = _open(viewer2, slide_path)
    assert tuple(layer2.scale) == pytest.approx((0.3, 0.3)) and "0.3 um/px (user)" in widget2.mpp_label.text()
    np.testing.assert_array_equal(widget2.tissue.mask, mask)
    rows2, hotspot2, area2, _ = widget2.counts()
    assert area2 == pytest.approx(area) and hotspot2 == hotspot
    counts = pd.read_csv(widget2.export(tmp_path / "out")["counts"])
    assert counts["hotspot_count"].notna().all()


def test_import_refuses_non_finite_and_off_slide_points_and_never_duplicates(make_napari_viewer, tmp_path):
    slide_path = _link(shared_file(*CMU), tmp_path / "slides")
    viewer = make_napari_viewer()
    widget = ReviewWidget(viewer)
    _open(viewer, slide_path)
    bad = tmp_path / "inf.csv"
    bad.write_text("x,y,class\n10,10,mitotic_figure\ninf,20,mitotic_figure\n")
    assert widget._guard(widget.import_detections, bad) is None
    assert "finite" in widget.status.text() and len(widget.review.state.df) == 0
    off = tmp_path / "off.csv"
    off.write_text("x,y,class\n10,10,mitotic_figure\n50000,20,mitotic_figure\n")
    assert widget._guard(widget.import_detections, off) is None
    assert "outside this slide" in widget.status.text() and len(widget.review.state.df) == 0
    good = tmp_path / "good.csv"
    good.write_text("x,y,class\n10,10,mitotic_figure\n300,200,granulocyte\n")
    assert widget.import_detections(good) == 2
    assert widget.import_detections(good) == 0  # the same file again: nothing new
    assert len(widget.review.state.df) == 2 and "already in the review" in widget.status.text()


def test_a_failed_autosave_is_shown_and_retried(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    from napari_mitosis.io import sidecar
    from napari_mitosis.plugin.widgets import review as review_module

    monkeypatch.setattr(review_module, "SAVE_RETRY_S", 1)
    slide_path = _link(shared_file(*CMU), tmp_path / "slides")
    viewer = make_napari_viewer()
    widget = ReviewWidget(viewer)
    _open(viewer, slide_path)
    real = sidecar.save_review

    def broken(*a, **k):
        raise ValueError("Out of range float values are not JSON compliant")

    monkeypatch.setattr(sidecar, "save_review", broken)
    widget.review.add_model_detections(pd.DataFrame({"x": [10.0], "y": [10.0], "class": ["mitotic_figure"],
                                                     "score": [0.9]}))  # no exception into napari
    qtbot.waitUntil(lambda: "NOT SAVED" in widget.file_label.text(), timeout=5_000)  # saved in the background
    monkeypatch.setattr(sidecar, "save_review", real)
    qtbot.waitUntil(lambda: "NOT SAVED" not in widget.file_label.text(), timeout=5_000)
    saved = json.loads((slide_path.parent / (slide_path.name + ".mitosis.json")).read_text())
    assert len(saved["detections"]) == 1


def test_the_newest_review_of_this_slide_is_loaded_wherever_it_is(make_napari_viewer, tmp_path):
    import os

    from napari_mitosis.io import sidecar

    slide_path = _link(shared_file(*CMU), tmp_path / "slides")
    viewer = make_napari_viewer()
    widget = ReviewWidget(viewer)
    _open(viewer, slide_path)
    _earlier(widget)
    beside = widget.review.path
    assert beside.parent == slide_path.parent
    ident = widget.review.identity
    viewer.close()
    # later edits went to the fallback folder (the slide folder was read-only then): that one is newer
    newer = sidecar.fallback_folder() / f"{slide_path.name}.{ident['fingerprint']}{sidecar.SUFFIX}"
    newer.parent.mkdir(parents=True, exist_ok=True)
    doc = json.loads(beside.read_text())
    doc["detections"] = doc["detections"][:2]
    newer.write_text(json.dumps(doc))
    old = beside.stat().st_mtime - 100
    os.utime(beside, (old, old))
    if beside.with_name(beside.name + ".bak").exists():  # (saves are coalesced: there may be no earlier one)
        os.utime(beside.with_name(beside.name + ".bak"), (old, old))
    viewer2 = make_napari_viewer()
    widget2 = ReviewWidget(viewer2)
    _open(viewer2, slide_path)
    assert widget2.review.path == newer and len(widget2.review.state.df) == 2
    assert sidecar.find_sidecar(slide_path, ident) == newer
    # another slide's file beside it is passed over; this slide's fingerprinted file is found
    other = {"format": "napari-mitosis-review", "version": 1, "detections": [],
             "slide": {"name": "x.svs", "width": 10, "height": 10, "fingerprint": "zz"}}
    beside.write_text(json.dumps(other))
    newer.unlink()
    fingerprinted = slide_path.parent / f"{slide_path.name}.{ident['fingerprint']}{sidecar.SUFFIX}"
    fingerprinted.write_text(json.dumps(doc))
    assert sidecar.find_sidecar(slide_path, ident) == fingerprinted


@pytest.mark.parametrize("content", [
    json.dumps({"format": "napari-mitosis-review", "version": 1, "detections": [{"x": "a", "y": 1}]}),
    json.dumps({"format": "napari-mitosis-review", "version": 1, "detections": [1, 2]}),
    '{"format": "napari-mitosis-review", "detections": ' + "[" * 100_000 + "]" * 100_000 + "}",
])
def test_a_review_file_of_the_wrong_schema_is_set_aside_and_the_widget_keeps_a_review(make_napari_viewer, tmp_path,
                                                                                      content):
    slide_path = _link(shared_file(*CMU), tmp_path / "slides")
    path = slide_path.parent / (slide_path.name + ".mitosis.json")
    path.write_text(content)
    viewer = make_napari_viewer()
    widget = ReviewWidget(viewer)
    _open(viewer, slide_path)
    assert widget.review is not None and len(widget.review.state.df) == 0
    assert "corrupt" in widget.status.text()
    assert [p.read_text() for p in slide_path.parent.glob("*.corrupt-*")] == [content]  # kept, not overwritten


def test_restoring_the_backup_keeps_the_analysed_regions_and_cleans_up(make_napari_viewer, tmp_path):
    import os
    import time

    from napari_mitosis.io import sidecar

    slide_path = _link(shared_file(*CMU), tmp_path / "slides")
    viewer = make_napari_viewer()
    widget = ReviewWidget(viewer)
    _open(viewer, slide_path)
    _earlier(widget)
    widget.review.add_region((0, 0, 500, 400))
    widget.review.add_region([[0.0, 0.0], [100.0, 0.0], [0.0, 100.0]])
    widget.review.flush()
    widget.review.state.confirm([0])
    widget.review._changed()
    widget.review.flush()  # the .bak now holds the regions too
    path = widget.review.path
    viewer.close()
    path.write_text("{broken")
    orphan = path.with_name(f".{path.name}.abc123.part")
    orphan.write_text("half a save")
    old = time.time() - 3600
    os.utime(orphan, (old, old))
    # two corruptions in one second keep both copies
    state, note, doc = sidecar.load_review_document(path)
    assert "corrupt" in note and not orphan.exists()
    path.write_text("{broken again")
    sidecar.load_review_document(path)
    assert sorted(p.read_text() for p in path.parent.glob("*.corrupt-*")) == ["{broken", "{broken again"]
    viewer2 = make_napari_viewer()
    widget2 = ReviewWidget(viewer2)
    _open(viewer2, slide_path)
    assert widget2.review.regions == [(0, 0, 500, 400), [[0.0, 0.0], [100.0, 0.0], [0.0, 100.0]]]


def test_two_viewers_on_one_slide_warn_instead_of_overwriting_silently(make_napari_viewer, tmp_path):
    from napari_mitosis.io.reviewlock import lock_path, read_lock

    slide_path = _link(shared_file(*CMU), tmp_path / "slides")
    viewer = make_napari_viewer()
    widget = ReviewWidget(viewer)
    _open(viewer, slide_path)
    review_file = widget.review.path
    assert read_lock(lock_path(review_file))["token"] == widget.review.lock.token
    assert "another viewer" not in widget.status.text()

    viewer2 = make_napari_viewer()
    widget2 = ReviewWidget(viewer2)
    _open(viewer2, slide_path)
    assert widget2.review.path == review_file
    text = widget2.status.text()
    assert "open in another viewer" in text and f"pid {os.getpid()}" in text and "close it there first" in text
    assert "another viewer" in widget2.file_label.text()
    widget2.review.try_save()  # it keeps working, still marked; the first viewer's lock stays
    assert widget2.review.lock_holder is not None
    assert read_lock(lock_path(review_file))["token"] == widget.review.lock.token

    viewer.layers.clear()  # the first viewer closes the slide: its lock goes, the second takes it on its next save
    assert not lock_path(review_file).exists()
    widget2.review.try_save()
    assert widget2.review.lock_holder is None
    assert read_lock(lock_path(review_file))["token"] == widget2.review.lock.token
    viewer2.layers.clear()
    assert not lock_path(review_file).exists()
