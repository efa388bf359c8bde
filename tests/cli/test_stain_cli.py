import json

import numpy as np
import pytest
from PIL import Image

from napari_mitosis.cli import main
from napari_mitosis.core.stain_metrics import delta_e
from napari_mitosis.core.synthetic import synthetic_he


@pytest.fixture(scope="module")
def ref_png(tmp_path_factory):
    path = tmp_path_factory.mktemp("ref") / "reference.png"
    rgb = synthetic_he((256, 256), seed=9, tissue="full", eosin=(0.05, 0.95, 0.3), stain_strength=1.3)[0]
    Image.fromarray(rgb).save(path)
    return path


@pytest.mark.parametrize("method", ["reinhard", "macenko"])
def test_normalize_a_slide_region(method, synthetic_slide_file, ref_png, tmp_path, capsys):
    out = tmp_path / "norm.png"
    saved = tmp_path / "norm.json"
    code = main(
        ["normalize", str(synthetic_slide_file), "--target", str(ref_png), "--method", method,
         "--roi", "100,200,600,400", "--out", str(out), "--save", str(saved)]
    )  # fmt: skip
    assert code == 0
    img = np.asarray(Image.open(out))
    assert img.shape == (400, 600, 3)
    ref = np.asarray(Image.open(ref_png))
    from napari_mitosis.io import open_slide

    with open_slide(synthetic_slide_file) as slide:
        before = slide.read_region(0, 100, 200, 600, 400)
    assert delta_e(img, ref) < delta_e(before, ref)
    assert json.loads(saved.read_text())["method"] == method
    # the saved normaliser is a valid --target and gives the same result
    again = tmp_path / "again.png"
    assert main(["normalize", str(synthetic_slide_file), "--target", str(saved), "--roi", "100,200,600,400", "--out", str(again)]) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(again)), img)


def test_normalize_writes_tiff_at_a_coarser_level(synthetic_slide_file, ref_png, tmp_path):
    import tifffile

    out = tmp_path / "level1.tif"
    assert main(["normalize", str(synthetic_slide_file), "--target", str(ref_png), "--level", "1", "--out", str(out)]) == 0
    with tifffile.TiffFile(out) as tf:
        assert tf.pages[0].shape == (550, 850, 3)
        assert tf.pages[0].tags["XResolution"].value[0] / tf.pages[0].tags["XResolution"].value[1] == pytest.approx(1e4 / 0.5)


def test_normalize_bad_input(synthetic_slide_file, ref_png, tmp_path, capsys):
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((200, 200, 3), 250, np.uint8)).save(blank)
    assert main(["normalize", str(synthetic_slide_file), "--target", str(blank), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "no tissue" in err and "Error" not in err  # a message, not an exception name
    assert main(["normalize", str(synthetic_slide_file), "--method", "macenko", "--out", str(tmp_path / "x.png")]) == 2
    assert "needs --target" in capsys.readouterr().err
    assert main(["normalize", str(synthetic_slide_file), "--target", str(ref_png), "--roi", "1,2,3", "--out", str(tmp_path / "x.png")]) == 2
    assert "--roi must be x,y,w,h" in capsys.readouterr().err


def test_normalize_with_the_shipped_neural_style(synthetic_slide_file, tmp_path):
    out = tmp_path / "neural.png"
    assert main(["normalize", str(synthetic_slide_file), "--method", "neural", "--device", "cpu", "--roi", "600,350,512,384", "--out", str(out)]) == 0
    img = np.asarray(Image.open(out))
    assert img.shape == (384, 512, 3)
    from napari_mitosis.io import open_slide

    with open_slide(synthetic_slide_file) as slide:
        before = slide.read_region(0, 600, 350, 512, 384)
    assert np.abs(img.astype(int) - before).mean() > 3  # recoloured
