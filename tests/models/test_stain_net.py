import numpy as np
import pytest
import torch
from skimage import color

from napari_mitosis.core.stain_metrics import delta_e, structure_ssim
from napari_mitosis.core.stain_norm import StainNormError, save_normalizer
from napari_mitosis.models.stain_net import load_normalizer
from napari_mitosis.core.synthetic import synthetic_he
from napari_mitosis.models.stain_net import NeuralStainNormalizer, StainTransferNet, lab_to_rgb, rgb_to_lab
from tests.conftest import shared_file


def test_lab_conversion_matches_skimage_and_inverts():
    rgb = np.random.default_rng(0).integers(0, 256, (8, 9, 3), dtype=np.uint8)
    t = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
    lab = rgb_to_lab(t)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(lab, color.rgb2lab(rgb), atol=0.05)
    np.testing.assert_allclose(lab_to_rgb(rgb_to_lab(t)), t, atol=1e-4)


def test_network_shapes():
    net = StainTransferNet(width=8, n_classes=3).eval()
    chroma, logits = net(torch.rand(2, 1, 64, 96))
    assert chroma.shape == (2, 2, 64, 96) and logits.shape == (2, 3)
    assert chroma.abs().max() <= 1
    g = net.global_features(torch.rand(1, 1, 128, 128))
    assert g.shape == (1, 256)
    chroma2, _ = net(torch.rand(3, 1, 32, 32), g)  # one slide descriptor shared by all tiles
    assert chroma2.shape == (3, 2, 32, 32)


@pytest.fixture(scope="module")
def neural():
    torch.set_num_threads(1)
    return NeuralStainNormalizer(device="cpu", fit_steps=25, batch=4)


def test_shipped_style_keeps_structure_and_glass(neural):
    img = synthetic_he((256, 256), seed=3, tissue="full", hematoxylin=(0.45, 0.8, 0.4))[0].copy()
    img[:, :64] = 238  # glass
    out = neural.transform(img, mpp=0.25)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert np.abs(out[:, :60].astype(int) - 238).max() <= 2
    assert structure_ssim(img, out) > 0.7


def test_shipped_style_moves_other_labs_to_the_mitos_style(neural):
    import glob

    from skimage.io import imread

    frames_dir = shared_file("mitosis", "mitos_atypia14", "frames")
    refs = [imread(f)[..., :3] for f in sorted(glob.glob(str(frames_dir / "A03_03*")))[:4]]
    target = np.mean([color.rgb2lab(r).reshape(-1, 3)[::7].mean(0) for r in refs], axis=0)
    src = imread(shared_file("nuclei", "gbm40", "images", "01.jpg"))[..., :3]
    out = neural.transform(src, mpp=0.5)
    assert delta_e(out, target) < delta_e(src, target) - 5


def test_fit_fine_tunes_to_a_new_reference_and_round_trips(neural, tmp_path):
    ref = synthetic_he((192, 192), seed=4, tissue="full", eosin=(0.05, 0.95, 0.3), stain_strength=1.3)[0]
    src = synthetic_he((192, 192), seed=5, tissue="full")[0]
    before = delta_e(neural.transform(src, mpp=0.25), ref)
    neural.fit(ref, mpp=0.25)
    after = neural.transform(src, mpp=0.25)
    assert delta_e(after, ref) < before
    path = save_normalizer(neural, tmp_path / "style.json")
    assert (tmp_path / "style.pt").exists()
    again = load_normalizer(path)
    np.testing.assert_array_equal(again.transform(src, mpp=0.25), after)


def test_neural_bad_input(neural):
    with pytest.raises(StainNormError, match="no tissue"):
        neural.fit(np.full((64, 64, 3), 250, np.uint8))
    with pytest.raises(StainNormError, match="grayscale"):
        neural.transform(np.zeros((64, 64), np.uint8))
