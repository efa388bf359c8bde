"""Every network's to_tensor is the shared rgb_to_tensor and gives exactly what it gave before.

The reference of each test is that module's own conversion as it was written
before they were merged into models/tensors.py (values, dtype, shape and
memory layout).
"""

import numpy as np
import pytest
import torch

from napari_mitosis.models import mil, screen_net, stain_net, unet
from napari_mitosis.models.tensors import rgb_to_tensor
from napari_mitosis.pipeline import nucleus_types


@pytest.fixture
def batch():
    return np.random.default_rng(0).integers(0, 256, (3, 7, 9, 3), dtype=np.uint8)


def same(new, old):
    assert new.dtype == old.dtype == torch.float32
    assert new.shape == old.shape
    assert new.is_contiguous() == old.is_contiguous()
    assert new.is_contiguous(memory_format=torch.channels_last) == old.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(new, old)


def test_nucleus_types_input_is_minus_one_to_one_as_before(batch):
    old = torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2))).float().div_(127.5).sub_(1.0)
    same(nucleus_types.to_tensor(batch), old)


def test_screen_net_input_is_raw_values_in_channels_last_memory_as_before(batch):
    old = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).float()
    old = old.contiguous(memory_format=torch.channels_last)
    same(screen_net.to_tensor(batch), old)


@pytest.mark.parametrize("module", [stain_net, mil], ids=["stain_net", "mil"])
def test_one_image_in_zero_to_one_as_before(batch, module):
    rgb = batch[1]
    old = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float() / 255.0
    same(module.to_tensor(rgb), old)


def test_unet_input_is_zero_to_one_for_an_image_or_a_batch_as_before(batch):
    for a in (batch, batch[0]):
        b = a[None] if a.ndim == 3 else a
        old = torch.from_numpy(np.ascontiguousarray(b.transpose(0, 3, 1, 2))).float().div_(255.0)
        same(unet.to_tensor(a), old)


def test_a_view_of_a_larger_array_converts_like_a_copy(batch):
    view = batch[:, 1:5, ::2]
    same(rgb_to_tensor(view), rgb_to_tensor(view.copy()))
    same(rgb_to_tensor(view, channels_last=True), rgb_to_tensor(view.copy(), channels_last=True))


def test_the_examples_of_models_tensors_hold():
    import doctest

    from napari_mitosis.models import tensors

    result = doctest.testmod(tensors)
    assert result.attempted >= 2 and result.failed == 0
