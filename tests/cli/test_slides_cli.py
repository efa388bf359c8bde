import json

import pandas as pd
import pytest
from skimage.io import imread

from napari_mitosis.cli import main
from tests.conftest import shared_file


def test_info_prints_the_slide_metadata(capsys, synthetic_slide_file):
    assert main(["info", str(synthetic_slide_file)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["mpp"] == 0.25 and info["shape"] == [1100, 1700] and info["format"] == "ome-tiff"


def test_info_with_override(capsys):
    path = shared_file("slides", "TCGA-CR-7395-01A-01-TS1.svs")
    assert main(["info", str(path), "--mpp", "0.5"]) == 0
    assert json.loads(capsys.readouterr().out)["mpp"] == 0.5


def test_bad_input_gives_a_message_not_a_traceback(capsys, tmp_path):
    assert main(["info", str(tmp_path / "missing.svs")]) == 2
    err = capsys.readouterr().err
    assert "missing.svs: no such file" in err and "Traceback" not in err


def test_tissue_writes_a_mask(capsys, tmp_path):
    path = shared_file("slides", "CMU-1-Small-Region.svs")
    out = tmp_path / "mask.png"
    assert main(["tissue", str(path), "--out", str(out)]) == 0
    mask = imread(out)
    assert mask.dtype.kind == "u" and 0.2 < (mask > 0).mean() < 0.8
    assert "mm2" in capsys.readouterr().out


def test_synth_then_demo_on_it(tmp_path, capsys):
    slide = tmp_path / "s.ome.tif"
    truth = tmp_path / "truth.csv"
    assert main(["synth", str(slide), "--size", "800", "1200", "--seed", "3", "--truth", str(truth)]) == 0
    assert slide.exists() and len(pd.read_csv(truth)) > 100
    out = tmp_path / "results"
    assert main(["demo", str(slide), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mpp"] == 0.25 and summary["size_px"] == [1200, 800]
    assert summary["tissue_area_mm2"] > 0
    for name in ("overview.png", "tissue_mask.png", "counts.csv", "slide_info.json"):
        assert (out / name).exists()


def test_demo_makes_its_synthetic_slide(tmp_path):
    out = tmp_path / "results"
    assert main(["demo", "--out", str(out), "--size", "1024", "1536"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    truth = pd.read_csv(out / "ground_truth.csv")
    assert summary["truth_mitotic_figures"] == (truth["class"] == "mitotic_figure").sum()
    counts = pd.read_csv(out / "counts.csv")
    assert counts.loc[0, "tissue_area_mm2"] == pytest.approx(summary["tissue_area_mm2"])
    assert imread(out / "overview.png").shape[2] == 3
    # the demo also segments and classifies the nuclei of a field in the tissue
    nuclei = pd.read_csv(out / "nuclei.csv")
    scores = pd.read_csv(out / "scores.csv")
    x, y, w, h = summary["field_xywh"]
    assert (w, h) == (1024, 1024)
    in_field = truth[truth.x.between(x, x + w) & truth.y.between(y, y + h)]
    assert 0.7 * len(in_field) < len(nuclei) < 1.3 * len(in_field)  # about one nucleus per true cell
    assert len(scores) == len(nuclei) and {"p_mitotic_figure", "class"} <= set(scores.columns)
    # and analyses the whole slide as `napari-mitosis analyze` does
    analysis = pd.read_csv(out / "analysis" / "summary.csv")
    assert analysis.status[0] == "ok" and summary["analysis_mitotic_figures"] == analysis.mitotic_figures[0]
    (folder,) = [p for p in (out / "analysis").iterdir() if p.is_dir()]
    det = pd.read_csv(folder / "detections.csv")
    assert len(det) == analysis.mitotic_figures[0] + analysis.granulocytes[0]
    assert (folder / "overview.png").exists() and (folder / "detections.geojson").exists()


@pytest.mark.slow
@pytest.mark.gui
def test_demo_gui_opens_napari_with_the_slide_and_the_widget(tmp_path, monkeypatch, qtbot):
    import napari

    seen = {}

    def fake_run():  # instead of entering the event loop, look at what the user would see
        viewer = napari.current_viewer()
        seen["layers"] = [ly.name for ly in viewer.layers]
        seen["scale"] = tuple(viewer.layers[0].scale)
        seen["docks"] = list(viewer.window.dock_widgets)
        viewer.close()

    monkeypatch.setattr(napari, "run", fake_run)
    slide = shared_file("slides", "CMU-1-Small-Region_pyramid.ome.tif")
    assert main(["demo", str(slide), "--out", str(tmp_path), "--gui"]) == 0
    assert seen["layers"] == ["CMU-1-Small-Region_pyramid.ome.tif"]
    assert seen["scale"] == pytest.approx((0.499, 0.499))
    assert "Mitosis review" in seen["docks"]
