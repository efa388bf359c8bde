"""``napari-mitosis type`` and ``napari-mitosis train typing``."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from skimage.io import imsave

from napari_mitosis.cli import main
from napari_mitosis.core.synthetic import SyntheticHE
from napari_mitosis.models.registry import read_spec


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A 320 x 320 um synthetic tissue image at 1 um/px (enough nuclei to train on) and a small one at 0.5 um/px."""
    folder = tmp_path_factory.mktemp("img")
    big, _ = SyntheticHE(shape=(320, 320), mpp=1.0, seed=5, tissue="full").render(0, 0, 320, 320)
    imsave(folder / "big.png", big)
    small, _ = SyntheticHE(shape=(160, 200), mpp=0.5, seed=5, tissue="full").render(0, 0, 160, 200)
    imsave(folder / "small.png", small)
    return folder / "big.png", folder / "small.png"


@pytest.fixture(scope="module")
def tissue_png(images):
    return images[1]


def test_type_writes_a_table_with_types_and_prints_counts(tissue_png, tmp_path, capsys):
    out = tmp_path / "types.csv"
    assert main(["type", str(tissue_png), "--mpp", "0.5", "--out", str(out), "--device", "cpu"]) == 0
    t = pd.read_csv(out)
    names = read_spec("nuclei-infogan").classes
    assert {"id", "x", "y", "area_um2", "type", "type_name", "at_border"} <= set(t.columns)
    assert {f"p_type_{k}" for k in range(len(names))} <= set(t.columns)
    assert set(t.type) <= set(range(-1, len(names)))
    printed = capsys.readouterr()
    assert f"{len(t)} nuclei" in printed.out
    typed = t[t.type >= 0]
    for name in set(typed.type_name):  # the counts per type are printed
        assert f"{name}: {int((t.type_name == name).sum())}" in printed.out
    assert "not typed" in printed.err  # nuclei cut by the image edge are reported


def test_type_with_a_nucleus_table_and_roi(tissue_png, tmp_path):
    nuclei = tmp_path / "nuclei.csv"
    pd.DataFrame({"id": [1, 2, 3], "x": [100.0, 130.0, 190.0], "y": [80.0, 100.0, 40.0]}).to_csv(nuclei, index=False)
    out = tmp_path / "types.csv"
    rc = main(["type", str(tissue_png), "--mpp", "0.5", "--nuclei", str(nuclei), "--roi", "50,50,100,100",
               "--out", str(out), "--device", "cpu"])
    assert rc == 0
    t = pd.read_csv(out)
    assert list(t.id) == [1, 2] and (t.type >= 0).all()  # nucleus 3 lies outside the ROI


def test_bad_input_ends_with_one_line_and_status_2(tissue_png, tmp_path, capsys):
    assert main(["type", str(tissue_png), "--mpp", "0.5", "--out", str(tmp_path / "t.txt")]) == 2
    assert "--out must be a .csv" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"a": [1]}).to_csv(bad, index=False)
    assert main(["type", str(tissue_png), "--mpp", "0.5", "--nuclei", str(bad), "--out", str(tmp_path / "t.csv")]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # (after the progress bar)
    assert last.startswith("napari-mitosis: error:") and "needs x and y" in last


def test_train_refuses_too_few_nuclei_and_too_many_types(tissue_png, tmp_path, capsys):
    rc = main(["train", "typing", "--images", str(tissue_png), "--mpp", "0.5", "--normalize", "none",
               "--out", str(tmp_path / "run"), "--max-iters", "2"])
    assert rc == 2
    assert "at least 200 are needed" in capsys.readouterr().err
    rc = main(["train", "typing", "--images", str(tissue_png), "--mpp", "0.5", "--normalize", "none", "--k", "11",
               "--out", str(tmp_path / "run")])
    assert rc == 2
    assert "between 2 and 10" in capsys.readouterr().err


def test_train_on_unlabelled_images_writes_a_loadable_model(images, tmp_path, capsys):
    img = images[0]
    run = tmp_path / "run"
    rc = main(["train", "typing", "--images", str(img), "--mpp", "1.0", "--normalize", "none", "--k", "2",
               "--width", "4", "--batch", "8", "--max-iters", "2", "--checkpoint-every", "1", "--out", str(run)])
    assert rc == 0, capsys.readouterr().err
    spec = json.loads((run / "nuclei-infogan.json").read_text())
    assert spec["task"] == "typing" and spec["config"]["n_classes"] == 2 and spec["classes"] == ["type 1", "type 2"]
    assert "train typing" in spec["training"]["command"]
    assert "nuclei-infogan" in (run / "nuclei-infogan.md").read_text()
    from napari_mitosis.models.registry import load_model

    net, _ = load_model("nuclei-infogan", device="cpu", folder=run)
    assert net.n_classes == 2
