"""Each thread its own open Slide of a file: one file handle read from many threads is not safe.

Used by the tile workers of ``pipeline/analyze.py`` (many slides through one
worker: a few kept open, bad file tiles filled) and of ``detect_task`` (one
slide, its tiles on a thread pool).
"""

from __future__ import annotations

import threading
from pathlib import Path


class ThreadSlides:
    """Open slides per thread, one per ``(path, mpp)``.

    Parameters
    ----------
    keep : int or None
        How many slides one thread keeps open; past it the one opened first is
        closed. None: no limit.
    fill_bad_tiles : bool
        Set :attr:`Slide.fill_bad_tiles` on every slide it opens (otherwise
        they keep the default).

    Each instance has caches of its own, so a slide opened with one setting is
    never handed to a user of another.

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> in_memory = SimpleNamespace(path="<array>", mpp=0.25)
    >>> ThreadSlides().reopen(in_memory) is in_memory  # nothing to re-open
    True
    """

    def __init__(self, keep: int | None = None, fill_bad_tiles: bool = False):
        self.keep = keep
        self.fill_bad_tiles = fill_bad_tiles
        self._local = threading.local()

    def open(self, path: str, mpp: float | None):
        """This thread's open Slide of ``path`` at ``mpp`` (opened on first use)."""
        from .slide import open_slide

        cache = getattr(self._local, "slides", None)
        if cache is None:
            cache = self._local.slides = {}
        key = (path, mpp)
        if key not in cache:
            if self.keep is not None and len(cache) >= self.keep:
                cache.pop(next(iter(cache))).close()
            cache[key] = open_slide(path, mpp=mpp)
            if self.fill_bad_tiles:
                cache[key].fill_bad_tiles = True
        return cache[key]

    def reopen(self, slide):
        """This thread's own Slide of the file ``slide`` reads; ``slide`` itself when it is no file."""
        path = Path(slide.path)
        if not path.exists():
            return slide
        return self.open(str(path), slide.mpp)
