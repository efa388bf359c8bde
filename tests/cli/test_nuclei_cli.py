"""``napari-mitosis segment`` and ``napari-mitosis train nuclei``."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile
from skimage.io import imsave

from napari_mitosis.cli import build_parser, main
from napari_mitosis.core.synthetic import SyntheticHE


@pytest.fixture(scope="module")
def tissue_png(tmp_path_factory):
    rgb, truth = SyntheticHE(shape=(250, 330), mpp=0.25, seed=2, tissue="full").render(0, 0, 250, 330)
    path = tmp_path_factory.mktemp("img") / "tissue.png"
    imsave(path, rgb)
    return path, truth


@pytest.mark.parametrize("method", ["log", "unet"])
def test_segment_writes_labels_of_the_input_size_and_a_table(tissue_png, tmp_path, capsys, method):
    path, truth = tissue_png
    out, csv = tmp_path / "labels.tif", tmp_path / "nuclei.csv"
    rc = main(["segment", str(path), "--mpp", "0.25", "--out", str(out), "--table", str(csv), "--method", method,
               "--device", "cpu"])
    assert rc == 0
    labels = tifffile.imread(out)
    assert labels.shape == truth.shape
    table = pd.read_csv(csv)
    assert {"id", "x", "y", "x_um", "y_um", "area_um2", "eccentricity", "mean_hematoxylin_od"} <= set(table.columns)
    assert set(table.id) == set(np.unique(labels)) - {0}
    assert 0.6 < len(table) / (len(np.unique(truth)) - 1) < 1.4
    assert "nuclei" in capsys.readouterr().out


def test_segment_roi(tissue_png, tmp_path):
    path, _ = tissue_png
    out = tmp_path / "roi.png"
    assert main(["segment", str(path), "--mpp", "0.25", "--roi", "10,20,200,100", "--out", str(out),
                 "--method", "log"]) == 0
    from skimage.io import imread

    assert imread(out).shape == (100, 200)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "--mpp"),  # a PNG records no pixel size
        (["--mpp", "0.25", "--roi", "1,2,3"], "x,y,w,h"),
        (["--mpp", "0.25", "--roi", "5000,5000,10,10"], "outside the slide"),
        (["--mpp", "12"], "um/px"),
    ],
)
def test_segment_bad_input_is_one_clear_line(tissue_png, tmp_path, capsys, args, message):
    path, _ = tissue_png
    rc = main(["segment", str(path), "--out", str(tmp_path / "x.tif"), "--method", "log", *args])
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err and "Traceback" not in err


def test_segment_refuses_an_unknown_output_format(tissue_png, tmp_path, capsys):
    path, _ = tissue_png
    assert main(["segment", str(path), "--mpp", "0.25", "--out", str(tmp_path / "x.jpg"), "--method", "log"]) == 2
    assert ".tif" in capsys.readouterr().err


def test_train_nuclei_is_a_train_subcommand(tmp_path, capsys):
    args = build_parser().parse_args(["train", "nuclei", "--data", "d", "--out", "o", "--minutes", "5"])
    assert args.model == "nuclei" and args.minutes == 5
    rc = main(["train", "nuclei", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "run")])
    assert rc == 2
    assert "no such folder" in capsys.readouterr().err
