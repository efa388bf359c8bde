"""Clinical counts: per 2.37 mm², per mm² of tissue, and the hotspot."""

import numpy as np
import pytest

from napari_mitosis.core.counting import (
    HPF_AREA_MM2,
    analysed_mask,
    count_table,
    find_hotspot,
    hpf_rect_um,
    review_counts,
)


def test_hotspot_window_is_2_37_mm2_at_4_to_3():
    w, h = hpf_rect_um()
    assert w * h / 1e6 == pytest.approx(HPF_AREA_MM2)
    assert w / h == pytest.approx(4 / 3)


def test_hotspot_finds_the_dense_cluster_not_the_scattered_mitoses():
    rng = np.random.default_rng(0)
    mpp, ds = 0.25, 64  # mask pixel = 16 um
    mask = np.ones((1000, 1000), bool)  # 16 x 16 mm of tissue
    scattered = rng.uniform(0, 64000, (30, 2))
    cluster = rng.normal((40000, 20000), 1000, (12, 2))  # 12 mitoses within ~0.5 mm
    hs = find_hotspot(np.vstack([scattered, cluster]), mask, ds, mpp)
    assert hs.count >= 12
    assert hs.contains(cluster).all()
    assert hs.width * mpp == pytest.approx(hpf_rect_um()[0], rel=0.02)


def test_hotspot_must_lie_on_tissue():
    mpp, ds = 0.25, 64
    mask = np.zeros((600, 600), bool)
    mask[300:, 300:] = True  # tissue in the lower right quarter only
    on_glass = np.array([[1000, 1000]] * 5, float)  # five "mitoses" on glass, top left
    on_tissue = np.array([[30000, 30000], [30500, 30200]], float)
    hs = find_hotspot(np.vstack([on_glass, on_tissue]), mask, ds, mpp)
    assert hs.count == 2 and hs.contains(on_tissue).all()


def test_small_biopsy_smaller_than_the_window_is_clipped_and_extrapolated():
    mask = np.zeros((50, 50), bool)
    mask[10:30, 10:30] = True  # 20 x 20 mask px at 16 um = 0.1 mm²
    hs = find_hotspot([[1000, 1000]], mask, 64, 0.25)
    assert hs.clipped and hs.count == 1
    rows = count_table(["mitotic_figure"], hs.tissue_mm2, hs, [[1000, 1000]])
    assert rows[0]["hotspot_per_2.37mm2"] == pytest.approx(HPF_AREA_MM2 / hs.tissue_mm2)


def test_counts_per_area_only_over_the_analysed_tissue():
    mask = np.ones((100, 100), bool)  # 1 mask px = 100 level-0 px = 25 um
    xy = [[150, 150], [250, 250], [5000, 5000]]
    rows, _hs, area = review_counts(xy, ["mitotic_figure", "granulocyte", "mitotic_figure"], mask, 100, 0.25,
                                   regions=[(0, 0, 1000, 1000)])
    assert area == pytest.approx(10 * 10 * 0.025**2)  # 10 x 10 mask px analysed
    mf, gr = rows
    assert (mf["count"], gr["count"]) == (2, 1)  # counts are of the review; the area is what was analysed
    assert mf["per_mm2"] == pytest.approx(2 / area)
    assert analysed_mask((4, 4), 100, [None]).all()


def test_no_tissue_no_hotspot():
    assert find_hotspot([[1, 1]], np.zeros((10, 10), bool), 10, 0.25) is None
    with pytest.raises(ValueError, match="2-D"):
        find_hotspot([[1, 1]], np.zeros((2, 2, 2), bool), 10, 0.25)
