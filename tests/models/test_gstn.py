"""The guided spatial transformer network: shapes, equations 1-3 and 8, the transformer crop."""

import numpy as np
import pytest
import torch

from napari_mitosis.models.gstn import (
    CROP_SIZE,
    GSTN,
    INPUT_SIZE,
    THETA_SCALE,
    CiresanCNN,
    gt_theta,
    loc_loss,
    theta_to_xy,
    xy_to_theta,
)


def test_shapes_and_parameter_budget():
    torch.manual_seed(0)
    net, base = GSTN(n_classes=3).eval(), CiresanCNN(n_classes=3).eval()
    x = torch.rand(2, 3, INPUT_SIZE, INPUT_SIZE)
    logits, theta = net(x)
    assert logits.shape == (2, 3) and theta.shape == (2, 2, 3)
    blogits, none = base(x)
    assert blogits.shape == (2, 3) and none is None
    # an untrained localizer starts at the centred crop of scale 0.5 (equation 2)
    torch.testing.assert_close(theta, gt_theta([0, 0], [0, 0]))
    # a few MB at most, so the weights can ship with the package
    assert sum(p.numel() for p in net.parameters()) * 4 < 4e6
    # the classifier has the paper's 7 layers: conv, pool, conv, pool, inception, fc, fc
    assert len(net.classifier.features) == 4 and net.classifier.inception is not None
    assert GSTN(n_classes=5)(x)[0].shape == (2, 5)


def test_bad_input_shape_is_a_clear_error():
    net = GSTN()
    with pytest.raises(ValueError, match=r"\(N, 3, 128, 128\) at 0.25 um/px"):
        net(torch.rand(1, 3, 64, 64))
    with pytest.raises(ValueError, match="RGB crops"):
        CiresanCNN()(torch.rand(1, 1, 128, 128))


def test_theta_of_equations_1_to_3_recovers_a_known_offset():
    # a crop whose origin moved by Delta = (20, -12) px shows the cell at centre - Delta
    theta = gt_theta(20.0, -12.0)
    assert theta[0, 0, 0] == THETA_SCALE == 0.5 and theta[0, 1, 1] == 0.5
    assert theta[0, 0, 1] == 0 and theta[0, 1, 0] == 0
    assert theta[0, 0, 2].item() == pytest.approx(-2 * 20 / 128)
    assert theta[0, 1, 2].item() == pytest.approx(2 * 12 / 128)
    x, y = theta_to_xy(theta)
    c = (INPUT_SIZE - 1) / 2
    assert x.item() == pytest.approx(c - 20) and y.item() == pytest.approx(c + 12)
    torch.testing.assert_close(xy_to_theta(x, y), theta)


def test_transformer_samples_the_cell_the_theta_points_at():
    net = GSTN().eval()
    img = torch.rand(1, 3, INPUT_SIZE, INPUT_SIZE)
    # centred input: the 64 x 64 crop is exactly the centre of the image
    crop = net.crop(img, gt_theta([0.0], [0.0]))
    assert crop.shape == (1, 3, CROP_SIZE, CROP_SIZE)
    torch.testing.assert_close(crop, img[..., 32:96, 32:96])
    # an integer offset moves the window by exactly that many pixels
    crop = net.crop(img, gt_theta([-16.0], [10.0]))
    torch.testing.assert_close(crop, img[..., 32 - 10 : 96 - 10, 32 + 16 : 96 + 16])


def test_localizer_loss_is_equation_8():
    gt = gt_theta([8.0, -4.0], [0.0, 16.0])
    assert loc_loss(gt, gt).item() == pytest.approx(0, abs=1e-6)
    # a rotation with the right scale costs nothing: the angle is a free parameter
    a = 0.7
    rot = gt.clone()
    rot[:, 0, 0] = rot[:, 1, 1] = 0.5 * np.cos(a)
    rot[:, 0, 1], rot[:, 1, 0] = -0.5 * np.sin(a), 0.5 * np.sin(a)
    assert loc_loss(rot, gt).item() == pytest.approx(0, abs=1e-6)
    # skew, wrong scale and wrong translation each cost their squared error
    bad = gt.clone()
    bad[:, 0, 2] += 0.1
    assert loc_loss(bad, gt).item() == pytest.approx(0.01, rel=1e-4)
    skew = gt.clone()
    skew[:, 0, 1] = 0.1  # off-diagonals no longer opposite; column 2 scale grows too
    expected = (np.sqrt(0.01 + 0.25) - 0.5) ** 2 + 0.01
    assert loc_loss(skew, gt).item() == pytest.approx(expected, rel=1e-4)


def test_loss_trains_the_localizer_towards_the_offset():
    torch.manual_seed(0)
    net = GSTN()
    x = torch.zeros(2, 3, 128, 128)
    gt = gt_theta(torch.full((2,), 10.0), torch.full((2,), -10.0))
    opt = torch.optim.Adam(net.localizer.fc2.parameters(), lr=1e-2)
    first = None
    for _ in range(8):
        loss = loc_loss(net.localizer(x), gt)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first / 4
