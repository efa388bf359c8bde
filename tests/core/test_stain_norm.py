import numpy as np
import pytest

from napari_mitosis.core.stain_metrics import delta_e, hellinger, histogram_correlation, structure_ssim
from napari_mitosis.core.stain_norm import (
    MacenkoNormalizer,
    ReinhardNormalizer,
    StainNormError,
    load_normalizer,
    save_normalizer,
)
from napari_mitosis.core.synthetic import synthetic_he

# two "labs": the same kind of tissue, stained with different eosin and hematoxylin
LAB_A = {"tissue": "full"}
LAB_B = {"tissue": "full", "hematoxylin": (0.45, 0.80, 0.40), "eosin": (0.05, 0.95, 0.30), "stain_strength": 1.35}
METHODS = [ReinhardNormalizer, MacenkoNormalizer]


@pytest.fixture(scope="module")
def images():
    ref = synthetic_he((256, 256), seed=1, **LAB_A)[0]
    src = synthetic_he((256, 256), seed=2, **LAB_B)[0]
    same_style = synthetic_he((256, 256), seed=2, **LAB_A)[0]  # what src looks like in lab A
    return ref, src, same_style


@pytest.mark.parametrize("method", METHODS)
def test_normalised_image_moves_to_the_reference_style(method, images):
    ref, src, same_style = images
    out = method().fit(ref).transform(src)
    assert out.shape == src.shape and out.dtype == np.uint8
    assert delta_e(out, same_style) < delta_e(src, same_style) / 2
    assert histogram_correlation(out, ref) > histogram_correlation(src, ref)
    assert hellinger(out, ref) < hellinger(src, ref)
    assert structure_ssim(src, out) > 0.6  # the tissue is still the same tissue


@pytest.mark.parametrize("method", METHODS)
def test_glass_stays_white_and_nothing_overflows(method, images):
    ref, src, _ = images
    img = src.copy()
    img[:, :100] = 243  # a strip of glass
    out = method().fit(ref).transform(img)
    assert np.abs(out[:, :100].astype(int) - 243).max() <= 2
    blank = np.full((64, 64, 3), 245, np.uint8)
    np.testing.assert_array_equal(method().fit(ref).transform(blank), blank)


@pytest.mark.parametrize("method", METHODS)
def test_save_and_load_give_the_same_result(method, images, tmp_path):
    ref, src, _ = images
    norm = method().fit(ref)
    path = save_normalizer(norm, tmp_path / "norm.json")
    again = load_normalizer(path)
    np.testing.assert_array_equal(again.transform(src), norm.transform(src))


def test_source_stats_make_tiles_agree(images):
    """With shared source statistics, transforming halves equals transforming the whole."""
    ref, src, _ = images
    norm = MacenkoNormalizer().fit(ref)
    stats = norm.source_stats(src)
    whole = norm.transform(src, source=stats)
    halves = np.concatenate([norm.transform(src[:, :128], source=stats), norm.transform(src[:, 128:], source=stats)], 1)
    np.testing.assert_array_equal(whole, halves)


@pytest.mark.parametrize("method", METHODS)
def test_bad_input_is_refused_clearly(method, images):
    ref, src, _ = images
    with pytest.raises(StainNormError, match="no tissue"):
        method().fit(np.full((128, 128, 3), 250, np.uint8))
    with pytest.raises(StainNormError, match="grayscale"):
        method().fit(ref[..., 0])
    with pytest.raises(StainNormError, match="at least 16 px"):
        method().fit(ref[:8, :8])
    with pytest.raises(StainNormError, match="call fit"):
        method().transform(src)
    with pytest.raises(StainNormError, match="uint8"):
        method().fit(ref.astype(np.uint16))


def test_macenko_recovers_the_stain_vectors():
    from napari_mitosis.core.stain import unit

    h, e = (0.55, 0.75, 0.37), (0.1, 0.85, 0.5)
    img = synthetic_he((384, 384), seed=5, tissue="full", hematoxylin=h, eosin=e)[0]
    stains = MacenkoNormalizer().fit(img).target["stains"]
    assert np.dot(stains[0], unit(h)) > 0.97
    assert np.dot(stains[1], unit(e)) > 0.97
