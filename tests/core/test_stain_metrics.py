import numpy as np

from napari_mitosis.core.stain_metrics import delta_e, hellinger, histogram_correlation, histograms, structure_ssim


def test_identical_images_score_perfectly():
    img = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    assert histogram_correlation(img, img) == 1.0
    assert hellinger(img, img) < 1e-6
    assert delta_e(img, img) == 0.0
    assert structure_ssim(img, img) == 1.0


def test_disjoint_colours_score_worst():
    a = np.zeros((20, 20, 3), np.uint8)
    b = np.full((20, 20, 3), 255, np.uint8)
    assert hellinger(a, b) == 1.0
    assert delta_e(a, b) > 99  # black vs white: L from 0 to 100


def test_histograms_sum_to_one():
    h = histograms(np.random.default_rng(1).integers(0, 256, (10, 10, 3), dtype=np.uint8))
    assert h.shape == (3, 256)
    np.testing.assert_allclose(h.sum(axis=1), 1.0)
