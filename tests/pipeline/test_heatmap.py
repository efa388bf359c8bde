"""The lazy mitosis heatmap over a slide region (pipeline/heatmap.py) with the shipped ``mitosis-mil``."""

from __future__ import annotations

import numpy as np
import pytest

from napari_mitosis.core.synthetic import SyntheticHE
from napari_mitosis.io import open_slide
from napari_mitosis.pipeline.heatmap import (
    HeatmapError,
    HeatmapResult,
    compute_heatmap,
    heatmap_image,
    heatmap_peaks,
    heatmap_task,
)
from napari_mitosis.pipeline.progress import run
from napari_mitosis.plugin.layers import heatmap_layer_data
from tests.conftest import shared_file, shipped_mil_geometry

STRIDE, MIN_INPUT = shipped_mil_geometry()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tissue():
    rgb, _ = SyntheticHE(shape=(400, 560), mpp=0.25, seed=3, tissue="full").render(0, 0, 400, 560)
    return rgb


def test_heatmap_of_an_image_covers_it_and_is_a_probability(tissue):
    res = heatmap_image(tissue, mpp=0.25, device="cpu")
    heat, attrs = res
    assert heat.dtype == np.float32 and heat.ndim == 2
    assert float(heat.min()) >= 0 and float(heat.max()) <= 1
    # 0.25 um/px -> 0.5 um/px working; one map px = STRIDE working px; up-sampled 4x: STRIDE / 2 level-0 px per heatmap px
    assert attrs["downsample"] == pytest.approx(STRIDE / 2) and attrs["mpp"] == pytest.approx(STRIDE / 8)
    assert heat.shape == (int(np.ceil(200 / STRIDE)) * 4, int(np.ceil(280 / STRIDE)) * 4)
    assert attrs["origin"] == (0, 0) and attrs["stain_normalised"]
    assert 0 < attrs["threshold"] < 1


def test_tiles_with_halo_stitch_into_the_whole_region_map(tissue):
    whole = heatmap_image(tissue, mpp=0.25, device="cpu", tile=512, upsample=1, normalize=False).heatmap
    tiled = heatmap_image(tissue, mpp=0.25, device="cpu", tile=128, halo=64, upsample=1, normalize=False).heatmap
    assert whole.shape == tiled.shape
    assert np.abs(whole - tiled).max() < 0.05


def test_region_of_a_slide_file_with_progress_and_level0_geometry(synthetic_slide_file):
    seen = []
    with open_slide(synthetic_slide_file) as slide:
        res = run(heatmap_task(slide, roi=(256, 128, 600, 400), device="cpu"), seen.append)
    assert seen and seen[-1].done == seen[-1].total
    assert res.attrs["origin"] == (256, 128) and res.attrs["shape"] == (400, 600)
    data, kwargs, kind = heatmap_layer_data(res)
    assert kind == "image" and data is res.heatmap
    d, m0 = res.attrs["downsample"], res.attrs["level0_mpp"]
    # heatmap pixel (0, 0) is centred on level-0 (x0 + (d - 1) / 2, y0 + (d - 1) / 2), in um
    assert kwargs["translate"] == pytest.approx(((128 + (d - 1) / 2) * m0, (256 + (d - 1) / 2) * m0))
    assert kwargs["scale"] == pytest.approx((d * m0, d * m0))
    assert kwargs["colormap"] and 0 < kwargs["opacity"] < 1 and kwargs["blending"] == "additive"
    import napari

    layer = napari.layers.Image(data, **kwargs)
    assert layer.data.shape == data.shape


def test_all_tissue_skips_glass(tissue):
    from pathlib import Path

    import dask.array as da

    from napari_mitosis.io.slide import Slide

    canvas = np.full((400, 1200, 3), 243, np.uint8)
    canvas[:, :560] = tissue
    # at 0.5 um/px the tissue (200 x 280 um) is above the tissue detector's smallest piece (20,000 um2)
    slide = Slide(path=Path("<array>"), levels=[da.from_array(canvas, chunks=(512, 512, 3))], mpp=0.5, format="image")
    res = compute_heatmap(slide, device="cpu", tile=128, all_tissue=True)
    heat = res.heatmap
    right = heat[:, int(800 / res.attrs["downsample"]):]
    assert right.max() == 0.0 and heat.max() > 0


