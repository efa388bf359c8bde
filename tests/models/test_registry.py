import pytest
import torch

from napari_mitosis.models.registry import ModelError, ModelSpec, list_models, load_model, resolve_device, save_model


class Tiny(torch.nn.Module):
    def __init__(self, channels=3):
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, 2, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


def test_save_then_load_gives_the_same_outputs(tmp_path):
    torch.manual_seed(0)
    net = Tiny(channels=3)
    spec = ModelSpec(name="tiny", task="segmentation", builder="tests.models.test_registry:Tiny", config={"channels": 3}, mpp=0.5, patch_size=64)
    save_model(net, spec, "# tiny\n", folder=tmp_path)
    assert list_models(folder=tmp_path) == ["tiny"]
    assert list_models("classification", folder=tmp_path) == []
    loaded, got_spec = load_model("tiny", device="cpu", folder=tmp_path)
    assert got_spec == spec and not loaded.training
    x = torch.rand(1, 3, 16, 16)
    torch.testing.assert_close(loaded(x), net(x))


def test_unknown_model_and_bad_weights_are_clear(tmp_path):
    with pytest.raises(ModelError, match="no model named 'nope'"):
        load_model("nope", folder=tmp_path)
    spec = ModelSpec(name="broken", task="x", builder="tests.models.test_registry:Tiny")
    save_model(Tiny(), spec, "", folder=tmp_path)
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="cannot load broken.pt"):
        load_model("broken", folder=tmp_path)


def test_devices():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="no GPU"):
            resolve_device("cuda")
    with pytest.raises(ModelError, match="unknown device"):
        resolve_device("tpu")
