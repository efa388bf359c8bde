"""InfoGAN (G, shared D body, D_D and D_Q), its training loop, k-means and the Hungarian evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_mitosis.models.infogan import InfoGAN, gradient_penalty
from napari_mitosis.training.train_nucleus_types import (
    TrainConfig,
    augment_batch,
    check_k,
    evaluate_clusters,
    kmeans,
    nmi,
    train_gan,
)
from napari_mitosis.pipeline.nucleus_types import STORE, TypingError


def test_shapes_ranges_and_heads():
    net = InfoGAN(n_classes=5, width=8)
    z, c = net.sample_latent(6, codes=[0, 1, 2, 3, 4, 0], generator=torch.Generator().manual_seed(1))
    assert z.shape == (6, 16) and c.shape == (6, 5)
    assert c.argmax(1).tolist() == [0, 1, 2, 3, 4, 0]
    net.eval()
    x = net.generate(z, c)
    assert x.shape == (6, 3, 40, 40)
    assert float(x.detach().min()) >= -1 and float(x.detach().max()) <= 1  # tanh: the input range of real nuclei
    score, logits = net.heads(x)
    assert score.shape == (6,) and logits.shape == (6, 5)
    # one pass of the shared body gives the same as the two heads separately
    assert torch.allclose(score, net.critic(x)) and torch.allclose(logits, net.classify(x))


def test_wrong_input_is_refused_with_the_expected_shape():
    net = InfoGAN(n_classes=3, width=8)
    with pytest.raises(ValueError, match=r"\(N, 3, 40, 40\)"):
        net.classify(torch.zeros(2, 3, 64, 64))
    with pytest.raises(ValueError, match="at least 2 classes"):
        InfoGAN(n_classes=1)


def test_gradient_penalty_is_zero_for_a_unit_gradient_critic():
    net = InfoGAN(n_classes=2, width=4)
    # replace the critic by f(x) = <w, x> with ||w|| = 1: the penalty must vanish
    w = torch.randn(3 * 40 * 40)
    w /= w.norm()
    net.critic = lambda x: (x.flatten(1) * w).sum(1)
    real, fake = torch.rand(4, 3, 40, 40), torch.rand(4, 3, 40, 40)
    assert float(gradient_penalty(net, real, fake)) == pytest.approx(0.0, abs=1e-6)
    net.critic = lambda x: 3 * (x.flatten(1) * w).sum(1)  # gradient norm 3 -> (3 - 1)^2 = 4
    assert float(gradient_penalty(net, real, fake)) == pytest.approx(4.0, rel=1e-5)


def test_rotation_augmentation_keeps_the_nucleus_centred():
    store = np.full((8, STORE, STORE, 3), 230, np.uint8)
    c = STORE // 2
    store[:, c - 4 : c + 4, c - 4 : c + 4] = 20  # a dark nucleus in the middle
    store[:, c - 2 : c + 2, c + 10 : c + 20] = 20  # and a dark bar to its right
    x = augment_batch(store, torch.Generator().manual_seed(0))
    assert x.shape == (8, 3, 40, 40)
    assert float(x[:, :, 18:22, 18:22].max()) < -0.7  # the centre stays dark whatever the angle
    # the bar ends up at different places: the rotations differ
    flat = x.mean(1).flatten(1)
    assert float((flat[0] - flat[1:]).abs().max()) > 0.5


def _two_kinds(n=300, seed=0):
    """Small dark round nuclei and large pale elongated ones, on a pale background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:STORE, 0:STORE] - (STORE - 1) / 2
    out = np.full((n, STORE, STORE, 3), 225, np.uint8)
    kind = np.arange(n) % 2
    for i in range(n):
        a = rng.uniform(0, np.pi)
        u, v = xx * np.cos(a) + yy * np.sin(a), -xx * np.sin(a) + yy * np.cos(a)
        if kind[i] == 0:
            m = u**2 + v**2 < 4**2
            out[i][m] = (60, 30, 110)
        else:
            m = (u / 13) ** 2 + (v / 5) ** 2 < 1
            out[i][m] = (170, 120, 190)
    return out, kind


