"""review_task: the steps it is asked for are checked before anything runs."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from napari_mitosis.pipeline.review import ReviewRunError, review_task


def test_an_unknown_step_is_an_error_naming_it_not_silently_dropped():
    slide = SimpleNamespace(mpp=0.25, path="s.svs", shape=(100, 100))
    with pytest.raises(ReviewRunError, match=r"unknown step\(s\) \['mitoses'\]"):
        next(review_task(slide, steps=("cells", "mitoses")))


def test_no_step_at_all_is_an_error():
    slide = SimpleNamespace(mpp=0.25, path="s.svs", shape=(100, 100))
    with pytest.raises(ReviewRunError, match="at least one step"):
        next(review_task(slide, steps=()))
