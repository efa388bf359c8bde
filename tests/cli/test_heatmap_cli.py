"""``napari-mitosis heatmap`` and ``napari-mitosis train mil``."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import tifffile
from skimage.io import imread, imsave

from napari_mitosis.cli import main
from napari_mitosis.core.synthetic import SyntheticHE
from tests.conftest import shipped_mil_geometry

STRIDE, MIN_INPUT = shipped_mil_geometry()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tissue_png(tmp_path_factory):
    rgb, _ = SyntheticHE(shape=(300, 420), mpp=0.25, seed=5, tissue="full").render(0, 0, 300, 420)
    path = tmp_path_factory.mktemp("img") / "tissue.png"
    imsave(path, rgb)
    return path


def test_heatmap_writes_a_float_tiff_and_a_peaks_table(tissue_png, tmp_path, capsys):
    out, csv = tmp_path / "heat.tif", tmp_path / "peaks.csv"
    rc = main(["heatmap", str(tissue_png), "--mpp", "0.25", "--out", str(out), "--peaks", str(csv), "--device", "cpu",
               "--threshold", "0.0"])
    assert rc == 0
    heat = tifffile.imread(out)
    # 300 x 420 px at 0.25 um/px = 150 x 210 working px = ceil(150 / STRIDE) x ceil(210 / STRIDE) map px, up-sampled 4x
    assert heat.dtype == np.float32 and heat.shape == (-(-150 // STRIDE) * 4, -(-210 // STRIDE) * 4)
    assert 0 <= heat.min() and heat.max() <= 1
    with tifffile.TiffFile(out) as tif:
        meta = json.loads(tif.pages[0].description)
    assert meta["level0_px_per_heatmap_px"] == pytest.approx(STRIDE / 2)
    peaks = pd.read_csv(csv)
    assert list(peaks.columns[:3]) == ["x", "y", "score"] and len(peaks) >= 1  # threshold 0: everything is one blob
    assert "heatmap" in capsys.readouterr().out


def test_heatmap_roi_as_png(tissue_png, tmp_path):
    out = tmp_path / "roi.png"
    assert main(["heatmap", str(tissue_png), "--mpp", "0.25", "--roi", "64,32,256,192", "--out", str(out)]) == 0
    # 256 x 192 level-0 px = 128 x 96 working px = 128 / STRIDE x 96 / STRIDE map px, up-sampled 4x
    assert imread(out).shape == (96 // STRIDE * 4, 128 // STRIDE * 4)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "--mpp"),
        (["--mpp", "0.25", "--roi", "0,0,10,10"], f"at least {MIN_INPUT} px"),
        (["--mpp", "0.25", "--roi", "9000,9000,50,50"], "outside the slide"),
    ],
)
def test_heatmap_bad_input_is_one_clear_line(tissue_png, tmp_path, capsys, args, message):
    rc = main(["heatmap", str(tissue_png), "--out", str(tmp_path / "x.tif"), *args])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and "\n" not in err and "Traceback" not in err


def test_heatmap_of_a_grey_image_is_refused(tmp_path, capsys):
    grey = tmp_path / "grey.png"
    imsave(grey, np.full((100, 100), 128, np.uint8), check_contrast=False)
    rc = main(["heatmap", str(grey), "--mpp", "0.25", "--out", str(tmp_path / "x.tif")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "RGB" in err and "\n" not in err


def _patches(root, n=12):
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        img = np.clip(rng.normal(200, 20, (64, 64, 3)), 0, 255).astype(np.uint8)
        if i % 2 == 0:
            img[20:30, 20:30] = (60, 30, 100)
        imsave(root / f"p{i}.png", img, check_contrast=False)
        rows.append({"image": f"p{i}.png", "label": "yes" if i % 2 == 0 else "no", "mpp": 0.5, "group": f"g{i % 5}"})
    pd.DataFrame(rows).to_csv(root / "patches.csv", index=False)
    return root


def test_train_mil_on_a_patch_folder_writes_weights_spec_and_card(tmp_path, capsys):
    data = _patches(tmp_path / "patches")
    out = tmp_path / "run"
    rc = main(["train", "mil", "--data", str(data), "--out", str(out), "--max-steps", "3", "--width", "8",
               "--batch", "8", "--no-normalize"])
    assert rc == 0
    spec = json.loads((out / "weights" / "mitosis-mil.json").read_text())
    assert spec["builder"] == "napari_mitosis.models.mil:build_mil" and spec["config"]["width"] == 8
    assert "train mil" in spec["training"]["command"]
    assert (out / "weights" / "mitosis-mil.pt").exists() and (out / "results.json").exists()
    assert "weights, spec and card" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("content", "message"),
    [("", "is empty"), ("image,label\n", "holds no patches"), ("image,label\np0.png,perhaps\n", "not yes/no")],
)
def test_train_mil_bad_label_file_is_one_clear_line(tmp_path, capsys, content, message):
    data = _patches(tmp_path / "patches", n=2)
    (data / "patches.csv").write_text(content)
    rc = main(["train", "mil", "--data", str(data), "--out", str(tmp_path / "run"), "--max-steps", "1"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and "\n" not in err