def test_peaks_are_level0_candidates_with_scores():
    heat = np.zeros((40, 40), np.float32)
    heat[10:14, 20:24] = 0.9
    heat[30:32, 5:7] = 0.6
    res = HeatmapResult(heat, {"origin": (1000, 2000), "downsample": 8.0, "level0_mpp": 0.25, "threshold": 0.5})
    peaks = heatmap_peaks(res)
    assert list(peaks.columns[:3]) == ["x", "y", "score"] and len(peaks) == 2
    assert peaks.iloc[0].tolist()[:3] == pytest.approx([1000 + 22 * 8 - 0.5, 2000 + 12 * 8 - 0.5, 0.9])
    assert len(heatmap_peaks(res, threshold=0.95)) == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"roi": (5000, 5000, 10, 10)}, "outside the slide"),
        ({"roi": (0, 0, 10, 10)}, f"at least {MIN_INPUT} px"),
        ({"mpp": 9.0}, "um/px"),
        ({"tile": 100}, "multiple of 16"),
    ],
)
def test_bad_requests_are_refused_with_a_clear_message(tissue, kwargs, message):
    with pytest.raises(HeatmapError, match=message):
        heatmap_image(tissue, mpp=kwargs.pop("mpp", 0.25), device="cpu", **kwargs)


def test_non_rgb_input_is_refused(tissue):
    with pytest.raises(HeatmapError, match="grayscale"):
        heatmap_image(tissue[..., 0], mpp=0.25)
    with pytest.raises(ValueError):
        heatmap_image(tissue[..., :2], mpp=0.25)


@pytest.mark.shared_data
def test_the_slide_heatmap_reproduces_the_map_that_was_evaluated():
    """A held-out MITOS frame through the product path (read, rescale, Macenko on the region, tiles)
    gives the map the evaluation in docs/mil.md scored (whole frame, skimage resize, per-frame stain)."""
    from skimage.io import imread

    from napari_mitosis.models.mil import predict_map, upsample_map
    from napari_mitosis.models.registry import load_model
    from napari_mitosis.training.train_mil import (
        MITOS14_MPP,
        MITOS14_SCALE_FIX,
        Stain,
        resample,
    )

    mpp = MITOS14_MPP / MITOS14_SCALE_FIX
    rgb = imread(shared_file("mitosis", "mitos_atypia14", "frames", "A03_02Ac.jpg"))
    net, _ = load_model("mitosis-mil", device="cpu")
    work = Stain(net.stain).apply(resample(rgb, mpp))
    ref = upsample_map(predict_map(net, work), work.shape[:2], net.stride)
    res = heatmap_image(rgb, mpp=mpp, device="cpu")
    heat, a = res.heatmap, res.attrs
    f = 0.5 / mpp  # frame px per working px
    # heatmap pixel centres in working px of the evaluated map
    r = (np.arange(heat.shape[0]) + 0.5) * a["downsample"] / f - 0.5
    c = (np.arange(heat.shape[1]) + 0.5) * a["downsample"] / f - 0.5
    # within 32 um of the frame's edge the two differ by design: the slide path sees white glass
    # beyond the image, the whole-frame evaluation the network's zero padding
    b = 64
    ok_r, ok_c = (r > b) & (r < ref.shape[0] - 1 - b), (c > b) & (c < ref.shape[1] - 1 - b)
    sampled = ref[np.rint(r[ok_r]).astype(int)][:, np.rint(c[ok_c]).astype(int)]
    mine = heat[ok_r][:, ok_c]
    assert np.corrcoef(sampled.ravel(), mine.ravel())[0, 1] > 0.95
    assert np.abs(sampled - mine).mean() < 0.02
    peaks = heatmap_peaks(res)
    assert peaks.x.between(0, rgb.shape[1]).all() and peaks.y.between(0, rgb.shape[0]).all()
