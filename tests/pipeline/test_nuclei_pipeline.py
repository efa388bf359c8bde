"""Tiled nucleus segmentation over slide regions: seams, scale, empty regions, bad input."""

from __future__ import annotations

import time

import numpy as np
import pytest

from napari_mitosis.core.nuclei import TABLE_COLUMNS, aggregated_jaccard_index, pixel_metrics
from napari_mitosis.core.synthetic import SyntheticHE
from napari_mitosis.io import open_slide
from napari_mitosis.pipeline import Progress
from napari_mitosis.pipeline.nuclei import (
    NucleiError,
    labels_at_level0,
    labels_layer_kwargs,
    segment_image,
    segment_nuclei,
    segment_task,
)


@pytest.fixture(scope="module")
def tissue05():
    """Synthetic tissue at the working pixel size (0.5 um/px) with its instance labels."""
    return SyntheticHE(shape=(300, 420), mpp=0.5, seed=5, tissue="full").render(0, 0, 300, 420)


def _match_fraction(a, b, iou=0.5):
    """Fraction of nuclei of ``a`` that have a partner in ``b`` with IoU above ``iou``."""
    from napari_mitosis.core.nuclei import panoptic_quality

    pq = panoptic_quality(a, b, iou)
    return pq["tp"] / max(1, pq["tp"] + pq["fn"]), pq


def test_log_tiled_equals_whole(tissue05):
    rgb, _ = tissue05
    whole, t_whole = segment_image(rgb, mpp=0.5, method="log", tile=512)
    tiled, t_tiled = segment_image(rgb, mpp=0.5, method="log", tile=64, halo=48)
    # the same nuclei, pixel for pixel (ids differ: they follow tile order)
    assert len(t_whole) == len(t_tiled) == whole.max() == tiled.max()
    frac, pq = _match_fraction(whole, tiled, iou=0.99)
    assert frac == 1.0 and pq["fp"] == 0
    assert np.array_equal(whole > 0, tiled > 0)


def test_unet_tiled_matches_whole_no_cut_or_doubled_nuclei():
    rgb, truth = SyntheticHE(shape=(192, 288), mpp=0.5, seed=9, tissue="full").render(0, 0, 192, 288)
    whole, _ = segment_image(rgb, mpp=0.5, method="unet", tile=512, device="cpu")
    tiled, table = segment_image(rgb, mpp=0.5, method="unet", tile=96, halo=48, device="cpu")
    assert len(table) == tiled.max() == len(np.unique(tiled)) - 1
    frac, pq = _match_fraction(whole, tiled, iou=0.8)
    assert frac > 0.97 and pq["fp"] <= 0.03 * pq["tp"]
    # nuclei crossing a seam are whole: each one on a seam line matches the whole-image nucleus
    seams = np.zeros(tiled.shape, bool)
    seams[96::96, :] = True
    seams[:, 96::96] = True
    on_seam = np.unique(tiled[seams & (tiled > 0)])
    assert on_seam.size > 10
    from napari_mitosis.core.nuclei import relabel

    sub = np.where(np.isin(tiled, on_seam), tiled, 0)
    f_seam, _ = _match_fraction(relabel(sub), whole, iou=0.8)
    assert f_seam > 0.95
    assert pixel_metrics(tiled, truth)["dice"] > 0.7


def test_rescales_by_pixel_size(tissue05):
    """The same tissue scanned at 0.25 um/px gives the same nuclei as at 0.5 um/px."""
    rgb, truth = tissue05
    big = np.repeat(np.repeat(rgb, 2, axis=0), 2, axis=1)
    labels, table = segment_image(big, mpp=0.25, method="log")
    assert labels.shape == rgb.shape[:2]  # labels come at the working 0.5 um/px
    assert table.attrs["downsample"] == pytest.approx(2.0)
    ref, _ = segment_image(rgb, mpp=0.5, method="log")
    assert aggregated_jaccard_index(ref, labels) > 0.8
    full = labels_at_level0(labels, table.attrs)
    assert full.shape == big.shape[:2]
    # centroids are reported in the input's (level-0) pixels and in um
    assert table.x.max() < big.shape[1] and table.x.max() > rgb.shape[1]
    assert np.allclose(table.x_um, table.x * 0.25)


