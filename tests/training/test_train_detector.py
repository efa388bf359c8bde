"""The detector's training pieces on tiny arrays: targets where the objects are, augmentations
that move labels with pixels, hard negatives away from every labelled object."""

import numpy as np
import pandas as pd
import torch

from napari_mitosis.training import train_detector as T


def test_gaussian_targets_peak_at_one_exactly_on_each_object():
    t = T.gaussian_target([np.array([[21.5, 9.5]]), np.zeros((0, 2))], size=32)
    assert t.shape == (2, 8, 8)
    assert t[0, 2, 5] == 1.0 and t[0].sum() < 7 and not t[1].any()  # (21.5 + 0.5) / 4 - 0.5 = 5


def test_the_warp_moves_the_labelled_point_to_the_patch_centre():
    rng = np.random.default_rng(0)
    img = np.zeros((100, 100, 3), np.uint8)
    img[60:64, 30:34] = 255  # a bright 4 px square centred at (31.5, 61.5)
    for _ in range(5):
        patch, m = T.warp(img, 31.5, 61.5, 32, rng, shift_px=0.0)
        ys, xs = np.nonzero(patch[..., 0] > 100)
        assert abs(xs.mean() - 15.5) < 1.5 and abs(ys.mean() - 15.5) < 1.5
        assert np.allclose(m[:, :2] @ (31.5, 61.5) + m[:, 2], (16, 16), atol=1e-6)


def test_colour_augmentation_keeps_shape_and_type_and_varies_stain():
    rng = np.random.default_rng(1)
    img = np.random.default_rng(2).integers(80, 220, (40, 40, 3)).astype(np.uint8)
    outs = [T.colour_aug(img, rng) for _ in range(4)]
    assert all(o.shape == img.shape and o.dtype == np.uint8 for o in outs)
    assert np.std([o.mean() for o in outs]) > 0.5


def test_focal_loss_is_lower_for_the_right_map():
    target = torch.from_numpy(T.gaussian_target([np.array([[9.5, 9.5]]), np.zeros((0, 2))], size=32))[None]
    good = torch.logit(target.clamp(0.01, 0.99))
    bad = torch.zeros_like(good)
    assert T.focal_loss(good, target) < T.focal_loss(bad, target)


def test_holdout_mask_keeps_validation_domains_out_of_training():
    meta = pd.DataFrame({"domain": ["atnorm_br", "atnorm_md", "mitos14", "nuclei", "nuclei"],
                         "group": ["atnorm_br/1", "atnorm_md/1", "mitos14/A03_03", "monuseg_train/A", "gbm40/x"]})
    assert T.holdout_mask(meta).tolist() == [True, False, True, True, False]
    # a final fit may train on a held-out group, never on a held-out domain or the validation fields
    assert T.holdout_mask(meta, train_on=("mitos14/A03_03",)).tolist() == [True, False, False, True, False]


def test_the_classifier_sampler_draws_balanced_labelled_patches():
    rng = np.random.default_rng(0)
    imgs = [np.full((90, 90, 3), v, np.uint8) for v in (50, 200)]
    meta = pd.DataFrame({"domain": ["atnorm_md", "eoe"], "group": ["atnorm_md/0", "eoe/1_1"]})
    rows = np.array([[0, 45, 45, 0, 0], [1, 45, 45, 1, 0], [1, 30, 30, 2, 2]], float)
    x, y = T.ClsSampler(imgs, rows, meta, rng).batch(60)
    assert x.shape == (60, 3, 64, 64) and 0 <= float(x.min()) and float(x.max()) <= 1
    counts = np.bincount(y.numpy(), minlength=3)
    assert (counts > 5).all()
    dark = x.mean((1, 2, 3)) < 0.5  # the mitosis image is the dark one: labels follow their pixels
    assert (y[dark] == 0).all() and (y[~dark] != 0).all()


def test_stain_mix_up_takes_the_hue_of_training_images_only():
    from napari_mitosis.core.stain import EOSIN, HEMATOXYLIN, render_stains

    rng = np.random.default_rng(3)
    own = np.stack([HEMATOXYLIN, EOSIN]) / np.linalg.norm([HEMATOXYLIN, EOSIN], axis=1, keepdims=True)
    blue = np.array([[0.30, 0.60, 0.74], EOSIN / np.linalg.norm(EOSIN)])
    img = render_stains([np.full((8, 8), 0.8), np.full((8, 8), 0.3)], own, 255.0)
    mixed = [T.stain_mix(img, own, blue[None], rng) for _ in range(20)]
    assert all(m.shape == img.shape and m.dtype == np.uint8 for m in mixed)
    assert np.mean([m[..., 2].mean() for m in mixed]) < img[..., 2].mean() - 3  # bluer hematoxylin absorbs more blue
    # the library holds the training images' vectors: a held-out image's hue is never used
    meta = pd.DataFrame({"domain": ["atnorm_md", "atnorm_br"], "group": ["atnorm_md/0", "atnorm_br/0"]})
    rows = np.array([[0, 4, 4, 0, 0], [1, 4, 4, 0, 0]], float)
    s = T.ClsSampler([img, img], rows, meta, rng, stains=np.stack([own, blue]), p_restain=1.0)
    assert len(s.library) == 1 and np.allclose(s.library[0], own)
    assert T.stain_mix(img, np.full((2, 3), np.nan), s.library, rng) is img  # no vectors: unchanged
