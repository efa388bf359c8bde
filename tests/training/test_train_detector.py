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


def _one_crop_cache(size=96):
    """One cached 0.5 um/px crop (a 'mitosis' crop: the object at its centre): a dark 8 um disc on a
    fine 1 px checkerboard (texture that aliases when a 0.5 um/px image is warped by 0.5)."""
    yy, xx = np.mgrid[0:size, 0:size]
    img = np.where((yy + xx) % 2, 230, 170).astype(np.uint8)[..., None].repeat(3, 2)
    c = (size - 1) / 2
    img[(yy - c) ** 2 + (xx - c) ** 2 <= 8**2] = 40
    meta = pd.DataFrame({"kind": ["crop"], "domain": ["amibr_aperio_cs2"], "group": ["amibr/x"],
                         "mit": [[[c, c]]], "gran": [[]]})
    return [img], meta


def test_the_dense_sampler_puts_the_target_on_the_object_at_either_design(monkeypatch):
    monkeypatch.setattr(T, "colour_aug", lambda x, rng: x)  # look at the geometry only
    imgs, meta = _one_crop_cache()
    for mpp, stride in ((0.5, 4), (1.0, 2)):
        s = T.DenseSampler(imgs, meta, np.random.default_rng(0), hold=np.zeros(1, bool), mpp=mpp, stride=stride)
        for _ in range(10):
            x, t, fine = s.one()
            assert x.shape == (int(32 / mpp),) * 2 + (3,) and t.shape == (2, 16, 16)  # 32 um, maps at 2 um/px
            ty, tx = np.unravel_index(t[0].argmax(), t[0].shape)
            assert t[0, ty, tx] > 0.5
            dark = x[..., 0] < 100  # the disc, where the target says it is (within a map pixel)
            ys, xs = np.nonzero(dark)
            cy, cx = (ys.mean() + 0.5) * mpp / 2 - 0.5, (xs.mean() + 0.5) * mpp / 2 - 0.5
            assert abs(cy - ty) <= 1 and abs(cx - tx) <= 1


def test_the_coarse_design_sees_area_averaged_pixels_as_at_inference(monkeypatch):
    # the checkerboard averages to grey at 1.0 um/px (as a slide's pyramid shows it); warping the
    # 0.5 um/px image by 0.5 directly would keep a strong pixel pattern
    monkeypatch.setattr(T, "colour_aug", lambda x, rng: x)
    imgs, meta = _one_crop_cache(160)
    s = T.DenseSampler(imgs, meta, np.random.default_rng(1), hold=np.zeros(1, bool), mpp=1.0, stride=2)
    x, _, _ = s.one()
    corner = x[:6, :6, 0].astype(float)  # background, away from the disc
    assert corner.std() < 3, corner  # warping by 0.5 directly: 9-10


def test_distillation_loss_is_zero_when_the_maps_agree_and_grows_as_they_part():
    t = torch.full((1, 2, 4, 4), 0.01)
    t[0, 0, 1, 2] = 0.9
    y = torch.zeros_like(t)
    y[0, 0, 1, 2] = 1.0
    same = T.distill_loss(torch.logit(t), t, y)
    assert abs(float(same)) < 1e-4
    off = T.distill_loss(torch.logit(t.roll(1, dims=-1)), t, y)
    further = T.distill_loss(torch.full_like(t, -9.0), t, y)
    assert 0 < float(off) and 0 < float(further)


def test_the_coarse_sampler_keeps_the_fine_patch_for_a_teacher_on_the_same_map_grid(monkeypatch):
    monkeypatch.setattr(T, "colour_aug", lambda x, rng: x)
    imgs, meta = _one_crop_cache()
    s = T.DenseSampler(imgs, meta, np.random.default_rng(0), hold=np.zeros(1, bool), mpp=1.0, stride=2, keep_fine=True)
    x, t, fine = s.batch(3)
    assert x.shape == (3, 3, 32, 32) and fine.shape == (3, 3, 64, 64) and t.shape == (3, 2, 16, 16)
    # the coarse input is the fine patch averaged 2 x 2
    assert torch.allclose(x, torch.nn.functional.avg_pool2d(fine, 2), atol=2 / 255)
    import pytest

    with pytest.raises(ValueError, match="no cell-dense design"):
        T.DenseSampler(imgs, meta, np.random.default_rng(0), hold=np.zeros(1, bool), mpp=0.75, stride=2)


def test_a_committed_weights_only_checkpoint_resumes_at_its_step(tmp_path):
    # the form committed to the repository: fp16 weights and the step, no optimiser state
    from napari_mitosis.models.dense_net import build_cell_dense

    src = build_cell_dense(out_stride=2)
    (tmp_path / "ckpt").mkdir()
    torch.save({"model": {k: v.half() if v.is_floating_point() else v for k, v in src.state_dict().items()},
                "step": 40000, "mpp": 1.0, "out_stride": 2}, tmp_path / "ckpt" / "cell-dense.pt")
    net = build_cell_dense(out_stride=2)
    opt = torch.optim.AdamW(net.parameters())
    step, recorded = T.resume("dense", net, opt, tmp_path / "ckpt", say=lambda m: None, design="coarse")
    assert step == 40000 and recorded == {"step": 40000, "mpp": 1.0, "out_stride": 2}
    w = src.state_dict()["out.weight"]
    assert torch.allclose(net.state_dict()["out.weight"], w.half().float())
    import pytest

    with pytest.raises(SystemExit, match="--design coarse"):  # the default (fine) design refuses it, saying what to pass
        T.resume("dense", build_cell_dense(), opt, tmp_path / "ckpt", say=lambda m: None)
