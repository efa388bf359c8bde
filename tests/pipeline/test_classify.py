"""Cell classification with the shipped GSTN: crops and slide points, real and synthetic, and bad input."""

import numpy as np
import pandas as pd
import pytest

from napari_mitosis.core.synthetic import SyntheticHE
from napari_mitosis.models.registry import list_models, load_model
from napari_mitosis.pipeline import run
from napari_mitosis.pipeline.classify import (
    ClassifyError,
    check_crop,
    classify_crops_task,
    classify_points_task,
    list_crops,
)
from tests.conftest import shared_file

CLASSES = ["mitotic_figure", "granulocyte", "other"]


def test_shipped_weights_load_with_their_spec():
    assert {"cell-gstn", "cell-cnn-baseline"} <= set(list_models("classification"))
    net, spec = load_model("cell-gstn", device="cpu")
    assert spec.mpp == 0.25 and spec.patch_size == 128 and spec.classes == CLASSES
    assert 0 < spec.thresholds["mitotic_figure"] < 1
    assert "command" in spec.training and "accuracy" in spec.metrics


@pytest.fixture(scope="module")
def synthetic_cells():
    """128 px crops around synthetic mitotic figures and tumour nuclei (0.25 um/px)."""
    synth = SyntheticHE(shape=(1200, 1200), seed=3, tissue="full", mitosis_fraction=0.25)
    rgb, _ = synth.render(0, 0, 1200, 1200)
    cells = synth.cells()
    cells = cells[(cells.x > 70) & (cells.y > 70) & (cells.x < 1130) & (cells.y < 1130)]
    mit = cells[cells.type == "mitotic_figure"].head(24)
    tum = cells[cells.type == "tumour"].head(24)
    crops, labels = [], []
    for label, df in ((1, mit), (0, tum)):
        for x, y in zip(df.x.round().astype(int), df.y.round().astype(int)):
            crops.append(rgb[y - 64 : y + 64, x - 64 : x + 64])
            labels.append(label)
    return rgb, pd.concat([mit, tum]), crops, np.array(labels)


def test_synthetic_mitoses_score_higher_than_tumour_nuclei(synthetic_cells):
    _, _, crops, labels = synthetic_cells
    df = run(classify_crops_task(crops, mpp=0.25, device="cpu"))
    assert list(df.columns) == ["file", "p_mitotic_figure", "p_granulocyte", "p_other", "class", "x", "y", "shift_um"]
    np.testing.assert_allclose(df[["p_mitotic_figure", "p_granulocyte", "p_other"]].sum(1), 1, atol=1e-4)
    p = df.p_mitotic_figure.to_numpy()
    # rank statistic (AUC): a synthetic mitosis outranks a synthetic tumour nucleus (never trained on these)
    auc = (p[labels == 1][:, None] > p[labels == 0][None, :]).mean()
    assert auc > 0.8, auc
    called = (df["class"] == "mitotic_figure").to_numpy()
    assert called[labels == 1].mean() > 0.7 and called[labels == 0].mean() < 0.3


def _held_out(prefix):
    """Groups (slides, images) the shipped model was tested on, never trained on."""
    _, spec = load_model("cell-gstn", device="cpu")
    groups = [g.split("/", 1)[1] for g in spec.training.get("test_groups", []) if g.startswith(prefix + "/")]
    if not groups:
        pytest.skip(f"the shipped model records no held-out {prefix} groups")
    return groups


