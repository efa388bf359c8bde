import numpy as np
import pytest
from skimage.draw import disk, line

from napari_mitosis.core.synthetic import SyntheticHE
from napari_mitosis.core.tissue import TissueMask, tissue_mask


def _overview(shape=(4096, 4096), seed=0, ds=16):
    s = SyntheticHE(shape=shape, seed=seed)
    from skimage.transform import downscale_local_mean

    rgb = np.concatenate([s.render(y, 0, 512, shape[1])[0] for y in range(0, shape[0], 512)])
    small = downscale_local_mean(rgb, (ds, ds, 1)).astype(np.uint8)
    return s, small


@pytest.mark.slow
def test_mask_matches_the_synthetic_tissue():
    s, small = _overview()
    mask = tissue_mask(small, mpp=0.25 * 16)
    truth = s.tissue_truth(16)
    iou = (mask & truth).sum() / (mask | truth).sum()
    assert iou > 0.85


def test_pen_marks_and_dark_edges_are_not_tissue():
    img = np.full((200, 300, 3), 242, np.uint8)
    rr, cc = disk((100, 100), 50)
    img[rr, cc] = (205, 130, 180)  # tissue
    for k in range(6):  # green and blue marker strokes on the glass
        rr, cc = line(20 + k, 170, 180 + k, 290)
        img[rr, cc] = (40, 150, 60)
        rr, cc = line(20 + k, 290, 180 + k, 170)
        img[rr, cc] = (40, 60, 170)
    img[:, :8] = 25  # dark slide edge
    mask = tissue_mask(img, mpp=8.0, min_tissue_um2=2000)
    assert mask[100, 100]
    assert not mask[:, 160:].any()
    assert not mask[:, :8].any()


def test_blank_glass_has_no_tissue():
    img = np.full((100, 100, 3), 240, np.uint8) + np.random.default_rng(0).integers(0, 4, (100, 100, 3)).astype(np.uint8)
    assert not tissue_mask(img, mpp=8.0).any()


def test_area_and_fraction():
    tm = TissueMask(np.ones((10, 20), bool), level=2, downsample=32.0, mpp=8.0)
    assert tm.area_mm2 == 10 * 20 * 64 / 1e6
    assert tm.fraction == 1.0
    assert TissueMask(np.ones((2, 2), bool), 0, 1.0, None).area_mm2 is None
