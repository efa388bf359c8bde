import json
import shutil

import pytest
import torch

from napari_mitosis.models import registry
from napari_mitosis.models.registry import (
    ALLOWED_BUILDERS,
    WEIGHTS_DIR,
    ModelError,
    ModelSpec,
    file_sha256,
    list_models,
    load_model,
    read_spec,
    resolve_device,
    save_model,
)

TINY = "tests.models.test_registry:Tiny"


@pytest.fixture
def allow_tiny(monkeypatch):
    """Tiny on the allow-list for this test only (the real list holds only the project's networks)."""
    monkeypatch.setattr(registry, "ALLOWED_BUILDERS", ALLOWED_BUILDERS | {TINY})


class Tiny(torch.nn.Module):
    def __init__(self, channels=3):
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, 2, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


def test_save_then_load_gives_the_same_outputs(tmp_path, allow_tiny):
    torch.manual_seed(0)
    net = Tiny(channels=3)
    spec = ModelSpec(name="tiny", task="segmentation", builder="tests.models.test_registry:Tiny", config={"channels": 3}, mpp=0.5, patch_size=64)
    save_model(net, spec, "# tiny\n", folder=tmp_path)
    assert list_models(folder=tmp_path) == ["tiny"]
    assert list_models("classification", folder=tmp_path) == []
    loaded, got_spec = load_model("tiny", device="cpu", folder=tmp_path)
    assert got_spec.sha256 == file_sha256(tmp_path / "tiny.pt")
    assert got_spec == ModelSpec(**{**spec.__dict__, "sha256": got_spec.sha256}) and not loaded.training
    x = torch.rand(1, 3, 16, 16)
    torch.testing.assert_close(loaded(x), net(x))


def test_unknown_model_and_bad_weights_are_clear(tmp_path, allow_tiny):
    with pytest.raises(ModelError, match="no model named 'nope'"):
        load_model("nope", folder=tmp_path)
    spec = ModelSpec(name="broken", task="x", builder="tests.models.test_registry:Tiny")
    save_model(Tiny(), spec, "", folder=tmp_path)
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="does not match the sha256"):
        load_model("broken", folder=tmp_path)
    # a spec of the user's own without a sha256: the weights are still checked by torch
    data = json.loads((tmp_path / "broken.json").read_text())
    data["sha256"] = ""
    (tmp_path / "broken.json").write_text(json.dumps(data))
    with pytest.raises(ModelError, match="cannot load broken.pt"):
        load_model("broken", folder=tmp_path)


# ------------------------------------------------------------- issue 18.1: a model name runs no code
NOT_NAMES = [
    "../../../../tmp/x/evil", "../evil", "..", ".", "", "a/b", "a\\b", "/tmp/evil", "C:evil",
    "~/evil", "evil\x00", "cell-gstn/../../x", " cell-gstn", "cell-gstn\n", ".hidden", "a..b",
    "x" * 200, None, 3, ["cell-gstn"],
]


@pytest.mark.parametrize("name", NOT_NAMES)
def test_a_model_name_that_is_a_path_is_refused_before_anything_is_read(tmp_path, name, monkeypatch):
    opened = []
    monkeypatch.setattr(registry.json, "loads", lambda *a, **k: opened.append(a) or {})
    for call in (lambda: read_spec(name), lambda: load_model(name, device="cpu"),
                 lambda: read_spec(name, tmp_path)):
        with pytest.raises(ModelError, match="not a model name"):
            call()
    assert opened == []


def _evil_spec(folder, builder, name="evil", **extra):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps({"name": name, "task": "x", "builder": builder,
                                                   "config": {"args": ["touch", str(folder / "pwned")]}, **extra}))
    torch.save({}, folder / f"{name}.pt")


@pytest.mark.parametrize("builder", [
    "subprocess:run", "os:system", "builtins:eval", "napari_mitosis.models.gstn:CiresanCNN",
    "napari_mitosis.models.registry:save_model", "tests.models.test_registry:Tiny",
    "napari_mitosis.models.gstn:build_gstn ", "napari_mitosis.models.gstn", "", None, 5,
])
def test_a_spec_builds_only_the_projects_architectures(tmp_path, builder, monkeypatch):
    called = []
    monkeypatch.setattr(registry.importlib, "import_module", lambda *a: called.append(a))
    _evil_spec(tmp_path, builder)
    with pytest.raises(ModelError, match="not one of napari-mitosis's architectures"):
        read_spec("evil", tmp_path)
    with pytest.raises(ModelError, match="not one of napari-mitosis's architectures"):
        load_model("evil", device="cpu", folder=tmp_path)
    with pytest.raises(ModelError, match="architectures"):
        ModelSpec(name="evil", task="x", builder=builder).build()
    assert called == [] and not (tmp_path / "pwned").exists()


