"""cell-screen: patches, probabilities, the shipped model, and a real-data sanity check."""

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_mitosis.models.screen_net import (
    CLASSES,
    build_screen_net,
    patches_at,
    screen_probs,
)

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_patches_at_centre_and_borders():
    img = np.arange(20 * 30 * 3, dtype=np.int64).reshape(20, 30, 3).astype(np.uint8)
    img[..., :] = np.arange(30, dtype=np.uint8)[None, :, None]  # column index
    p = patches_at(img, [10.0, 0.0, 29.4, -50.0], [10.0, 0.0, 10.4, 5.0], 8)
    assert p.shape == (4, 8, 8, 3) and p.dtype == np.uint8
    assert p[0, 4, 4, 0] == 10 and p[0, 4, 0, 0] == 6 and p[0, 0, 7, 0] == 13  # centre at size // 2
    assert (p[1, :4] == 255).all() and (p[1, :, :4] == 255).all() and p[1, 4, 4, 0] == 0  # top-left corner: white outside
    assert (p[2, :, 5:] == 255).all() and p[2, 4, 4, 0] == 29  # right border
    assert (p[3] == 255).all()  # entirely outside
    assert patches_at(img, [], [], 8).shape == (0, 8, 8, 3)


def test_screen_probs_shapes_and_probabilities():
    net = build_screen_net(widths=(4, 8, 8, 8)).eval()
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    xs, ys = rng.uniform(-5, 55, 300), rng.uniform(-5, 45, 300)
    p = screen_probs(net, rgb, xs, ys, batch=64)
    assert p.shape == (300, 3) and p.dtype == np.float32
    assert np.all(p >= 0) and np.allclose(p.sum(1), 1, atol=1e-5)
    # batching does not change the result; a single point gives the same as in a batch
    np.testing.assert_allclose(screen_probs(net, rgb, xs, ys, batch=300), p, atol=1e-5)
    np.testing.assert_allclose(screen_probs(net, rgb, xs[7:8], ys[7:8])[0], p[7], atol=1e-5)
    assert screen_probs(net, rgb, [], []).shape == (0, 3)
    # BatchNorm folded as whole-slide detection runs it: the same probabilities
    from napari_mitosis.models.inference import fast_cpu

    net.features[1].running_mean.uniform_(-0.5, 0.5)
    net.features[1].running_var.uniform_(0.5, 2.0)
    np.testing.assert_allclose(screen_probs(fast_cpu(net, channels_last=False), rgb, xs, ys),
                               screen_probs(net, rgb, xs, ys), atol=1e-5)


def test_shipped_model_loads_and_runs():
    from napari_mitosis.models.registry import load_model

    net, spec = load_model("cell-screen", "cpu")
    assert spec.task == "screening" and spec.mpp == 0.5 and list(spec.classes) == list(CLASSES)
    assert 0.0 < spec.thresholds["keep"] < 1.0
    assert net.patch_size == spec.patch_size
    assert sum(p.numel() for p in net.parameters()) < 200_000
    rgb = np.full((64, 64, 3), 230, np.uint8)
    rgb[28:36, 28:36] = (60, 30, 110)  # a dark blob
    p = screen_probs(net, rgb, [32.0, 5.0], [32.0, 5.0])
    assert p.shape == (2, 3) and np.allclose(p.sum(1), 1, atol=1e-5)


@pytest.mark.skipif(not (DATA / "mitosis" / "mitos_atypia14" / "points.csv").exists(), reason="no ../shared/data")
def test_shipped_model_ranks_mitoses_above_lookalikes_on_mitos_frames():
    """Sanity check (in-sample: the shipped model saw these frames): on the first four frames holding
    both a mitosis candidate and a look-alike candidate, mitoses get the higher mean p_mitotic_figure."""
    import pandas as pd

    from napari_mitosis.training.cell_data import read_rgb
    from napari_mitosis.models.registry import load_model
    from napari_mitosis.training.train_screen import (
        MITOS_MPP,
        candidates,
        label_candidates,
    )

    net, _ = load_model("cell-screen", "cpu")
    root = DATA / "mitosis" / "mitos_atypia14"
    pts = pd.read_csv(root / "points.csv")
    pos, neg = [], []
    for frame in ("frames/A03_00Ab.jpg", "frames/A03_00Ac.jpg", "frames/A03_00Ba.jpg", "frames/A03_00Bb.jpg"):
        df = pts[pts.frame == frame]
        f, rgb = candidates(read_rgb(root / frame), MITOS_MPP)
        label, status = label_candidates(f[["x", "y"]].to_numpy(), MITOS_MPP,
                                         mitoses=df[df.label == "mitosis"][["x", "y"]].to_numpy(float),
                                         lookalikes=df[df.label == "not_mitosis"][["x", "y"]].to_numpy(float))
        p = screen_probs(net, rgb, f.sx.to_numpy(), f.sy.to_numpy())[:, 0]
        pos += list(p[label == "mitotic_figure"])
        neg += list(p[status == "hard_negative"])
    assert len(pos) >= 3 and len(neg) >= 5
    assert np.mean(pos) > np.mean(neg)
