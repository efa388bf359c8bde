"""Tiles with a halo: the one tiling of a region that the tile-by-tile tasks share.

A region of ``H x W`` working pixels is cut into cores of ``tile x tile`` (the
last row and column smaller); each core is read with ``halo`` pixels of context
on every side, so filters and networks see the same neighbourhood everywhere and
a tile keeps only the results of its core (no seams). ``stride``: the read size
of a core is rounded up to a multiple of it (a network's output stride).
"""

from __future__ import annotations

import math
from typing import NamedTuple


class Tile(NamedTuple):
    """One tile, in working pixels of the region: the core ``[cy0, cy1) x [cx0, cx1)`` and the
    box read for it, ``ih x iw`` from ``(iy0, ix0)`` (may reach outside the region)."""

    cy0: int
    cx0: int
    cy1: int
    cx1: int
    iy0: int
    ix0: int
    ih: int
    iw: int


def halo_tiles(H: int, W: int, tile: int, halo: int, stride: int = 1) -> list[Tile]:
    """The tiles of an ``H x W`` region, row by row.

    >>> [t[:4] for t in halo_tiles(5, 7, 4, 2)]
    [(0, 0, 4, 4), (0, 4, 4, 7), (4, 0, 5, 4), (4, 4, 5, 7)]
    >>> halo_tiles(5, 7, 4, 2)[1][4:]  # core 4 x 3 px, read with 2 px of halo
    (-2, 2, 8, 7)
    >>> halo_tiles(5, 7, 4, 2, stride=4)[1][4:]  # ... its width rounded up to the stride
    (-2, 2, 8, 8)
    """
    ny, nx = int(math.ceil(H / tile)), int(math.ceil(W / tile))
    tiles = []
    for ty in range(ny):
        for tx in range(nx):
            cy0, cx0 = ty * tile, tx * tile
            cy1, cx1 = min(cy0 + tile, H), min(cx0 + tile, W)
            ih = int(math.ceil((cy1 - cy0) / stride)) * stride + 2 * halo
            iw = int(math.ceil((cx1 - cx0) / stride)) * stride + 2 * halo
            tiles.append(Tile(cy0, cx0, cy1, cx1, cy0 - halo, cx0 - halo, ih, iw))
    return tiles
