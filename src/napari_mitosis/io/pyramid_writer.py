"""Write pyramidal tiled TIFF / OME-TIFF tile by tile, in bounded memory.

The image is produced stripe by stripe by a callback, so a 50k x 50k slide
is written without ever holding more than one stripe of level 0. Lower levels
are accumulated by 2x2 averaging into temporary memory-mapped files (a third
of level 0's size on disk) and written after level 0.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from ..core.resample import mean2x2
from ..core.synthetic import SyntheticHE

Render = Callable[[int, int], np.ndarray]  # (y0, rows) -> (rows, width, 3) uint8


def pyramid_shapes(shape: tuple[int, int], smallest: int = 1024) -> list[tuple[int, int]]:
    """Level shapes halving until the longer side is at most ``smallest``.

    Examples
    --------
    >>> pyramid_shapes((5000, 3000), smallest=1024)
    [(5000, 3000), (2500, 1500), (1250, 750), (625, 375)]
    """
    shapes = [tuple(int(s) for s in shape)]
    while max(shapes[-1]) > smallest:
        h, w = shapes[-1]
        shapes.append((max(h // 2, 1), max(w // 2, 1)))
    return shapes


def write_pyramid(
    path,
    shape: tuple[int, int],
    render: Render,
    mpp: float | None = None,
    tile: int = 256,
    compression: str = "jpeg",
    quality: int = 90,
    ome: bool = True,
    smallest: int = 1024,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write a tiled pyramidal RGB TIFF produced stripe by stripe.

    Parameters
    ----------
    path : str or Path
        Output file (``.ome.tif`` for OME-TIFF).
    shape : (rows, columns)
        Level-0 size.
    render : callable ``(y0, rows) -> (rows, columns, 3) uint8``
        Produces level-0 stripes, called with consecutive ``y0`` in steps of
        ``tile`` rows.
    mpp : float, optional
        Pixel size, written as OME PhysicalSize and as resolution tags.
    tile : int
        Tile size (multiple of 16).
    compression : str
        ``jpeg`` (default), ``jpeg2000``, ``zlib``, ``none`` ...
    ome : bool
        OME-TIFF with SubIFD levels; otherwise a generic TIFF whose reduced
        levels are SubIFDs too.
    progress : callable ``(done, total)``, optional
        Called after every stripe of every level.

    Returns
    -------
    Path of the file written (atomically: a temporary name, then renamed).
    """
    import tifffile

    path = Path(path)
    shapes = pyramid_shapes(shape, smallest)
    height, width = shapes[0]
    comp = None if compression in (None, "none") else compression
    comp_args = {"level": quality} if comp in ("jpeg", "jpeg2000", "jpegxl", "webp") else None
    res = {}
    if mpp:
        res = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}
    stripes = [int(np.ceil(h / tile)) for h, _ in shapes]
    total, done = sum(stripes), 0

    tmpdir = tempfile.mkdtemp(prefix="napari-mitosis-pyramid-", dir=path.parent)
    part = path.with_name(path.name + ".part")
    try:
        lower = [
            np.lib.format.open_memmap(os.path.join(tmpdir, f"level{i}.npy"), mode="w+", dtype=np.uint8, shape=(h, w, 3))
            for i, (h, w) in enumerate(shapes[1:], start=1)
        ]

        def level0_tiles() -> Iterator[np.ndarray]:
            nonlocal done
            carry = None  # odd trailing row of a stripe, for the 2x2 mean
            y1 = 0
            for y0 in range(0, height, tile):
                rows = min(tile, height - y0)
                stripe = np.asarray(render(y0, rows))
                if stripe.shape != (rows, width, 3) or stripe.dtype != np.uint8:
                    raise ValueError(f"render({y0}, {rows}) returned {stripe.shape} {stripe.dtype}")
                if lower:
                    block = stripe if carry is None else np.concatenate([carry, stripe])
                    even = block.shape[0] // 2 * 2
                    half = _halve(block[:even], shapes[1])
                    lower[0][y1 : y1 + len(half)] = half[: shapes[1][0] - y1]
                    y1 += len(half)
                    carry = block[even:] if even < block.shape[0] else None
                done += 1  # counted before yielding: tifffile stops pulling after the last tile
                if progress:
                    progress(done, total)
                yield from _tiles(stripe, tile)

        def level_tiles(i: int) -> Iterator[np.ndarray]:
            nonlocal done
            src = lower[i - 1]
            h = shapes[i][0]
            for y0 in range(0, h, tile):
                stripe = np.asarray(src[y0 : y0 + tile])
                if i < len(lower):  # feed the next level
                    nxt = lower[i]
                    even = stripe.shape[0] // 2 * 2
                    half = _halve(stripe[:even], shapes[i + 1])
                    start = y0 // 2
                    stop = min(start + len(half), shapes[i + 1][0])
                    nxt[start:stop] = half[: stop - start]
                done += 1
                if progress:
                    progress(done, total)
                yield from _tiles(stripe, tile)

        metadata = {"axes": "YXS"}
        if ome and mpp:
            metadata.update(PhysicalSizeX=mpp, PhysicalSizeXUnit="µm", PhysicalSizeY=mpp, PhysicalSizeYUnit="µm")
        with tifffile.TiffWriter(part, bigtiff=height * width * 3 > 2**31, ome=ome) as tw:
            common = dict(tile=(tile, tile), photometric="rgb", compression=comp, compressionargs=comp_args, dtype=np.uint8, **res)
            if comp == "jpeg":
                common["subsampling"] = (2, 2)
            tw.write(
                level0_tiles(),
                shape=(height, width, 3),
                subifds=len(shapes) - 1,
                metadata=metadata if ome else None,
                **common,
            )
            for i in range(1, len(shapes)):
                lres = {}
                if mpp:
                    lmpp = mpp * shapes[0][1] / shapes[i][1]
                    lres = {"resolution": (1e4 / lmpp, 1e4 / lmpp)}
                tw.write(level_tiles(i), shape=(*shapes[i], 3), subfiletype=1, **{**common, **lres})
        os.replace(part, path)
    finally:
        for f in Path(tmpdir).glob("*"):
            f.unlink()
        os.rmdir(tmpdir)
        if part.exists():
            part.unlink()
    return path


