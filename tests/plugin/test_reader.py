"""The npe2 reader and sample data, as napari uses them."""

import numpy as np
import pytest

from napari_mitosis.plugin.reader import get_reader
from tests.conftest import shared_file


def test_reader_gives_a_multiscale_rgb_layer_in_micrometres(synthetic_slide_file):
    reader = get_reader(str(synthetic_slide_file))
    assert callable(reader)
    [(data, kwargs, kind)] = reader(str(synthetic_slide_file))
    assert kind == "image"
    assert kwargs["multiscale"] and kwargs["rgb"]
    assert kwargs["scale"] == (0.25, 0.25)
    assert kwargs["contrast_limits"] == (0, 255)
    assert kwargs["metadata"]["napari_mitosis"]["mpp"] == 0.25
    assert [d.shape[:2] for d in data] == [(1100, 1700), (550, 850)]


def test_reader_declines_what_it_cannot_read(tmp_path):
    assert get_reader(str(tmp_path / "image.czi")) is None  # not ours
    assert get_reader([str(tmp_path / "a.svs"), str(tmp_path / "b.svs")]) is None


@pytest.mark.gui
def test_viewer_opens_a_real_svs_with_the_plugin(make_napari_viewer):
    path = shared_file("slides", "CMU-1-Small-Region.svs")
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(path), plugin="napari-mitosis")
    assert layer.multiscale and layer.rgb
    np.testing.assert_allclose(layer.scale, (0.499, 0.499))
    assert tuple(layer.contrast_limits) == (0, 255)
    assert layer.data[0].shape == (2967, 2220, 3)


@pytest.mark.slow
@pytest.mark.gui
def test_sample_data_opens(make_napari_viewer, tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_MITOSIS_CACHE", str(tmp_path))
    viewer = make_napari_viewer()
    layers = viewer.open_sample("napari-mitosis", "synthetic_slide")
    image, points = layers
    assert image.multiscale and image.scale[0] == 0.25
    assert len(points.data) > 10
    assert set(points.properties["class"]) == {"mitotic_figure", "granulocyte"}
    assert list(tmp_path.glob("*.ome.tif"))  # generated once, cached


def test_computed_levels_do_not_fill_the_napari_cache(tmp_path):
    import tifffile

    from napari_mitosis.io import open_slide
    from napari_mitosis.plugin.reader import layer_data

    path = tmp_path / "flat.tif"
    tifffile.imwrite(path, np.zeros((3000, 2500, 3), np.uint8), photometric="rgb", tile=(256, 256))
    with open_slide(path) as slide:
        assert layer_data(slide)[1]["cache"] is False
