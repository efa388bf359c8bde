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


def test_the_half_stride_design_gives_maps_at_the_same_pixel_size_from_a_coarser_input():
    # out_stride=2 runs on 1.0 um/px input: a tile of the same area has half the side, and the
    # maps come out the same size as the 0.5 um/px design's.
    fine, coarse = build_cell_dense().eval(), build_cell_dense(out_stride=2).eval()
    assert coarse.stride == 2
    img = np.full((128, 96, 3), 200, np.uint8)
    p4 = dense_probabilities(fine, img)
    p2 = dense_probabilities(coarse, img[::2, ::2], stride=2)
    assert p4.shape == p2.shape == (2, 32, 24)
    for h, w in ((70, 133), (9, 300)):
        assert dense_probabilities(coarse, np.full((h, w, 3), 200, np.uint8), stride=2).shape == (2, -(-h // 2), -(-w // 2))


def test_half_stride_candidates_are_in_input_pixels_and_merge_at_4_um():
    p = np.zeros((2, 20, 20), np.float32)
    p[0, 5, 5] = 0.9
    p[1, 5, 6] = 0.6  # 2 um away: one candidate
    p[1, 5, 8] = 0.5  # 6 um away from the mitosis peak: its own candidate
    xy, v = dense_candidates(p, (0.3, 0.3), stride=2)
    assert np.allclose(xy, [(10.5, 10.5), (16.5, 10.5)])
    assert np.allclose(v[:, 0], (0.9, 0.0))


def test_an_unknown_stride_is_refused():
    import pytest

    with pytest.raises(ValueError, match="out_stride"):
        CellDense(out_stride=3)
