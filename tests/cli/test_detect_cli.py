"""napari-mitosis detect / analyze from the command line."""

from __future__ import annotations

import numpy as np
import pandas as pd

from napari_mitosis.cli import main


def test_detect_writes_a_csv_of_detections(tmp_path, capsys, synthetic_slide_file):
    out = tmp_path / "det.csv"
    assert main(["detect", str(synthetic_slide_file), "--roi", "400,0,1000,800", "--out", str(out), "--device", "cpu",
                 "--candidates", "nuclei", "--threshold", "screen_dark=1.2", "--threshold", "mitotic_figure=0.5"]) == 0
    df = pd.read_csv(out)
    assert (df["class"] == "mitotic_figure").sum() >= 1
    assert list(df.columns[:4]) == ["x", "y", "class", "score"]
    assert df.x.between(400, 1400).all() and df.y.between(0, 800).all()
    assert set(df["class"]) <= {"mitotic_figure", "granulocyte"}
    assert "mitotic figure(s)" in capsys.readouterr().out


def test_plain_image_without_pixel_size_asks_for_mpp(tmp_path, capsys):
    from skimage.io import imsave

    img = tmp_path / "field.png"
    imsave(img, np.full((200, 300, 3), 200, np.uint8), check_contrast=False)
    assert main(["detect", str(img), "--out", str(tmp_path / "d.csv")]) == 2
    err = capsys.readouterr().err
    assert "--mpp" in err and "Traceback" not in err and "napari-mitosis: error:" in err
    assert not (tmp_path / "d.csv").exists()


def test_bad_roi_and_threshold_are_one_line_errors(tmp_path, capsys, synthetic_slide_file):
    assert main(["detect", str(synthetic_slide_file), "--roi", "1,2,3", "--out", str(tmp_path / "d.csv")]) == 2
    assert "--roi must be x,y,w,h" in capsys.readouterr().err
    assert main(["detect", str(synthetic_slide_file), "--threshold", "mitosis=0.5", "--out", str(tmp_path / "d.csv")]) == 2
    assert "unknown threshold" in capsys.readouterr().err
    assert main(["detect", str(synthetic_slide_file), "--candidates", "nuclei", "--first-pass", "nope",
                 "--out", str(tmp_path / "d.csv")]) == 2
    err = capsys.readouterr().err
    assert "no model named 'nope'" in err and "cell-screen" in err and "Traceback" not in err
    assert main(["detect", str(synthetic_slide_file), "--model", "nope", "--out", str(tmp_path / "d.csv")]) == 2
    err = capsys.readouterr().err
    assert "no model named 'nope'" in err and "cell-effnet" in err and "Traceback" not in err
    assert not (tmp_path / "d.csv").exists()


def test_analyze_many_slides_writes_a_summary_with_every_slide(tmp_path, capsys, synthetic_slide_file):
    missing = tmp_path / "missing.svs"
    out = tmp_path / "out"
    assert main(["analyze", str(synthetic_slide_file), str(missing), "--roi", "0,0,800,800", "--out", str(out),
                 "--device", "cpu", "--workers", "2"]) == 0
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == 2
    assert list(summary.status) == ["ok", "error"] and "no such file" in summary.message[1]
    for name in ("detections.csv", "detections.geojson", "counts.csv", "overview.png"):
        assert (out / "synthetic" / name).exists()
    text = capsys.readouterr().out
    assert "per 2.37 mm2" in text and "missing.svs: ERROR" in text
