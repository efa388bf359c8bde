"""Typing segmented nuclei with the shipped InfoGAN, and the viewer helpers."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from napari_mitosis.core.synthetic import SyntheticHE
from napari_mitosis.models.registry import read_spec
from napari_mitosis.pipeline.nuclei import segment_image
from napari_mitosis.pipeline.nucleus_types import (
    UNTYPED,
    UNTYPED_NAME,
    TypingError,
    TypingWarning,
    nuclei_from_labels,
    points_layer_kwargs,
    sample_patches,
    type_colors,
    type_legend,
    type_nuclei,
)
from napari_mitosis.plugin.layers import labels_colormap
from tests.conftest import shared_file

K = len(read_spec("nuclei-infogan").classes)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tissue():
    rgb, truth = SyntheticHE(shape=(360, 440), mpp=0.25, seed=4, tissue="full").render(0, 0, 360, 440)
    return rgb, truth


def test_sample_patches_centres_the_point():
    img = np.zeros((60, 80, 3), np.uint8)
    img[30, 50] = 255
    p = sample_patches(img, [50], [30], size=9)
    assert p[0, 4, 4, 0] == 255 and p[0].sum() == 3 * 255  # the point is the centre pixel, nothing else is lit


def test_nuclei_from_labels_centroids_and_border_flags():
    lab = np.zeros((20, 30), np.int32)
    lab[4:7, 10:13] = 5  # centre (11, 5)
    lab[0:3, 0:4] = 9  # touches the top-left border
    t = nuclei_from_labels(lab, origin=(100, 200))
    row = t.set_index("id").loc[5]
    assert (row.x, row.y) == (111, 205) and not row.touches_border
    assert bool(t.set_index("id").loc[9].touches_border)
    with pytest.raises(TypingError, match="2-D integer"):
        nuclei_from_labels(np.zeros((4, 4), float))


def test_types_every_inner_nucleus_of_a_segmented_image(tissue):
    rgb, _ = tissue
    _, table = segment_image(rgb, 0.25, device="cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        typed = type_nuclei(rgb, table, mpp=0.25, device="cpu")
    assert len(typed) == len(table) and list(typed["id"]) == list(table["id"])  # same nuclei, same order
    inner = typed[typed.type != UNTYPED]
    assert set(inner.type) <= set(range(K)) and len(inner) > 0.6 * len(typed)
    p = inner[[f"p_type_{k}" for k in range(K)]].to_numpy()
    assert np.allclose(p.sum(1), 1, atol=1e-4)
    assert (p.argmax(1) == inner.type.to_numpy()).all()
    names = read_spec("nuclei-infogan").classes
    assert list(inner.type_name) == [names[t] for t in inner.type]
    # nuclei whose centroid is within 4 um of the image edge are cut: not typed, and we are told
    edge = (typed.x < 16) | (typed.y < 16) | (typed.x > 440 - 17) | (typed.y > 360 - 17)
    assert (typed.type[edge] == UNTYPED).all() and (typed.type_name[edge] == UNTYPED_NAME).all()
    assert edge.any() and any(issubclass(w.category, TypingWarning) and "cut by the border" in str(w.message) for w in caught)
    assert typed.attrs["typing_model"] == "nuclei-infogan" and len(typed.attrs["type_names"]) == K
    # the segmentation geometry survives (the viewer places layers with it)
    assert typed.attrs["level0_mpp"] == 0.25


def test_typing_is_deterministic_and_labels_give_the_same_types(tissue):
    rgb, truth = tissue
    with pytest.warns(TypingWarning, match="cut by the border"):
        from_labels = type_nuclei(rgb, truth.astype(np.int32), mpp=0.25, device="cpu")
    with pytest.warns(TypingWarning):
        again = type_nuclei(rgb, truth.astype(np.int32), mpp=0.25, device="cpu")
    pd.testing.assert_frame_equal(from_labels, again)
    # labels touching the label image's edge are cut nuclei: untyped
    edge_ids = np.unique(np.r_[truth[0], truth[-1], truth[:, 0], truth[:, -1]])
    edge_ids = edge_ids[edge_ids > 0]
    assert (from_labels.set_index("id").loc[edge_ids, "type"] == UNTYPED).all()


def test_bad_input_is_refused_clearly(tissue):
    rgb, _ = tissue
    with pytest.raises(TypingError, match="no nuclei to type"):
        type_nuclei(rgb, pd.DataFrame({"x": [], "y": []}), mpp=0.25)
    with pytest.raises(TypingError, match="needs x and y"):
        type_nuclei(rgb, pd.DataFrame({"col": [1.0]}), mpp=0.25)
    with pytest.raises(TypingError, match="pixel size is unknown"):
        type_nuclei(rgb, pd.DataFrame({"x": [100.0], "y": [100.0]}))
    with pytest.raises(TypingError, match="no model named"):
        type_nuclei(rgb, pd.DataFrame({"x": [100.0], "y": [100.0]}), mpp=0.25, model="no-such-model")
    with pytest.raises(TypingError, match="all 1 nuclei are cut"), pytest.warns(TypingWarning):
        type_nuclei(rgb, pd.DataFrame({"x": [2.0], "y": [100.0]}), mpp=0.25)


def test_colours_legend_and_layer_helpers():
    cols = type_colors(5)
    assert len(set(cols)) == 5 and all(len(c) == 4 for c in cols)
    t = pd.DataFrame({"id": [3, 4, 7, 8], "x": [10.0, 20, 30, 40], "y": [1.0, 2, 3, 4], "type": [0, 1, 1, UNTYPED],
                      "type_name": ["type 1", "type 2", "type 2", UNTYPED_NAME]})
    t.attrs["type_names"] = ["type 1", "type 2", "type 3"]
    legend = type_legend(t)
    assert [(e["name"], e["count"]) for e in legend] == [("type 1", 1), ("type 2", 2), ("type 3", 0), (UNTYPED_NAME, 1)]
    assert legend[1]["hex"].startswith("#") and len(legend[1]["hex"]) == 7
    cmap = labels_colormap(t)
    assert cmap[4] == cmap[7] and np.allclose(cmap[4], type_colors(3)[1]) and cmap[3] != cmap[4]
    assert cmap[0][3] == 0  # background transparent
    kw = points_layer_kwargs(t, level0_mpp=0.25)
    assert np.allclose(kw["data"][1], [0.5, 5.0])  # (y, x) in um
    assert np.allclose(kw["face_color"][1], type_colors(3)[1]) and list(kw["features"]["type"]) == [0, 1, 1, -1]


@pytest.mark.shared_data
def test_real_tissue_uses_more_than_one_type():
    """On a real MoNuSeg image (breast, 0.25 um/px) the model does not put every nucleus in one type."""
    from skimage.io import imread

    path = shared_file("nuclei", "monuseg_train", "images", "TCGA-A7-A13F-01Z-00-DX1.jpg")
    rgb = np.asarray(imread(path))[:400, :400, :3]
    _, table = segment_image(rgb, 0.25, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TypingWarning)
        typed = type_nuclei(rgb, table, mpp=0.25, device="cpu")
    counts = typed[typed.type >= 0].type.value_counts()
    assert len(counts) >= 2 and counts.max() < 0.95 * counts.sum()