def test_real_held_out_crops_mitoses_vs_other_nuclei():
    """AMi-Br mitoses (one per held-out slide) and MoNuSeg nuclei (held-out images): a reasonable accuracy."""
    from skimage.io import imread

    from napari_mitosis.training.cell_data import label_centroids

    labels = shared_file("mitosis", "amibr_midog21", "labels.csv")
    monuseg = shared_file("nuclei", "monuseg_train")
    df = pd.read_csv(labels)
    df = df[df.slide.isin(_held_out("amibr"))].groupby("slide").head(1)
    res = run(classify_crops_task([labels.parent / f for f in df.file], mpp=0.25, device="cpu"))
    assert len(res) >= 10
    assert (res["class"] == "mitotic_figure").mean() > 0.8
    assert res.shift_um.median() < 3  # the localizer stays on the centred mitosis
    crops = []
    for name in _held_out("monuseg")[:4]:
        img = imread(monuseg / "images" / f"{name}.jpg")
        c = label_centroids(monuseg / "masks" / f"{name}.png")
        c = c[(c.min(1) > 64) & (c.max(1) < min(img.shape[:2]) - 64)]
        for x, y in np.round(c[:: max(len(c) // 8, 1)][:8]).astype(int):
            crops.append(img[y - 64 : y + 64, x - 64 : x + 64])
    other = run(classify_crops_task(crops, mpp=0.25, device="cpu"))
    assert (other["class"] == "other").mean() > 0.7


def test_points_on_a_slide_give_level0_positions_near_the_cells(synthetic_slide_file, synth):
    cells = synth.cells()
    cells = cells[(cells.x > 80) & (cells.y > 80)].head(12)
    pts = pd.DataFrame({"id": cells.id, "x": cells.x, "y": cells.y})
    df = run(classify_points_task(synthetic_slide_file, pts, device="cpu"))
    assert list(df.id) == list(cells.id)
    assert df[["x", "y"]].notna().all().all()
    # the localizer's cell lies within the 32 um field of the point
    assert (df.shift_um < 23).all()


def test_points_at_another_pixel_size_are_rescaled(synthetic_cells, tmp_path):
    rgb, cells, _, _ = synthetic_cells
    from skimage.io import imsave
    from skimage.transform import rescale

    half = (rescale(rgb, 0.5, channel_axis=2, anti_aliasing=True) * 255).astype(np.uint8)
    path = tmp_path / "half.png"
    imsave(path, half, check_contrast=False)
    c = cells.head(6)
    a = run(classify_points_task(path, pd.DataFrame({"x": c.x / 2, "y": c.y / 2}), mpp=0.5, device="cpu"))
    assert len(a) == 6 and (a.shift_um < 23).all()
    with pytest.raises(ClassifyError, match="pixel size unknown"):
        run(classify_points_task(path, pd.DataFrame({"x": [10], "y": [10]}), device="cpu"))


def test_bad_input_is_refused_clearly(tmp_path, synthetic_slide_file):
    rgb = np.zeros((128, 128, 3), np.uint8)
    with pytest.raises(ClassifyError, match="covers 16.0 um.*needs 32 um"):
        check_crop(np.zeros((64, 64, 3), np.uint8), 0.25)
    with pytest.raises(ClassifyError, match="covers 64.0 um"):
        check_crop(rgb, 0.5)
    with pytest.raises(ClassifyError, match="must be square"):
        check_crop(np.zeros((128, 100, 3), np.uint8), 0.25)
    with pytest.raises(ClassifyError, match="greyscale"):
        check_crop(np.zeros((128, 128), np.uint8), 0.25)
    assert check_crop(np.zeros((64, 64, 4), np.uint8), 0.5).shape == (64, 64, 3)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ClassifyError, match="holds no crops"):
        list_crops(tmp_path / "empty")
    with pytest.raises(ClassifyError, match="no such file"):
        list_crops(tmp_path / "nope")
    with pytest.raises(ClassifyError, match=r"2 point\(s\) lie outside the 1700 x 1100 px image \(ids 7, 8\)"):
        run(classify_points_task(synthetic_slide_file, pd.DataFrame({"id": [6, 7, 8], "x": [10, -5, 1800], "y": [10, 10, 10]}),
                                 device="cpu"))
    with pytest.raises(ClassifyError, match="needs columns x and y"):
        run(classify_points_task(synthetic_slide_file, pd.DataFrame({"col": [1]}), device="cpu"))


def test_the_mitosis_threshold_is_an_operating_point():
    from napari_mitosis.core.decision import classify_by_thresholds as decide

    p = np.array([[0.5, 0.2, 0.3], [0.7, 0.1, 0.2], [0.4, 0.5, 0.1], [0.2, 0.1, 0.7]])
    assert decide(p, CLASSES).tolist() == [0, 0, 1, 2]
    # below the threshold a mitosis is never called, whatever the argmax says
    assert decide(p, CLASSES, {"mitotic_figure": 0.59}).tolist() == [2, 0, 1, 2]
    assert decide(p, CLASSES, {"mitotic_figure": 0.3}).tolist() == [0, 0, 0, 2]