def test_a_pixel_size_that_makes_nuclei_implausible_is_flagged(tissue05):
    import warnings

    from napari_mitosis.pipeline.nuclei import NucleiWarning

    rgb, _ = tissue05
    big = np.repeat(np.repeat(rgb, 2, axis=0), 2, axis=1)  # scanned at 0.25 um/px ...
    with pytest.warns(NucleiWarning, match="pixel size"):
        segment_image(big, mpp=0.5, method="log")  # ... but said to be 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("error", NucleiWarning)
        segment_image(big, mpp=0.25, method="log")


def test_wrong_or_missing_pixel_size_is_refused_with_a_clear_message(tmp_path):
    from skimage.io import imsave

    rgb = np.full((64, 64, 3), 200, np.uint8)
    with pytest.raises(NucleiError, match="outside .* um/px"):
        segment_image(rgb, mpp=8.0, method="log")
    path = tmp_path / "no_mpp.png"
    imsave(path, rgb, check_contrast=False)
    with open_slide(path) as slide, pytest.raises(NucleiError, match="--mpp"):
        segment_nuclei(slide, method="log")
    with pytest.raises(NucleiError, match="method"):
        segment_image(rgb, mpp=0.5, method="magic")


def test_empty_region_returns_empty_labels_quickly():
    glass = np.full((2048, 2048, 3), 243, np.uint8)
    t0 = time.perf_counter()
    labels, table = segment_image(glass, mpp=0.25, method="unet", device="cpu")
    assert time.perf_counter() - t0 < 5.0
    assert labels.max() == 0 and len(table) == 0 and list(table.columns) == TABLE_COLUMNS


def test_tiles_outside_the_tissue_mask_are_not_read(tissue05):
    from napari_mitosis.core.tissue import TissueMask

    rgb, _ = tissue05
    no_tissue = TissueMask(np.zeros((10, 10), bool), level=0, downsample=50.0, mpp=25.0)
    labels, table = segment_image(rgb, mpp=0.5, method="log", tissue=no_tissue)
    assert labels.max() == 0 and len(table) == 0


def test_region_of_a_slide_file_with_progress(synthetic_slide_file, synth):
    """A drawn rectangle on a pyramidal OME-TIFF: labels placed in um, centroids near the true cells."""
    roi = (600, 300, 500, 400)  # x, y, w, h in level-0 px (0.25 um/px)
    seen = []
    with open_slide(synthetic_slide_file) as slide:
        task = segment_task(slide, roi=roi, method="unet", device="cpu", tile=128)
        while True:
            try:
                seen.append(next(task))
            except StopIteration as stop:
                labels, table = stop.value
                break
    assert all(isinstance(p, Progress) for p in seen) and seen[-1].fraction == 1.0
    assert labels.shape == (200, 250)
    kw = labels_layer_kwargs(table.attrs)
    assert kw["scale"] == (0.5, 0.5)
    assert kw["translate"] == pytest.approx(((300 + 0.5) * 0.25, (600 + 0.5) * 0.25))
    assert table.x.between(600 - 0.5, 1100).all() and table.y.between(300 - 0.5, 700).all()
    cells = synth.cells(300, 600, 400, 500)
    cells = cells[(cells.x > 610) & (cells.x < 1090) & (cells.y > 310) & (cells.y < 690)]
    found = [np.hypot(table.x - c.x, table.y - c.y).min() < 12 for c in cells.itertuples()]  # 3 um
    assert np.mean(found) > 0.8


def test_a_whole_slide_label_image_too_large_for_memory_is_refused():
    import dask.array as da

    from napari_mitosis.io.slide import Slide

    huge = Slide(path="huge.svs", levels=[da.zeros((200_000, 100_000, 3), np.uint8, chunks=(4096, 4096, 3))], mpp=0.25)
    with pytest.raises(NucleiError, match="smaller region"):
        segment_nuclei(huge, method="log")


def test_roi_outside_the_slide_is_refused(synthetic_slide_file):
    with open_slide(synthetic_slide_file) as slide, pytest.raises(NucleiError, match="outside the slide"):
        segment_nuclei(slide, roi=(10**6, 0, 100, 100), method="log")
