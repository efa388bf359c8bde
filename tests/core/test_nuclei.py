"""Nucleus segmentation building blocks: deconvolution, LoG baseline, watershed, table, metrics."""

from __future__ import annotations

import numpy as np
import pytest

from napari_mitosis.core.nuclei import (
    TABLE_COLUMNS,
    aggregated_jaccard_index,
    check_rgb,
    hematoxylin_od,
    instances_to_classes,
    log_nuclei,
    nuclei_table,
    panoptic_quality,
    pixel_metrics,
    probabilities_to_instances,
    segmentation_metrics,
)
from napari_mitosis.core.stain import EOSIN, HEMATOXYLIN, render_stains
from napari_mitosis.core.synthetic import SyntheticHE


def disc(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def two_touching_nuclei(shape=(60, 80), r=9, gap=16):
    """Two hematoxylin discs whose edges overlap, on pale eosin; 0.5 um/px."""
    a = disc(shape, 30, 40 - gap / 2, r)
    b = disc(shape, 30, 40 + gap / 2, r)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    # darker towards each centre, like chromatin; a notch where they meet
    h = np.zeros(shape)
    for cx in (40 - gap / 2, 40 + gap / 2):
        d = np.hypot(yy - 30, xx - cx)
        h = np.maximum(h, np.clip(1.2 - 0.5 * d / r, 0, None) * (d <= r))
    e = np.full(shape, 0.3)
    rgb = render_stains([h, e], [HEMATOXYLIN, EOSIN])
    truth = np.zeros(shape, np.int32)
    truth[a] = 1
    truth[b & ~a] = 2
    return rgb, truth


def test_hematoxylin_od_separates_the_stains():
    glass = np.full((4, 4, 3), 245, np.uint8)
    assert np.allclose(hematoxylin_od(glass), 0)
    h_only = render_stains([np.full((4, 4), 0.8), np.zeros((4, 4))], [HEMATOXYLIN, EOSIN])
    e_only = render_stains([np.zeros((4, 4)), np.full((4, 4), 0.8)], [HEMATOXYLIN, EOSIN])
    assert np.allclose(hematoxylin_od(h_only), 0.8, atol=0.03)
    assert hematoxylin_od(e_only).max() < 0.05


def test_check_rgb_explains_bad_input():
    with pytest.raises(ValueError, match="RGB image"):
        check_rgb(np.zeros((4, 4, 5)))
    with pytest.raises(ValueError, match="NaN"):
        check_rgb(np.full((2, 2, 3), np.nan))
    assert check_rgb(np.zeros((3, 3, 4), np.uint8)).shape == (3, 3, 3)


def test_log_separates_two_touching_nuclei():
    rgb, truth = two_touching_nuclei()
    labels = log_nuclei(rgb, mpp=0.5)
    assert labels.max() == 2
    assert labels[30, 40 - 8] != labels[30, 40 + 8]
    assert aggregated_jaccard_index(truth, labels) > 0.7


def test_watershed_separates_touching_nuclei_along_predicted_boundary():
    _, truth = two_touching_nuclei()
    classes = instances_to_classes(truth)
    probs = np.stack([(classes == k).astype(np.float32) for k in range(3)])
    labels = probabilities_to_instances(probs, mpp=0.5)
    assert labels.max() == 2
    assert panoptic_quality(truth, labels)["dq"] == 1.0
    assert aggregated_jaccard_index(truth, labels) > 0.9


def test_instances_to_classes_marks_shared_boundaries():
    lab = np.zeros((6, 10), np.int32)
    lab[1:5, 1:5], lab[1:5, 5:9] = 1, 2
    c = instances_to_classes(lab)
    assert set(np.unique(c)) == {0, 1, 2}
    assert c[2, 4] == 2 and c[2, 5] == 2  # where the two touch
    assert c[0, 0] == 0


def test_log_on_synthetic_tissue_finds_the_nuclei():
    synth = SyntheticHE(shape=(240, 240), mpp=0.5, seed=3, tissue="full")
    rgb, truth = synth.render(0, 0, 240, 240)
    labels = log_nuclei(rgb, mpp=0.5)
    m = segmentation_metrics(truth, labels)
    assert m["dice"] > 0.7
    assert m["aji"] > 0.4
    assert 0.6 < labels.max() / (len(np.unique(truth)) - 1) < 1.5


def test_empty_and_glass_give_no_nuclei():
    glass = np.full((64, 64, 3), 245, np.uint8)
    assert log_nuclei(glass, mpp=0.5).max() == 0
    probs = np.zeros((3, 32, 32), np.float32)
    probs[0] = 1
    assert probabilities_to_instances(probs).max() == 0


def test_log_refuses_a_bad_pixel_size():
    with pytest.raises(ValueError, match="pixel size"):
        log_nuclei(np.zeros((8, 8, 3), np.uint8), mpp=0)


def test_nuclei_table_measures_in_micrometres():
    lab = np.zeros((40, 40), np.int32)
    lab[disc(lab.shape, 20, 10, 6)] = 3
    yy, xx = np.mgrid[:40, :40]
    lab[((yy - 20) / 4) ** 2 + ((xx - 30) / 8) ** 2 <= 1] = 7
    h = np.where(lab == 3, 1.0, 0.5).astype(np.float32)
    t = nuclei_table(lab, mpp=0.5, origin=(1000, 2000), downsample=2.0, hematoxylin=h)
    assert list(t.columns) == TABLE_COLUMNS
    circle, ellipse = t.set_index("id").loc[3], t.set_index("id").loc[7]
    assert circle.x == pytest.approx(1000 + 10.5 * 2 - 0.5)
    assert circle.y == pytest.approx(2000 + 20.5 * 2 - 0.5)
    assert circle.x_um == pytest.approx(circle.x * 0.25)
    assert circle.area_um2 == pytest.approx(np.pi * 6**2 * 0.25, rel=0.1)
    assert circle.eccentricity < 0.2 < ellipse.eccentricity
    assert circle.mean_hematoxylin_od == pytest.approx(1.0)
    assert ellipse.mean_hematoxylin_od == pytest.approx(0.5)
    empty = nuclei_table(np.zeros((5, 5), np.int32))
    assert len(empty) == 0 and list(empty.columns) == TABLE_COLUMNS


def test_pixel_metrics_match_their_definitions():
    truth = np.zeros((10, 10), bool)
    truth[:5] = True
    pred = np.zeros((10, 10), bool)
    pred[:4] = True
    pred[9, :5] = True
    m = pixel_metrics(pred, truth)  # TP 40, FN 10, FP 5, TN 45
    assert m["sensitivity"] == pytest.approx(40 / 50)
    assert m["specificity"] == pytest.approx(45 / 50)
    assert m["dice"] == pytest.approx(80 / 95)
    assert m["jaccard"] == pytest.approx(40 / 55)
    with pytest.raises(ValueError, match="shape"):
        pixel_metrics(pred, truth[:5])


def test_instance_metrics_punish_merges_and_splits():
    _, truth = two_touching_nuclei()
    assert aggregated_jaccard_index(truth, truth) == 1.0
    assert panoptic_quality(truth, truth)["pq"] == 1.0
    merged = (truth > 0).astype(np.int32)
    assert aggregated_jaccard_index(truth, merged) < 0.6
    assert panoptic_quality(truth, merged)["tp"] <= 1
    # pixel Dice cannot see the merge; the instance metrics can
    assert pixel_metrics(merged, truth)["dice"] == 1.0
    empty = np.zeros_like(truth)
    assert aggregated_jaccard_index(truth, empty) == 0.0
    assert panoptic_quality(truth, empty)["pq"] == 0.0
    assert aggregated_jaccard_index(empty, empty) == 1.0
