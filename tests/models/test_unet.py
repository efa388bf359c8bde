"""The nucleus U-Net: architecture, a smoke training run, and the shipped weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_mitosis.core.nuclei import aggregated_jaccard_index, pixel_metrics
from napari_mitosis.core.synthetic import SyntheticHE
from napari_mitosis.models.registry import WEIGHTS_DIR, load_model
from napari_mitosis.models.unet import UNet, count_parameters, predict_probabilities

from ..conftest import shared_file


def test_unet_shape_depth_and_size():
    net = UNet(base=16)
    assert len(net.down) == 4 and len(net.up) == 4  # 4 down, 4 up stages
    assert all(sum(isinstance(m, torch.nn.Conv2d) for m in b.modules()) == 2 for b in [*net.down, *net.up])
    assert count_parameters(net) < 2_500_000
    out = net.eval()(torch.zeros(2, 3, 64, 96))
    assert out.shape == (2, 3, 64, 96)
    with pytest.raises(ValueError, match="multiples of 16"):
        net(torch.zeros(1, 3, 50, 64))


def test_predict_probabilities_any_size():
    p = predict_probabilities(UNet(base=4).eval(), np.full((37, 53, 3), 200, np.uint8))
    assert p.shape == (3, 37, 53)
    assert np.allclose(p.sum(axis=0), 1, atol=1e-5)


def _tiny_data(root):
    """A two-image GBM40-shaped folder (05 is in the validation split)."""
    from skimage.io import imsave

    (root / "gbm40" / "images").mkdir(parents=True)
    (root / "gbm40" / "labels").mkdir()
    for i, name in enumerate(["01", "05"]):
        rgb, lab = SyntheticHE(shape=(96, 96), mpp=0.5, seed=i, tissue="full").render(0, 0, 96, 96)
        imsave(root / "gbm40" / "images" / f"{name}.png", rgb, check_contrast=False)
        imsave(root / "gbm40" / "labels" / f"{name}.png", lab.astype(np.uint16), check_contrast=False)


def test_training_smoke_run_ships_a_loadable_model(tmp_path):
    from napari_mitosis.training.train_nuclei import TrainConfig, train

    _tiny_data(tmp_path / "data")
    cfg = TrainConfig(data=str(tmp_path / "data"), out=str(tmp_path / "run"), minutes=1, patch=32, batch=2,
                      base=4, max_steps=2, val_every=1, weights_dir=str(tmp_path / "w"), command="test")
    metrics = train(cfg, log=lambda m: None)
    assert 0 <= metrics["dice"] <= 1
    net, spec = load_model("nuclei-unet", device="cpu", folder=tmp_path / "w")
    assert spec.mpp == 0.5 and spec.classes == ["background", "nucleus", "boundary"]
    assert "test" in (tmp_path / "w" / "nuclei-unet.md").read_text()
    # resumable: a second call finds the checkpoint and does not start over
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert history[-1]["step"] == 2
    cfg.max_steps = 3
    train(cfg, log=lambda m: None)
    assert json.loads((tmp_path / "run" / "history.json").read_text())[-1]["step"] == 3


def test_training_refuses_a_missing_data_folder(tmp_path):
    from napari_mitosis.training.train_nuclei import DataError, list_images

    with pytest.raises(DataError, match="--data"):
        list_images(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        list_images(tmp_path / "empty")


@pytest.fixture(scope="module")
def shipped():
    return load_model("nuclei-unet", device="cpu")


def test_shipped_model_files_are_small_and_documented(shipped):
    _, spec = shipped
    assert (WEIGHTS_DIR / "nuclei-unet.pt").stat().st_size < 5_000_000
    card = (WEIGHTS_DIR / "nuclei-unet.md").read_text()
    assert "Validation" in card and "napari-mitosis train nuclei" in card
    assert spec.mpp == 0.5 and {"foreground", "marker"} <= set(spec.thresholds)
    assert spec.metrics["unet"]["dice"] > 0.7


def test_shipped_model_segments_synthetic_tissue(shipped):
    from napari_mitosis.core.nuclei import probabilities_to_instances

    net, spec = shipped
    rgb, truth = SyntheticHE(shape=(256, 256), mpp=0.5, seed=11, tissue="full").render(0, 0, 256, 256)
    labels = probabilities_to_instances(predict_probabilities(net, rgb), mpp=spec.mpp, **spec.thresholds)
    assert pixel_metrics(labels, truth)["dice"] > 0.7


def test_shipped_model_on_a_real_validation_image(shipped):
    """MoNuSeg TCGA-A7-A13E (breast), held out by image; 1000 px at 0.25 um/px -> 0.5 um/px."""
    from skimage.io import imread
    from skimage.transform import resize

    from napari_mitosis.core.nuclei import probabilities_to_instances
    from napari_mitosis.training.train_nuclei import VALIDATION

    assert "TCGA-A7-A13E-01Z-00-DX1" in VALIDATION["monuseg_train"]
    rgb = imread(shared_file("nuclei", "monuseg_train", "images", "TCGA-A7-A13E-01Z-00-DX1.jpg"))[:600, :600]
    truth = imread(shared_file("nuclei", "monuseg_train", "labels", "TCGA-A7-A13E-01Z-00-DX1.png"))[:600, :600]
    small = (resize(rgb, (300, 300), anti_aliasing=True, preserve_range=True) + 0.5).astype(np.uint8)
    truth = resize(truth, (300, 300), order=0, anti_aliasing=False, preserve_range=True).astype(np.int32)
    net, spec = shipped
    labels = probabilities_to_instances(predict_probabilities(net, small), mpp=spec.mpp, **spec.thresholds)
    assert pixel_metrics(labels, truth)["dice"] > 0.7
    assert aggregated_jaccard_index(truth, labels) > 0.45


def test_training_option_normalises_images_toward_the_reference(tmp_path):
    """--normalize macenko: every loaded image is stain-normalised once, its tissue colour moves to the reference's."""
    from skimage.io import imsave

    from napari_mitosis.training.train_nuclei import (
        TrainConfig,
        list_images,
        load_sample,
        make_load_normalizer,
        normalize_sample,
        train,
    )

    _tiny_data(tmp_path / "data")
    style = {"hematoxylin": (0.5, 0.8, 0.3), "stain_strength": 1.3}
    ref, _ = SyntheticHE(shape=(256, 256), mpp=0.5, seed=7, tissue="full", **style).render(0, 0, 256, 256)
    # the training image "01" (seed 0) as it would look stained like the reference
    same_tissue_ref_style, _ = SyntheticHE(shape=(96, 96), mpp=0.5, seed=0, tissue="full", **style).render(0, 0, 96, 96)
    imsave(tmp_path / "ref.png", ref, check_contrast=False)
    norm = make_load_normalizer("macenko", tmp_path / "data", tmp_path / "ref.png")
    assert make_load_normalizer("none", tmp_path / "data") is None

    item = list_images(tmp_path / "data")[0]
    raw = load_sample(item).rgb
    normed = normalize_sample(load_sample(item), norm).rgb
    assert normed.shape == raw.shape and not np.array_equal(normed, raw)
    target = same_tissue_ref_style.astype(float)
    d_before = np.abs(raw.astype(float) - target).mean()
    d_after = np.abs(normed.astype(float) - target).mean()
    assert d_after < 0.6 * d_before, (d_before, d_after)

    cfg = TrainConfig(data=str(tmp_path / "data"), out=str(tmp_path / "run"), minutes=1, patch=32, batch=2, base=4,
                      max_steps=1, val_every=1, command="test", normalize="macenko", norm_reference=str(tmp_path / "ref.png"))
    train(cfg, log=lambda m: None)
    spec = json.loads((tmp_path / "run" / "nuclei-unet.json").read_text())
    assert spec["training"]["stain_normalization"]["method"] == "macenko"
