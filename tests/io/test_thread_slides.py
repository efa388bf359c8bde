"""ThreadSlides: one open Slide per file and thread, for the tile workers of analyze and detect_task."""

import threading
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest

from napari_mitosis.io import open_slide, slide as slide_module
from napari_mitosis.io.thread_slides import ThreadSlides


@pytest.fixture
def opened(monkeypatch):
    """Slides opened through the cache, as fakes that remember being closed."""
    log = []

    def fake_open(path, mpp=None):
        s = SimpleNamespace(path=path, mpp=mpp, closed=False, fill_bad_tiles=False)
        s.close = lambda: setattr(s, "closed", True)
        log.append(s)
        return s

    monkeypatch.setattr(slide_module, "open_slide", fake_open)
    return log


def test_a_slide_is_opened_once_per_path_and_pixel_size(opened):
    cache = ThreadSlides()
    a = cache.open("a.svs", 0.25)
    assert cache.open("a.svs", 0.25) is a and cache.open("a.svs", 0.5) is not a
    assert len(opened) == 2


def test_past_keep_the_slide_opened_first_is_closed(opened):
    cache = ThreadSlides(keep=4)
    first = cache.open("0.svs", 0.25)
    for i in range(1, 4):
        cache.open(f"{i}.svs", 0.25)
    assert not first.closed
    cache.open("4.svs", 0.25)
    assert first.closed and sum(s.closed for s in opened) == 1
    assert cache.open("0.svs", 0.25) is not first  # opened again


def test_without_keep_nothing_is_closed(opened):
    cache = ThreadSlides()
    for i in range(10):
        cache.open(f"{i}.svs", 0.25)
    assert not any(s.closed for s in opened)


def test_fill_bad_tiles_is_set_only_when_asked(opened):
    assert ThreadSlides(fill_bad_tiles=True).open("a.svs", 0.25).fill_bad_tiles is True
    assert ThreadSlides().open("a.svs", 0.25).fill_bad_tiles is False


def test_each_thread_and_each_cache_has_its_own_slides(opened):
    cache = ThreadSlides()
    with ThreadPoolExecutor(2) as pool:
        # two threads held at the same time by a barrier, so the pool cannot reuse one
        barrier = threading.Barrier(2)

        def get(_):
            s = cache.open("a.svs", 0.25)
            barrier.wait()
            return s

        a, b = pool.map(get, range(2))
    assert a is not b
    assert ThreadSlides().open("a.svs", 0.25) is not cache.open("a.svs", 0.25)


def test_reopen_gives_the_thread_its_own_slide_of_the_same_file(synthetic_slide_file):
    with open_slide(synthetic_slide_file, mpp=0.3) as slide:
        own = ThreadSlides().reopen(slide)
        try:
            assert own is not slide and own.path == slide.path and own.mpp == slide.mpp == 0.3
        finally:
            own.close()


def test_reopen_passes_a_slide_that_is_no_file_through():
    in_memory = SimpleNamespace(path="not/a/file.svs", mpp=0.25)
    assert ThreadSlides().reopen(in_memory) is in_memory
