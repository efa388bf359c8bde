"""HoVer distance maps and their watershed: touching nuclei become two labels."""

from __future__ import annotations

import numpy as np

from napari_mitosis.core.nuclei import aggregated_jaccard_index, hover_targets, hover_to_instances


def _two_touching_discs(r=7, gap=0):
    yy, xx = np.mgrid[:30, :50]
    lab = np.zeros((30, 50), np.int32)
    a = (yy - 15) ** 2 + (xx - 17) ** 2 < r * r
    b = (yy - 15) ** 2 + (xx - (17 + 2 * r - 1 + gap)) ** 2 < r * r
    lab[a] = 1
    lab[b & ~a] = 2
    return lab


def _maps(lab, rng=None):
    m = np.zeros((5,) + lab.shape, np.float32)
    m[0], m[1] = lab == 0, lab > 0
    m[3:] = hover_targets(lab)
    if rng is not None:  # a network is never exact
        m[3:] = np.clip(m[3:] + rng.normal(0, 0.1, m[3:].shape), -1, 1)
        m[:3] = np.clip(m[:3] + rng.normal(0, 0.05, m[:3].shape), 0, 1)
    return m


def test_touching_discs_without_boundary_become_two_nuclei():
    lab = _two_touching_discs()
    assert len(np.unique(lab)) == 3
    # the foreground alone is one connected blob: only the h/v maps can split it
    from scipy import ndimage as ndi

    assert ndi.label(lab > 0)[1] == 1
    out = hover_to_instances(_maps(lab, np.random.default_rng(0)), mpp=0.5)
    assert out.max() == 2
    assert aggregated_jaccard_index(lab, out) > 0.8


def test_targets_point_away_from_each_centroid():
    lab = _two_touching_discs()
    hv = hover_targets(lab)
    assert hv.min() >= -1 and hv.max() <= 1
    assert hv[0, 15, 12] < 0 < hv[0, 15, 22]  # left / right of the first nucleus's centre
    assert hv[1, 10, 17] < 0 < hv[1, 20, 17]  # above / below
    assert (hv[:, lab == 0] == 0).all()


def test_empty_maps_give_no_nuclei():
    m = np.zeros((5, 12, 12), np.float32)
    m[0] = 1
    assert hover_to_instances(m).max() == 0
