"""Helpers shared by the sub-commands."""

from __future__ import annotations

import sys


def progress_bar(desc: str):
    """A tqdm bar fed with :class:`~napari_mitosis.pipeline.Progress` (or done/total)."""
    from tqdm import tqdm

    bar = tqdm(total=1, desc=desc, unit="step", file=sys.stderr, leave=False, dynamic_ncols=True)

    def update(p, total=None):
        done, tot, msg = (p, total, "") if total is not None else (p.done, p.total, p.message)
        bar.total = max(tot, 1)
        bar.n = done
        if msg:
            bar.set_postfix_str(msg, refresh=False)
        bar.refresh()

    update.close = bar.close
    return update


def parse_roi(text: str) -> tuple[int, int, int, int]:
    """``x,y,w,h`` (level-0 pixels) from the command line, or a clear ``ValueError``."""
    try:
        x, y, w, h = (int(round(float(v))) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--roi must be x,y,w,h in level-0 pixels, got {text!r}") from None
    if w <= 0 or h <= 0:
        raise ValueError(f"--roi width and height must be positive, got {text!r}")
    return x, y, w, h
