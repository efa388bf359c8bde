"""cell-dense: the likelihood maps have the stride promised, and their peaks are candidates."""

import numpy as np
import torch

from napari_mitosis.models.dense_net import STRIDE, CellDense, build_cell_dense, dense_candidates, dense_probabilities


def test_maps_cover_any_image_size_at_a_quarter_resolution():
    net = build_cell_dense().eval()
    for h, w in ((64, 64), (70, 133), (9, 300)):
        p = dense_probabilities(net, np.full((h, w, 3), 200, np.uint8))
        assert p.shape == (2, -(-h // STRIDE), -(-w // STRIDE))
        assert ((p >= 0) & (p <= 1)).all()


def test_an_untrained_network_starts_with_rare_positives():
    net = CellDense().eval()
    with torch.no_grad():
        p = torch.sigmoid(net(torch.zeros(1, 3, 64, 64)))
    assert float(p.mean()) < 0.1  # the output bias: a likelihood map starts near empty


def test_candidates_are_peaks_above_their_class_threshold_merged_across_classes():
    p = np.zeros((2, 20, 20), np.float32)
    p[0, 5, 5] = 0.9  # a mitosis peak
    p[1, 5, 6] = 0.6  # the granulocyte map peaks on the same cell (4 um away): one candidate
    p[1, 15, 15] = 0.35  # a granulocyte
    p[0, 10, 2] = 0.2  # below the mitosis threshold
    xy, v = dense_candidates(p, (0.3, 0.3))
    assert len(xy) == 2
    assert np.allclose(xy[0], (5 * STRIDE + 1.5, 5 * STRIDE + 1.5))
    assert np.allclose(v[0], (0.9, 0.0)) and np.allclose(v[1], (0.0, 0.35))
    xy, _ = dense_candidates(p, (0.1, 0.5))  # a lower mitosis threshold lets the weak peak in,
    assert np.allclose(xy, [(21.5, 21.5), (9.5, 41.5)])  # a higher granulocyte one keeps the weak one out
