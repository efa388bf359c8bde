import numpy as np
import pytest

from napari_mitosis.core.synthetic import CELL_TYPES, SyntheticHE, synthetic_he


def test_same_seed_same_slide_other_seed_other_slide():
    a = synthetic_he((128, 160), seed=4)
    b = synthetic_he((128, 160), seed=4)
    c = synthetic_he((128, 160), seed=5)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert np.abs(a[0].astype(int) - c[0].astype(int)).mean() > 5


def test_tiles_render_seamlessly():
    """Any tile renders on its own and matches its neighbour at the seam."""
    s = SyntheticHE(shape=(600, 600), seed=1, tissue="full")
    whole, whole_labels = s.render(100, 100, 200, 300)
    left, left_labels = s.render(100, 100, 200, 150)
    right, right_labels = s.render(100, 250, 200, 150)
    stitched = np.concatenate([left, right], axis=1)
    assert np.abs(stitched.astype(int) - whole.astype(int)).max() <= 1
    np.testing.assert_array_equal(np.concatenate([left_labels, right_labels], axis=1), whole_labels)


def test_ground_truth_matches_the_labels():
    s = SyntheticHE(shape=(1024, 1024), seed=2, tissue="full", mitosis_fraction=0.1, granulocyte_fraction=0.3)
    rgb, labels = s.render(0, 0, 1024, 1024)
    cells = s.cells()
    assert set(cells["type"]) <= set(CELL_TYPES)
    assert {"mitotic_figure", "granulocyte", "other"} <= set(cells["class"])
    inner = cells[cells.x.between(40, 984) & cells.y.between(40, 984)]
    drawn = set(np.unique(labels)) - {0}
    assert set(inner["id"]) <= drawn  # every cell is drawn, with its id
    # each nucleus lies around its centroid
    for row in inner.itertuples():
        ys, xs = np.nonzero(labels == row.id)
        assert abs(ys.mean() - row.y) < 12 and abs(xs.mean() - row.x) < 12


def test_mitotic_figures_are_darker_than_tumour_nuclei():
    s = SyntheticHE(shape=(1024, 1024), seed=3, tissue="full", mitosis_fraction=0.15)
    rgb, labels = s.render(0, 0, 1024, 1024)
    cells = s.cells()
    gray = rgb.mean(axis=2)

    def mean_of(kind):
        ids = cells.loc[cells["type"] == kind, "id"]
        return gray[np.isin(labels, ids)].mean()

    assert mean_of("mitotic_figure") < mean_of("tumour") - 30


def test_granulocytes_have_eosinophilic_cytoplasm():
    s = SyntheticHE(shape=(1024, 1024), seed=3, tissue="full", granulocyte_fraction=0.5)
    rgb, labels = s.render(0, 0, 1024, 1024)
    cells = s.cells()
    gran = cells[(cells["type"] == "granulocyte") & cells.x.between(30, 994) & cells.y.between(30, 994)]
    assert len(gran) > 3
    redness = rgb[..., 0].astype(int) - rgb[..., 1].astype(int)
    ring = [redness[int(r.y) - 18 : int(r.y) + 18, int(r.x) - 18 : int(r.x) + 18].mean() for r in gran.itertuples()]
    assert np.mean(ring) > redness.mean() + 10


def test_stain_vectors_change_the_colour():
    blue = synthetic_he((200, 200), seed=1, tissue="full")[0]
    green = synthetic_he((200, 200), seed=1, tissue="full", hematoxylin=(0.9, 0.1, 0.4))[0]
    assert np.abs(blue.astype(int) - green.astype(int)).mean() > 2


def test_auto_tissue_has_white_glass_around():
    s = SyntheticHE(shape=(2048, 2048), seed=0)
    truth = s.tissue_truth(32)
    assert 0.2 < truth.mean() < 0.9
    assert not truth[0].any() and not truth[-1].any()  # corners are glass
    rgb, _ = s.render(0, 0, 64, 64)
    assert rgb.min() > 230


@pytest.mark.parametrize("kwargs", [{"shape": (0, 5)}, {"mpp": 0}, {"tissue": "some"}, {"eosin": (0, 0, 0)}])
def test_bad_parameters_are_refused(kwargs):
    with pytest.raises(ValueError):
        SyntheticHE(**kwargs)
