"""``napari-mitosis classify`` and ``napari-mitosis train classifier`` from the command line."""

import json

import pandas as pd
import pytest
from skimage.io import imsave

from napari_mitosis.cli import main


@pytest.fixture(scope="module")
def crops_dir(tmp_path_factory, synth):
    rgb, _ = synth.render(0, 0, 600, 600)
    d = tmp_path_factory.mktemp("crops")
    for i, (y, x) in enumerate([(100, 100), (300, 200), (400, 450)]):
        imsave(d / f"c{i}.png", rgb[y - 64 : y + 64, x - 64 : x + 64], check_contrast=False)
    return d


def test_classify_a_folder_of_crops(crops_dir, tmp_path, capsys):
    out = tmp_path / "scores.csv"
    assert main(["classify", str(crops_dir), "--out", str(out), "--device", "cpu"]) == 0
    df = pd.read_csv(out)
    assert list(df.columns) == ["file", "p_mitotic_figure", "p_granulocyte", "p_other", "class", "x", "y", "shift_um"]
    assert list(df.file) == ["c0.png", "c1.png", "c2.png"]
    assert set(df["class"]) <= {"mitotic_figure", "granulocyte", "other"}
    assert df.x.between(-1, 128).all() and df.y.between(-1, 128).all()
    assert "3 cells" in capsys.readouterr().out


def test_classify_points_on_an_image(synthetic_slide_file, synth, tmp_path):
    cells = synth.cells().head(5)
    pts = tmp_path / "points.csv"
    cells[["id", "x", "y"]].to_csv(pts, index=False)
    out = tmp_path / "s.csv"
    assert main(["classify", str(synthetic_slide_file), "--points", str(pts), "--out", str(out), "--device", "cpu"]) == 0
    df = pd.read_csv(out)
    assert list(df.id) == list(cells.id) and df.columns[0] == "id"


def test_bad_input_ends_with_one_line_and_status_2(crops_dir, synthetic_slide_file, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["classify", str(tmp_path / "empty"), "--out", str(tmp_path / "a.csv")]) == 2
    assert "holds no crops" in capsys.readouterr().err
    assert main(["classify", str(crops_dir), "--mpp", "0.5", "--out", str(tmp_path / "a.csv")]) == 2
    assert "covers 64.0 um" in capsys.readouterr().err
    assert main(["classify", str(crops_dir), "--out", str(tmp_path / "a.txt")]) == 2
    assert "--out must be a .csv" in capsys.readouterr().err
    pts = tmp_path / "p.csv"
    pd.DataFrame({"x": [5, 99999], "y": [5, 5]}).to_csv(pts, index=False)
    assert main(["classify", str(synthetic_slide_file), "--points", str(pts), "--out", str(tmp_path / "a.csv")]) == 2
    assert "outside the 1700 x 1100 px image" in capsys.readouterr().err
    assert main(["classify", str(crops_dir), "--model", "nope", "--out", str(tmp_path / "a.csv")]) == 2
    assert "no model named 'nope'" in capsys.readouterr().err


def test_train_classifier_smoke_run_on_an_export(synth, tmp_path, capsys):
    """Two steps per stage on a tiny retraining export: the command runs end to end and writes weights + card."""
    rgb, _ = synth.render(0, 0, 800, 800)
    cells = synth.cells(0, 0, 800, 800)
    cells = cells[(cells.x > 40) & (cells.y > 40) & (cells.x < 760) & (cells.y < 760)]
    imsave(tmp_path / "tile.png", rgb, check_contrast=False)
    rows = []
    for i, c in enumerate(cells.head(24).itertuples()):
        cls = ["mitotic_figure", "granulocyte", "other"][i % 3]  # labels do not matter for a smoke run
        rows.append(dict(image="tile.png", x=c.x, y=c.y, **{"class": cls}, status="confirmed", mpp=0.25, group=f"g{i % 4}"))
    data = tmp_path / "export"
    data.mkdir()
    (data / "tile.png").write_bytes((tmp_path / "tile.png").read_bytes())
    pd.DataFrame(rows).to_csv(data / "cells.csv", index=False)
    out = tmp_path / "run"
    argv = ["train", "classifier", "--data", str(data), "--out", str(out), "--steps", "2", "--batch", "4",
            "--folds", "2", "--run-folds", "1", "--eval-cap", "4"]
    assert main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["folds"][0]["gstn"]["n"] > 0 and "baseline" in res["folds"][0]
    for f in ("cell-gstn.pt", "cell-gstn.json", "cell-gstn.md", "cell-cnn-baseline.pt"):
        assert (out / "weights" / f).exists()
    spec = json.loads((out / "weights" / "cell-gstn.json").read_text())
    assert spec["training"]["command"].startswith("napari-mitosis train classifier --data")
    # unknown classes or sources are clear errors
    assert main(argv[:-8] + ["--classes", "mitotic_figure", "lymphocyte", "--steps", "2"]) == 2
    assert "no cells of class(es) ['lymphocyte']" in capsys.readouterr().err