def test_training_learns_the_code_and_resumes(tmp_path):
    """The mutual-information loss makes the code c recoverable from G(z, c) by D_Q.

    Learning rates and the information weight are raised (10x, 5) so that this
    takes seconds; the mechanism is the same as in the paper's settings.
    """
    torch.manual_seed(0)
    pool, _ = _two_kinds(200)
    cfg = TrainConfig(out=str(tmp_path), k=2, width=8, batch=16, max_iters=60, checkpoint_every=20, minutes=5,
                      resume=False, lr_g=1e-3, lr_d=1e-3, lr_q=2e-3, info=5.0)
    net, history = train_gan(pool, cfg, log=lambda m: None)
    assert [h["iter"] for h in history] == [20, 40, 60]
    assert history[0]["q_acc"] < 0.8 < history[-1]["q_acc"]  # D_Q recovers c far above chance (0.5)
    # the code changes the generated nucleus for the same noise z
    z, _ = net.sample_latent(8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        a = net.generate(z, torch.nn.functional.one_hot(torch.zeros(8, dtype=torch.long), 2).float())
        b = net.generate(z, torch.nn.functional.one_hot(torch.ones(8, dtype=torch.long), 2).float())
        assert (net.classify(a).argmax(1) != net.classify(b).argmax(1)).float().mean() > 0.7
    assert (tmp_path / "checkpoint.pt").exists() and (tmp_path / "history.json").exists()
    # resuming continues from the checkpoint instead of starting over
    _, history2 = train_gan(pool, TrainConfig(**{**cfg.__dict__, "max_iters": 60}), log=lambda m: None)
    assert history2[-1]["iter"] == 60 and len(history2) == 3


def test_k_the_data_cannot_support_is_refused():
    with pytest.raises(TypingError, match="only 120 nuclei"):
        check_k(3, 120)
    with pytest.raises(TypingError, match=r"K=8.*K <= 6"):
        check_k(8, 300)
    with pytest.raises(TypingError, match="between 2 and"):
        check_k(1, 1000)
    check_k(5, 1000)


def test_kmeans_separates_blobs_and_refuses_too_few_points():
    rng = np.random.default_rng(0)
    x = np.r_[rng.normal(0, 0.3, (30, 5)), rng.normal(4, 0.3, (30, 5)), rng.normal(-4, 0.3, (30, 5))]
    lab, centres = kmeans(x, 3)
    assert centres.shape == (3, 5)
    assert sorted(len(set(lab[i * 30 : (i + 1) * 30])) for i in range(3)) == [1, 1, 1]
    assert len(set(lab)) == 3
    with pytest.raises(TypingError, match="cannot make 4 clusters"):
        kmeans(x[:3], 4)


def test_hungarian_evaluation_by_hand():
    classes = ["a", "b", "c"]
    y = ["a"] * 4 + ["b"] * 3 + ["c"] * 3
    clusters = [2, 2, 2, 0, 0, 0, 0, 1, 1, 0]  # cluster 2 -> a, 0 -> b, 1 -> c
    m = evaluate_clusters(y, clusters, classes, k=3)
    assert m["match"] == {"cluster 0": "b", "cluster 1": "c", "cluster 2": "a"}
    assert m["accuracy"] == pytest.approx(8 / 10)
    a, b, c = (m["per_class"][k] for k in classes)
    assert (a["precision"], a["sensitivity"]) == (1.0, 0.75)
    assert (b["precision"], b["sensitivity"]) == (pytest.approx(3 / 5), 1.0)
    assert c["f1"] == pytest.approx(2 * 1.0 * (2 / 3) / (1 + 2 / 3))
    assert m["confusion"] == [[3, 1, 0], [0, 3, 0], [0, 1, 2]]  # columns in matched order: 2, 0, 1
    # cluster ids are arbitrary: a permutation changes nothing
    perm = evaluate_clusters(y, [{0: 1, 1: 2, 2: 0}[v] for v in clusters], classes, k=3)
    assert perm["accuracy"] == m["accuracy"] and perm["confusion"] == m["confusion"]
    assert nmi([0, 0, 1, 1], [1, 1, 0, 0]) == pytest.approx(1.0)
    assert nmi([0, 1, 0, 1], [0, 0, 1, 1]) == pytest.approx(0.0, abs=1e-12)


def test_more_clusters_than_classes_leave_clusters_unmatched():
    m = evaluate_clusters(["a", "a", "b", "b"], [0, 1, 2, 2], ["a", "b"], k=3)
    assert m["accuracy"] == pytest.approx(3 / 4)  # one of the two 'a' clusters has no class
    assert len(m["confusion"][0]) == 3