def _halve(block: np.ndarray, target: tuple[int, int]) -> np.ndarray:
    """2x2 mean of an even-row block, cropped to the target width."""
    return mean2x2(block)[:, : target[1]]


def _tiles(stripe: np.ndarray, tile: int) -> Iterator[np.ndarray]:
    """Tiles of a stripe, left to right, padded to full tiles."""
    rows, width = stripe.shape[:2]
    for x0 in range(0, width, tile):
        t = stripe[:, x0 : x0 + tile]
        if t.shape[0] != tile or t.shape[1] != tile:
            pad = np.full((tile, tile, 3), 255, np.uint8)
            pad[: t.shape[0], : t.shape[1]] = t
            t = pad
        yield t


def write_synthetic_slide(
    path,
    synth: SyntheticHE,
    tile: int = 256,
    compression: str = "jpeg",
    quality: int = 90,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Render a :class:`~napari_mitosis.core.synthetic.SyntheticHE` slide to a pyramidal OME-TIFF.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from napari_mitosis.io import open_slide
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "synth.ome.tif"
    >>> _ = write_synthetic_slide(out, SyntheticHE(shape=(600, 1300), seed=2))
    >>> with open_slide(out) as slide:
    ...     slide.shape, slide.mpp, slide.level_count
    ((600, 1300), 0.25, 2)
    """
    h, w = synth.shape

    def render(y0, rows):  # pieces of at most 4096 columns keep memory small on wide slides
        return np.concatenate([synth.render(y0, x0, rows, min(4096, w - x0))[0] for x0 in range(0, w, 4096)], axis=1)

    return write_pyramid(
        path, (h, w), render, mpp=synth.mpp, tile=tile, compression=compression, quality=quality, progress=progress
    )
