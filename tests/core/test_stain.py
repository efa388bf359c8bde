"""Stain re-rendering: each stain keeps its amount and takes the target's hue."""

import numpy as np

from napari_mitosis.core.stain import EOSIN, HEMATOXYLIN, render_stains, restain, stain_basis
from napari_mitosis.core.stain_norm import MacenkoNormalizer

MITOS_H = np.array([0.403, 0.785, 0.470])  # measured: MITOS-ATYPIA-14's hematoxylin, bluer than most labs'


def test_restain_to_the_same_vectors_changes_nothing():
    rng = np.random.default_rng(0)
    img = render_stains([rng.uniform(0, 1.2, (16, 16)), rng.uniform(0, 0.8, (16, 16))], [HEMATOXYLIN, EOSIN], 255.0)
    assert np.abs(restain(img, [HEMATOXYLIN, EOSIN], [HEMATOXYLIN, EOSIN]).astype(int) - img).max() <= 1


def test_restained_image_has_the_target_stain_vectors_and_the_same_amounts():
    rng = np.random.default_rng(1)
    h, e = rng.uniform(0, 1.0, (64, 64)), rng.uniform(0, 0.6, (64, 64))
    img = render_stains([h, e], [HEMATOXYLIN, EOSIN], 255.0)
    out = restain(img, [HEMATOXYLIN, EOSIN], [MITOS_H, EOSIN])
    expected = render_stains([h, e], [MITOS_H, EOSIN], 255.0)
    assert np.abs(out.astype(int) - expected).max() <= 2
    # and Macenko finds the new hematoxylin in it
    found = MacenkoNormalizer().source_stats(out)["stains"][0]
    assert np.degrees(np.arccos(found @ (MITOS_H / np.linalg.norm(MITOS_H)))) < 3


def test_stain_basis_is_unit_rows_with_the_residual_orthogonal():
    b = stain_basis([HEMATOXYLIN * 3, EOSIN])
    assert np.allclose(np.linalg.norm(b, axis=1), 1, atol=1e-6)
    assert abs(b[2] @ b[0]) < 1e-6 and abs(b[2] @ b[1]) < 1e-6
