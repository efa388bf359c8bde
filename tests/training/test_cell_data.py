"""Cell data: rendering at the working resolution, ground truth, augmentation, splits and the export format."""

import numpy as np
import pandas as pd
import pytest
import torch

from napari_mitosis.training.cell_data import (
    Augment,
    CellDataError,
    CellSampler,
    group_folds,
    midog_scanner,
    read_cells,
    read_export,
    read_shared,
    render_input,
    write_export,
)
from napari_mitosis.models.gstn import gt_theta, theta_to_xy
from tests.conftest import shared_file


def _dot_image(h=300, w=400, x=150, y=120, r=3):
    img = np.full((h, w, 3), 230, np.uint8)
    img[y - r : y + r + 1, x - r : x + r + 1] = (40, 20, 90)
    return img


def _dark_centre(a):
    g = a.mean(2)
    yy, xx = np.nonzero(g < g.min() + 20)
    return xx.mean(), yy.mean()


def test_render_puts_the_cell_at_centre_minus_delta():
    img = _dot_image()
    a = render_input(img, 150, 120, mpp=0.25, delta=(20, -10))
    assert a.shape == (128, 128, 3) and a.dtype == np.float32
    cx, cy = _dark_centre(a)
    c = 63.5
    assert cx == pytest.approx(c - 20, abs=0.6) and cy == pytest.approx(c + 10, abs=0.6)
    # and the ground truth theta says the same (equations 1-3)
    x, y = theta_to_xy(gt_theta(20.0, -10.0))
    assert (x.item(), y.item()) == pytest.approx((c - 20, c + 10))


def test_render_rescales_to_0_25_um_per_px():
    # a 7 px dot at 0.5 um/px (3.5 um) is 14 px at 0.25 um/px
    img = _dot_image(r=3)
    a = render_input(img, 150, 120, mpp=0.5)
    g = a.mean(2)
    width = (g[64] < 135).sum()
    assert 12 <= width <= 16


def test_render_mirrors_outside_the_allowed_box():
    img = np.zeros((128, 128, 3), np.uint8)
    img[:, :64] = 200  # left half bright
    a = render_input(img, 63.5, 63.5, mpp=0.25, delta=(40, 0), box=(0, 0, 128, 128))
    # shifted right by 40: the right 40 columns come from beyond the crop, mirrored (dark half mirrored back)
    assert a[:, -1].mean() < 50
    assert a[:, 0].mean() > 150


def test_hed_jitter_keeps_the_image_when_off_and_changes_it_when_on():
    rng = np.random.default_rng(0)
    img = np.random.default_rng(1).integers(30, 240, (32, 32, 3)).astype(np.float32)
    from napari_mitosis.core.stain import hed_jitter

    same = hed_jitter(img, rng, scale=0.0, shift=0.0)
    np.testing.assert_allclose(same, img, atol=1.0)
    changed = hed_jitter(img, rng, scale=0.3, shift=0.05)
    assert np.abs(changed - img).mean() > 2


def _table(tmp_path, n_groups=6, per=4):
    rows = []
    img = _dot_image()
    path = tmp_path / "tile.png"
    from skimage.io import imsave

    imsave(path, img, check_contrast=False)
    for g in range(n_groups):
        for i in range(per):
            cls = ["mitotic_figure", "granulocyte", "other"][(g + i) % 3]
            rows.append(dict(image=str(path), x=150.0, y=120.0, **{"class": cls}, status="confirmed", mpp=0.25,
                             source=f"s{g % 2}", group=f"slide{g}", box=""))
    return pd.DataFrame(rows)


def test_folds_never_split_a_group_and_cover_every_source(tmp_path):
    t = _table(tmp_path, n_groups=10)
    f = group_folds(t, k=5, seed=0)
    assert set(f) == set(range(5))
    assert (t.assign(f=f).groupby("group")["f"].nunique() == 1).all()
    for k in range(5):
        assert set(t.source[f == k]) == {"s0", "s1"}


