"""Shared fixtures: the real data beside the repository, and generated slides."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_mitosis.core.synthetic import SyntheticHE
from napari_mitosis.io.pyramid_writer import write_synthetic_slide

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SLIDES = SHARED / "slides"


def shared_file(*parts) -> Path:
    """A file of ../shared/data, or skip the test when the data is not there."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not available (the plugin works without it; these tests need it)")
    return path


def shipped_mil_geometry() -> tuple[int, int]:
    """Map stride and minimum input (working px) of the shipped ``mitosis-mil`` (2 stages: 8 and 16)."""
    from napari_mitosis.models.mil import min_input
    from napari_mitosis.models.registry import read_spec

    stages = read_spec("mitosis-mil").config["stages"]
    return 2 ** (stages + 1), min_input(stages)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module: small networks run fastest so on a shared 2-core machine."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def synth():
    return SyntheticHE(shape=(1100, 1700), seed=7)


@pytest.fixture(scope="session")
def synthetic_slide_file(tmp_path_factory, synth):
    """A small 2-level JPEG OME-TIFF of synthetic tissue (0.25 um/px)."""
    path = tmp_path_factory.mktemp("slides") / "synthetic.ome.tif"
    write_synthetic_slide(path, synth, tile=256)
    return path


@pytest.fixture
def rgb_image():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
