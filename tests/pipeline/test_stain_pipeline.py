import numpy as np
import pytest

from napari_mitosis.core.stain_norm import MacenkoNormalizer, StainNormError
from napari_mitosis.core.synthetic import synthetic_he
from napari_mitosis.io import open_slide
from napari_mitosis.pipeline import run
from napari_mitosis.pipeline.stain import make_normalizer, normalize_region_task, normalized_levels, slide_source_stats


@pytest.fixture(scope="module")
def reference():
    return synthetic_he((256, 256), seed=9, tissue="full", eosin=(0.05, 0.95, 0.3), stain_strength=1.3)[0]


def test_lazy_levels_equal_the_region_task_without_seams(synthetic_slide_file, reference):
    with open_slide(synthetic_slide_file) as slide:
        norm = MacenkoNormalizer().fit(reference)
        source = slide_source_stats(slide, norm)
        levels = normalized_levels(slide, norm, source)
        assert [lv.shape for lv in levels] == [lv.shape for lv in slide.levels]
        assert levels[0].chunksize == slide.levels[0].chunksize  # lazy, tile by tile
        lazy = levels[0][100:700, 200:1000].compute()  # spans several 256 px tiles
        seen = []
        task = normalize_region_task(slide, norm, 0, 200, 100, 800, 600, tile=300, source=source)
        eager = run(task, seen.append)
    np.testing.assert_array_equal(lazy, eager)
    assert len(seen) >= 6 and seen[-1].fraction == 1.0
    # the style moved: the normalised slide is closer to the reference's colours
    from napari_mitosis.core.stain_metrics import delta_e

    with open_slide(synthetic_slide_file) as slide:
        before = slide.read_region(0, 200, 100, 800, 600)
    assert delta_e(eager, reference) < delta_e(before, reference)


def test_unfitted_normaliser_and_unknown_method(synthetic_slide_file):
    with open_slide(synthetic_slide_file) as slide:
        with pytest.raises(StainNormError, match="fit the normaliser"):
            normalized_levels(slide, MacenkoNormalizer())
    with pytest.raises(StainNormError, match="unknown method"):
        make_normalizer("vahadane-ish")


def test_neural_tiles_batch_and_stitch_without_seams(synthetic_slide_file):
    import torch

    torch.set_num_threads(1)
    norm = make_normalizer("neural", device="cpu")
    with open_slide(synthetic_slide_file) as slide:
        source = slide_source_stats(slide, norm)
        one_tile = run(normalize_region_task(slide, norm, 0, 500, 300, 512, 512, tile=512, source=source))
        tiled = run(normalize_region_task(slide, norm, 0, 500, 300, 512, 512, tile=256, source=source, batch=4))
        unbatched = run(normalize_region_task(slide, norm, 0, 500, 300, 512, 512, tile=256, source=source, batch=1))
    assert np.abs(tiled.astype(int) - unbatched).max() <= 1  # batching changes nothing
    diff = np.abs(tiled.astype(int) - one_tile)
    assert diff.mean() < 1.0 and np.percentile(diff, 99.9) <= 6  # the 32 px halo hides the seams


def test_fit_slide_task_with_a_region_of_the_slide_and_without_reference(synthetic_slide_file):
    from napari_mitosis.pipeline.stain import fit_slide_task

    with open_slide(synthetic_slide_file) as slide:
        norm, levels = run(fit_slide_task(slide, "reinhard", (600, 300, 400, 400)))
        assert norm.fitted and len(levels) == slide.level_count
        # normalising to a region of the slide itself leaves that region nearly unchanged
        assert np.abs(levels[0][300:700, 600:1000].compute().astype(int) - slide.read_region(0, 600, 300, 400, 400)).mean() < 4
        with pytest.raises(StainNormError, match="needs a reference"):
            run(fit_slide_task(slide, "macenko", None))