def test_the_detect_first_pass_refuses_a_path(tmp_path):
    """The reported attack: ``detect SLIDE --first-pass ../../../../tmp/x/evil`` with evil.json
    asking for ``subprocess:run``; nothing is run and the message is one line."""
    from napari_mitosis.pipeline.detect import DetectError, load_classifier, model_thresholds

    _evil_spec(tmp_path / "x", "subprocess:run")
    rel = "../" * 12 + str(tmp_path / "x" / "evil").lstrip("/")
    with pytest.raises((ModelError, DetectError), match="not a model name"):
        load_classifier(rel, "cpu", None, channels_last=False)
    with pytest.raises(ModelError, match="not a model name"):
        read_spec(rel)
    model_thresholds(rel)  # falls back to the defaults, reads nothing
    assert not (tmp_path / "x" / "pwned").exists()


def test_malformed_specs_are_model_errors(tmp_path):
    tmp_path.joinpath("a.json").write_text("{not json")
    tmp_path.joinpath("b.json").write_text("[1, 2]")
    tmp_path.joinpath("c.json").write_text(json.dumps({"name": "c", "task": "x",
                                                       "builder": "napari_mitosis.models.gstn:build_gstn",
                                                       "evil": 1}))
    tmp_path.joinpath("d.json").write_text(json.dumps({"name": "d"}))
    for name, msg in (("a", "not readable JSON"), ("b", "not a JSON object"), ("c", "unknown fields"),
                      ("d", "incomplete")):
        with pytest.raises(ModelError, match=msg):
            read_spec(name, tmp_path)


def test_every_shipped_spec_carries_the_sha256_of_its_weights():
    names = list_models()
    assert names
    for name in names:
        spec = read_spec(name)
        assert spec.builder in ALLOWED_BUILDERS
        assert spec.sha256 == file_sha256(WEIGHTS_DIR / f"{name}.pt"), name


def test_the_detectors_new_models_are_allowed():
    assert {"napari_mitosis.models.dense_net:build_cell_dense",
            "napari_mitosis.models.effnet:build_effnet_classifier"} <= ALLOWED_BUILDERS


@pytest.mark.parametrize("damage", ["zeroed", "truncated", "one_bit", "other_weights"])
def test_damaged_shipped_weights_are_refused(tmp_path, monkeypatch, damage):
    """A copy of the shipped folder where one weights file is damaged: refused, not loaded silently."""
    folder = tmp_path / "weights"
    shutil.copytree(WEIGHTS_DIR, folder, ignore=shutil.ignore_patterns("*.md"))
    monkeypatch.setattr(registry, "WEIGHTS_DIR", folder)
    pt = folder / "cell-cnn-baseline.pt"
    data = bytearray(pt.read_bytes())
    if damage == "zeroed":
        data = bytearray(len(data))
    elif damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "one_bit":
        data[len(data) // 2] ^= 1
    else:
        data = bytearray((folder / "cell-gstn.pt").read_bytes())
    pt.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="does not match the sha256"):
        load_model("cell-cnn-baseline", device="cpu", folder=folder)
    # and a shipped spec with its sha256 taken out is refused too
    spec = json.loads((folder / "cell-cnn-baseline.json").read_text())
    spec.pop("sha256")
    (folder / "cell-cnn-baseline.json").write_text(json.dumps(spec))
    with pytest.raises(ModelError, match="no sha256"):
        load_model("cell-cnn-baseline", device="cpu", folder=folder)


def test_fp16_weights_hash_and_load(tmp_path):
    """Weights stored in fp16 (as some shipped ones are): the sha256 is of the file's bytes."""
    torch.manual_seed(0)
    spec = ModelSpec(name="half", task="classification", builder="napari_mitosis.models.gstn:build_baseline",
                     config={"n_classes": 3, "width": 4}, patch_size=64)
    net = spec.build()
    save_model(net.half(), spec, "", folder=tmp_path)
    loaded, got = load_model("half", device="cpu", folder=tmp_path)
    assert got.sha256 == file_sha256(tmp_path / "half.pt")
    assert next(loaded.parameters()).dtype == torch.float32


def test_devices():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="no GPU"):
            resolve_device("cuda")
    with pytest.raises(ModelError, match="unknown device"):
        resolve_device("tpu")
