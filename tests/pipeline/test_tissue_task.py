import numpy as np
import pytest

from napari_mitosis.io import open_slide
from napari_mitosis.pipeline import Progress, run, tissue_task
from tests.conftest import shared_file


def test_tissue_task_yields_progress_then_the_mask(synthetic_slide_file, synth):
    with open_slide(synthetic_slide_file) as slide:
        seen = []
        tissue = run(tissue_task(slide, rows_per_step=128), seen.append)
    assert all(isinstance(p, Progress) for p in seen)
    assert [p.done for p in seen] == sorted(p.done for p in seen) and seen[-1].fraction == 1.0
    assert len(seen) >= 4  # one step per band of rows: the GUI can show progress and cancel
    assert tissue.mpp == pytest.approx(8.0, rel=0.05)
    truth = synth.tissue_truth(tissue.downsample)[: tissue.mask.shape[0], : tissue.mask.shape[1]]
    agree = (tissue.mask[: truth.shape[0], : truth.shape[1]] == truth).mean()
    assert agree > 0.9
    assert tissue.area_mm2 == pytest.approx(tissue.mask.sum() * tissue.mpp**2 / 1e6)


def test_tissue_without_pixel_size_still_works():
    with open_slide(shared_file("slides", "TCGA-CR-7395-01A-01-TS1.svs")) as slide:
        tissue = run(tissue_task(slide))
    assert tissue.mpp is None and tissue.area_mm2 is None
    assert 0.4 < tissue.fraction < 0.9
    assert np.isclose(tissue.downsample * tissue.mask.shape[1], 4443, rtol=0.01)