def test_sampler_balances_classes_and_returns_ground_truth(tmp_path):
    t = _table(tmp_path)
    t = pd.concat([t, t[t["class"] == "other"]] * 5, ignore_index=True)  # 'other' much larger
    s = CellSampler(t, seed=0)
    drawn = s.table.loc[s.draw(600), "class"].value_counts(normalize=True)
    assert drawn.min() > 0.25
    x, y, theta, d = s.batch(4)
    assert x.shape == (4, 3, 128, 128) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    torch.testing.assert_close(theta, gt_theta(d[:, 0], d[:, 1]))
    assert np.abs(d).max() <= 32
    x0, _, theta0, d0 = s.make(s.draw(2), offset=False, augment=False)
    assert np.all(d0 == 0)
    with pytest.raises(CellDataError, match="no cells"):
        CellSampler(t, classes=["lymphocyte"])


def test_export_round_trip_and_centred_crops(tmp_path):
    crop = np.full((128, 128, 3), 200, np.uint8)
    cells = pd.DataFrame([
        dict(image="crops/a.png", x=None, y=None, **{"class": "mitotic_figure"}, status="confirmed", mpp=0.25, group="s1"),
        dict(image="crops/b.png", x=30.0, y=40.0, **{"class": "other"}, status="corrected", mpp=0.25, group="s1"),
        dict(image="crops/b.png", x=80.0, y=40.0, **{"class": "other"}, status="rejected", mpp=0.25, group="s1"),
    ])
    write_export(tmp_path / "exp", cells, images={"crops/a.png": crop, "crops/b.png": crop})
    t = read_cells(tmp_path / "exp")
    assert len(t) == 2  # the rejected row is skipped
    assert (t.x[0], t.y[0]) == (63.5, 63.5)  # no position: the crop's centre
    assert set(t.source) == {"export"} and list(t.group) == ["s1", "s1"]


def test_bad_exports_are_clear_errors(tmp_path):
    with pytest.raises(CellDataError, match="no such folder"):
        read_cells(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CellDataError, match="has no cells.csv"):
        read_export(tmp_path / "empty")
    with pytest.raises(CellDataError, match="none of the shared cell sets"):
        read_cells(tmp_path / "empty")
    d = tmp_path / "bad"
    d.mkdir()
    (d / "cells.csv").write_text("image,class\na.png,other\n")
    with pytest.raises(CellDataError, match="missing column.*mpp"):
        read_export(d)
    (d / "cells.csv").write_text("image,class,mpp\na.png,other,0.25\n")
    with pytest.raises(CellDataError, match="a.png .*does not exist"):
        read_export(d)
    (d / "cells.csv").write_text("image,class,mpp\na.png,other,-1\n")
    with pytest.raises(CellDataError, match="no valid pixel size"):
        read_export(d)
    (d / "cells.csv").write_text("image,class,mpp\n")
    with pytest.raises(CellDataError, match="holds no cells"):
        read_export(d)


def test_midog_scanners_by_slide_number():
    assert midog_scanner("007.tiff") == "hamamatsu_xr"
    assert midog_scanner("072.tiff") == "hamamatsu_s360"
    assert midog_scanner("141.tiff") == "aperio_cs2"


def test_real_amibr_crops_render_centred(tmp_path):
    labels = shared_file("mitosis", "amibr_midog21", "labels.csv")
    df = pd.read_csv(labels).head(3)
    root = labels.parent
    cells = pd.DataFrame({"image": [str(root / f) for f in df.file], "class": "mitotic_figure", "mpp": 0.25,
                          "status": "confirmed", "group": df.slide})
    (tmp_path / "cells.csv").write_text(cells.to_csv(index=False))
    t = read_export(tmp_path)
    s = CellSampler(t, augment=Augment.off(), seed=0)
    x, y, theta, d = s.make(np.arange(3), offset=False, augment=False)
    from skimage.io import imread

    # unaugmented and centred, the input is the crop itself
    ref = imread(root / df.file.iloc[0]).astype(np.float32) / 255
    np.testing.assert_allclose(x[0].numpy().transpose(1, 2, 0), ref, atol=1 / 255 + 1e-4)


def test_missing_shared_data_is_clear(tmp_path):
    with pytest.raises(CellDataError, match="none of the shared cell sets"):
        read_shared(tmp_path)
